"""Gateway replicas on a real Redis Cluster (3 masters) and a real Sentinel-managed master: exact
limits across replicas, the revocation broadcast, a node restarted (and a Sentinel failover)
under traffic, and ``serve`` refusing a cache URL that cannot work (one line, no hang)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.authority import Actor
from gateway.config import RateLimit, Settings
from gateway.server import serve
from tests.conftest import open_empty_store
from tests.e2e.conftest import RunningGateway, free_port
from tests.redis_topologies import Cluster, SentinelSetup, flushed_url

ACTOR = Actor("cli:test")
# No default limit and no per-IP brake: the traffic below is judged on revocation alone.
QUIET = {"default_rate_limit": None, "failed_auth_limit": None}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@dataclass
class Replicas:
    cache_url: str
    store_url: str
    upstream: str
    running: list[RunningGateway]

    async def start(self, **overrides: Any) -> RunningGateway:
        proxy, admin = free_port(), free_port()
        settings = Settings(**{
            "store": self.store_url, "cache": self.cache_url, "upstream": self.upstream,
            "listen": f"127.0.0.1:{proxy}", "admin_listen": f"127.0.0.1:{admin}",
            "pepper": "e2e-pepper", "usage_flush_interval_s": 0.2,
            **overrides})
        ready, holder, shutdown = asyncio.Event(), {}, asyncio.Event()

        async def on_ready(gw: Any) -> None:
            holder["gw"] = gw
            ready.set()

        task = asyncio.create_task(serve(settings, on_ready, loop="asyncio", shutdown=shutdown))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED, timeout=20)
        if task.done():
            task.result()
        rg = RunningGateway(holder["gw"], f"http://127.0.0.1:{proxy}",
                            f"http://127.0.0.1:{admin}", shutdown, task)
        self.running.append(rg)
        return rg


async def _replicas(cache_url: str, store_url: str, upstream: str) -> AsyncIterator[Replicas]:
    await (await open_empty_store(store_url)).close()
    replicas = Replicas(cache_url, store_url, upstream, [])
    yield replicas
    for rg in replicas.running:
        if not rg.task.done():
            await rg.stop()


@pytest.fixture(params=["cluster", "sentinel"])
async def replicas(request, pg_database, upstream) -> AsyncIterator[Replicas]:
    """Gateways sharing one PostgreSQL store and the session's cluster or sentinel."""
    url = await flushed_url(request, request.param)
    async for r in _replicas(url, pg_database, upstream):
        yield r


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


def redis_errors(rg: RunningGateway) -> float:
    value = rg.gateway.metrics.registry.get_sample_value("authgate_redis_errors_total")
    return value or 0.0


async def exact_limit(http: httpx.AsyncClient, a: RunningGateway, b: RunningGateway,
                      limit: int = 20, n: int = 120) -> None:
    """N concurrent requests, spread over two replicas, against a limit L admit exactly L."""
    _, secret = await a.gateway.authority.create(ACTOR, subject="s", name="limited",
                                                 rate_limit=RateLimit(limit, 3600))
    for rg in (a, b):  # each replica knows the token first: the limit is what is measured
        assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200
    rs = await asyncio.gather(*(http.get(f"{(a, b)[i % 2].proxy}/echo", headers=bearer(secret))
                                for i in range(n)))
    codes = [r.status_code for r in rs]
    assert codes.count(200) == limit - 2 and codes.count(429) == n - limit + 2, codes


async def broadcast_reaches(http: httpx.AsyncClient, a: RunningGateway, b: RunningGateway,
                            within_s: float = 2.0) -> float:
    """A revoke on A is refused by B within ``within_s`` (well inside its cache TTL: only the
    broadcast can do that); seconds it took."""
    record, secret = await a.gateway.authority.create(ACTOR, subject="s", name="revoked")
    for rg in (a, b):
        assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200
    await a.gateway.authority.revoke(ACTOR, record.id)
    t0 = time.monotonic()
    while (await http.get(f"{b.proxy}/echo", headers=bearer(secret))).status_code != 401:
        assert time.monotonic() - t0 < within_s, "B still admits a token revoked on A"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_two_replicas_share_an_exact_limit(replicas, http):
    a, b = await replicas.start(), await replicas.start()
    await exact_limit(http, a, b)
    assert redis_errors(a) == redis_errors(b) == 0  # Redis answered: not the per-replica fallback


async def test_a_revoke_on_one_replica_reaches_the_other_at_once(replicas, http):
    a, b = await replicas.start(local_cache_ttl_s=30), await replicas.start(local_cache_ttl_s=30)
    await broadcast_reaches(http, a, b)  # within 2 s, with a 30 s TTL: only the broadcast
    await broadcast_reaches(http, b, a)
    ready = (await http.get(f"{a.admin}/readyz")).json()
    assert ready == {"status": "ok"}


# --- faults under traffic -----------------------------------------------------------------------


@dataclass
class Seen:
    token: str
    replica: int
    sent: float  # monotonic
    status: int


async def traffic(http: httpx.AsyncClient, gateways: list[RunningGateway],
                  secrets: dict[str, str], stop: asyncio.Event, seen: list[Seen]) -> None:
    deadline = time.monotonic() + 90
    while not stop.is_set() and time.monotonic() < deadline:
        for i, rg in enumerate(gateways):
            for name, secret in secrets.items():
                sent = time.monotonic()
                r = await http.get(f"{rg.proxy}/echo", headers=bearer(secret))
                seen.append(Seen(name, i, sent, r.status_code))
        await asyncio.sleep(0.01)


async def until(check, what: str, timeout_s: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        await asyncio.sleep(0.1)


async def ready_ok(http: httpx.AsyncClient, rg: RunningGateway) -> bool:
    return (await http.get(f"{rg.admin}/readyz")).json() == {"status": "ok"}


async def outage_under_traffic(http: httpx.AsyncClient, a: RunningGateway, b: RunningGateway,
                               ttl: float, fail, recover) -> None:  # type: ignore[no-untyped-def]
    """Traffic on both replicas with three tokens while ``fail`` breaks Redis and ``recover``
    mends it: ``gone`` (revoked before) is never admitted, ``mid`` (revoked during the outage)
    not after its revoke + ttl + 1 s, ``keep`` always; then both replicas recover by themselves
    (ready, broadcast, exact limits)."""
    auth = a.gateway.authority
    tokens = {name: await auth.create(ACTOR, subject="s", name=name)
              for name in ("keep", "gone", "mid")}
    secrets = {name: secret for name, (_, secret) in tokens.items()}
    await auth.revoke(ACTOR, tokens["gone"][0].id)
    stop, seen = asyncio.Event(), []
    task = asyncio.create_task(traffic(http, [a, b], secrets, stop, seen))
    before = redis_errors(a) + redis_errors(b)
    try:
        await asyncio.sleep(0.5)
        await fail()
        await asyncio.sleep(0.5)
        revoked_at = time.monotonic()
        await auth.revoke(ACTOR, tokens["mid"][0].id)  # may not be broadcast: Redis is broken
        await asyncio.sleep(ttl + 1.5)
        await recover()
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await task
    assert redis_errors(a) + redis_errors(b) > before, "the fault was never seen"
    assert {s.status for s in seen} <= {200, 401}, sorted({s.status for s in seen})
    assert all(s.status == 401 for s in seen if s.token == "gone"), "a revoked token admitted"
    late = [s for s in seen if s.token == "mid" and s.status == 200
            and s.sent > revoked_at + ttl + 1.0]
    assert not late, f"revoked token admitted {late[-1].sent - revoked_at:.2f} s after revoke"
    assert all(s.status == 200 for s in seen if s.token == "keep")
    assert any(s.token == "mid" and s.sent > revoked_at + ttl + 1.0 for s in seen)
    for rg in (a, b):  # by itself: no restart, no operator
        await until(lambda rg=rg: ready_ok(http, rg), "replica ready again")
    await until(lambda: _broadcasts(http, a, b), "broadcast working again")
    errors = redis_errors(a) + redis_errors(b)
    await exact_limit(http, a, b, limit=10, n=40)
    assert redis_errors(a) + redis_errors(b) == errors  # the shared limiter answered


async def _broadcasts(http: httpx.AsyncClient, a: RunningGateway, b: RunningGateway) -> bool:
    try:
        await broadcast_reaches(http, a, b, within_s=0.5)  # the copy had ~ttl (2 s) left
        return True
    except AssertionError:
        return False


async def test_a_cluster_node_restarted_under_traffic(request, redis_cluster: Cluster,
                                                      pg_database, upstream, http):
    url = await flushed_url(request, "cluster")
    async for reps in _replicas(url, pg_database, upstream):
        ttl = 2.0
        a, b = (await reps.start(local_cache_ttl_s=ttl, **QUIET),
                await reps.start(local_cache_ttl_s=ttl, **QUIET))
        node = redis_cluster.nodes[0]

        async def fail() -> None:
            node.stop()

        async def recover() -> None:
            node.start()  # same port, same nodes.conf: it rejoins, empty
            await asyncio.to_thread(redis_cluster.wait_ok)

        try:
            await outage_under_traffic(http, a, b, ttl, fail, recover)
        finally:
            if node.proc is None:
                node.start()
            redis_cluster.wait_ok()


async def test_a_sentinel_failover_under_traffic(pg_database, upstream, http):
    setup = SentinelSetup(with_replica=True)
    setup.start()
    try:
        async for reps in _replicas(setup.url(), pg_database, upstream):
            ttl = 2.0
            a, b = (await reps.start(local_cache_ttl_s=ttl, **QUIET),
                    await reps.start(local_cache_ttl_s=ttl, **QUIET))
            old = setup.master_port()

            async def fail() -> None:
                setup.master.stop()

            async def recover() -> None:
                deadline = time.monotonic() + 30
                while setup.master_port() == old:  # the sentinel promotes the replica
                    assert time.monotonic() < deadline, "no failover within 30 s"
                    await asyncio.sleep(0.2)

            await outage_under_traffic(http, a, b, ttl, fail, recover)
            assert setup.master_port() != old
    finally:
        setup.stop()


# --- serve refuses a cache URL that cannot work: one line naming the key, no hang ---------------


def serve_process(tmp_path, cache: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--store", f"sqlite:///{tmp_path}/gw.db",
         "--cache", cache, "--listen", f"127.0.0.1:{free_port()}",
         "--admin-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60)


def assert_one_line_naming_cache(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: config: cache: "), proc.stderr
    for word in words:
        assert word in line, line
    return line


def test_serve_stops_when_no_cluster_node_answers(tmp_path):
    dead = [free_port(), free_port()]
    t0 = time.monotonic()
    proc = serve_process(tmp_path, f"redis+cluster://:s3cret@127.0.0.1:{dead[0]},"
                                   f"127.0.0.1:{dead[1]}/")
    line = assert_one_line_naming_cache(proc, "Redis Cluster", str(dead[0]), str(dead[1]))
    assert "s3cret" not in proc.stderr + proc.stdout
    assert time.monotonic() - t0 < 30, line


def test_serve_stops_when_the_sentinel_names_no_such_master(tmp_path, redis_sentinel):
    port = redis_sentinel.sentinel.port
    proc = serve_process(tmp_path, f"redis+sentinel://127.0.0.1:{port}/nosuchmaster/0")
    assert_one_line_naming_cache(proc, "nosuchmaster", "names")


def test_serve_stops_when_no_sentinel_answers(tmp_path):
    proc = serve_process(tmp_path, f"redis+sentinel://127.0.0.1:{free_port()}/mymaster/0")
    assert_one_line_naming_cache(proc, "no sentinel answered")


def test_serve_refuses_a_malformed_cluster_url_before_starting(tmp_path):
    proc = serve_process(tmp_path, "redis+cluster://u:pw@host:99999/")
    line = assert_one_line_naming_cache(proc, "port")
    assert "pw" not in line


# --- the CLI is a writer too (revocation bound: whichever process made the change) -------------


def cli(*args: str, store: str, cache: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
    env.update(AUTHGATE_PEPPER="e2e-pepper", AUTHGATE_CACHE=cache)
    return subprocess.run([sys.executable, "-m", "gateway", "--store", store, *args],
                          capture_output=True, text=True, env=env, timeout=60)


async def test_a_cli_revoke_is_broadcast_through_the_cluster_or_sentinel(replicas, http):
    a, b = await replicas.start(local_cache_ttl_s=30), await replicas.start(local_cache_ttl_s=30)
    record, secret = await a.gateway.authority.create(ACTOR, subject="s", name="cli")
    for rg in (a, b):
        assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200
    proc = await asyncio.to_thread(cli, "tokens", "revoke", record.id,
                                   store=replicas.store_url, cache=replicas.cache_url)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "not broadcast" not in proc.stderr, proc.stderr
    t0 = time.monotonic()
    for rg in (a, b):  # the TTL is 30 s: only the broadcast refuses it this soon
        while (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code != 401:
            assert time.monotonic() - t0 < 2, "the CLI's revoke did not reach a replica"
            await asyncio.sleep(0.02)


async def test_a_cli_revoke_with_an_unreachable_cluster_still_succeeds(pg_database):
    await (await open_empty_store(pg_database)).close()
    created = cli("tokens", "create", "--subject", "s", "--name", "n", "--json",
                  store=pg_database, cache="memory://")
    token_id = json.loads(created.stdout)["id"]
    proc = cli("tokens", "revoke", token_id, store=pg_database,
               cache=f"redis+cluster://127.0.0.1:{free_port()}/")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "not broadcast" in proc.stderr  # replicas then see it within the bound instead


async def test_the_sentinel_urls_database_is_the_one_used(redis_sentinel):
    from gateway.redis_client import make_redis

    redis_sentinel.flush()
    client = make_redis(redis_sentinel.url(db=3))
    try:
        await client.client.set("authgate:probe", "x")
    finally:
        await client.close()
    port = redis_sentinel.master_port()
    got = subprocess.run(["redis-cli", "-p", str(port), "-n", "3", "get", "authgate:probe"],
                         capture_output=True, text=True).stdout.strip()
    assert got == "x"
    assert subprocess.run(["redis-cli", "-p", str(port), "-n", "0", "exists", "authgate:probe"],
                          capture_output=True, text=True).stdout.strip() == "0"


async def test_every_limit_of_the_pipeline_runs_in_redis(replicas, http):
    """The token's own limit with a route's (one script, two keys: one hash tag), a public
    route's per-address limit and the refused-credential brake, all answered by the cluster or
    sentinel (a CROSSSLOT key pair would fail over to the per-replica limiter: an error)."""
    from gateway import tokens

    rg = await replicas.start(failed_auth_limit="3/minute", routes=[
        {"path": "/public/*", "auth": "none", "rate_limit": "3/minute"},
        {"path": "/limited/*", "rate_limit": "2/minute"}])
    _, secret = await rg.gateway.authority.create(ACTOR, subject="s", name="n",
                                                  rate_limit="5/minute")
    public = [(await http.get(f"{rg.proxy}/public/x")).status_code for _ in range(4)]
    assert public == [200, 200, 200, 429]
    routed = [(await http.get(f"{rg.proxy}/limited/x", headers=bearer(secret))).status_code
              for _ in range(3)]
    assert routed == [200, 200, 429]
    own = [(await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code
           for _ in range(4)]
    assert own == [200, 200, 200, 429]  # 2 on the route + 3 here = the token's 5
    unknown = tokens.generate("agt").plaintext  # well-formed, in no store
    refused = [(await http.get(f"{rg.proxy}/echo", headers=bearer(unknown))).status_code
               for _ in range(5)]
    assert refused[:3] == [401, 401, 401] and refused[-1] == 429
    assert redis_errors(rg) == 0

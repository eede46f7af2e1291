"""Failure behaviour with servers of our own (the shared PostgreSQL and Redis stay untouched):
Redis and PostgreSQL stopped and restarted mid-test, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.authority import Actor
from tests.e2e.conftest import free_port

ADMIN = Actor("cli:test")
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1:] or [""]


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


class OwnRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline, "own redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    r = OwnRedis()
    r.start()
    yield r
    r.stop()


class OwnPostgres:
    """A throwaway PostgreSQL cluster (initdb) run as the postgres user on a free port."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="authgate-pg-")
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        cmd = [os.path.join(PG_BIN[0], args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        self._as_postgres("initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._as_postgres("pg_ctl", "-D", f"{self.dir}/data", "-w", "-l", f"{self.dir}/log",
                          "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1",
                          "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop")


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    if not os.path.exists(os.path.join(PG_BIN[0], "initdb")):
        pytest.fail("PostgreSQL server binaries (initdb) are needed for this test")
    pg = OwnPostgres()
    pg.init()
    pg.start()
    yield pg
    try:
        pg.stop()
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(pg.dir, ignore_errors=True)


BOOT_ADMIN = "failure-bootstrap-admin-secret-0"


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_redis_down_serves_from_store_then_recovers(start_gateway, own_redis, http):
    rg = await start_gateway(cache=own_redis.url)
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b",
                                                  rate_limit="1000/minute")
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200
    assert (await http.get(f"{rg.admin}/readyz")).json()["status"] == "ok"

    own_redis.stop()
    _, fresh = await rg.gateway.authority.create(ADMIN, subject="c", name="d")
    for s in (secret, fresh):  # cached and never-seen tokens both keep working
        r = await http.get(f"{rg.proxy}/echo", headers=bearer(s))
        assert r.status_code == 200 and r.headers["x-ratelimit-limit"]
    ready = await http.get(f"{rg.admin}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"

    own_redis.start()

    async def healthy() -> bool:
        return (await http.get(f"{rg.admin}/readyz")).json()["status"] == "ok"

    await until(healthy)
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(secret))).status_code == 200


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_postgres_down_keeps_cached_tokens_and_refuses_unknown_with_503(
        start_gateway, own_postgres, http):
    from gateway.store import make_store

    s = make_store(own_postgres.url)
    await s.open()
    await s.migrate()
    await s.close()
    rg = await start_gateway(store=own_postgres.url, local_cache_ttl_s=60,
                             admin_token=BOOT_ADMIN)
    auth = rg.gateway.authority
    _, seen = await auth.create(ADMIN, subject="a", name="seen")
    _, unseen = await auth.create(ADMIN, subject="a", name="unseen")
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(seen))).status_code == 200

    own_postgres.stop()
    assert (await http.get(f"{rg.proxy}/echo", headers=bearer(seen))).status_code == 200
    r = await http.get(f"{rg.proxy}/echo", headers=bearer(unseen))
    assert r.status_code == 503 and r.headers["retry-after"]
    assert r.json()["error"] == "temporarily_unavailable"
    assert (await http.get(f"{rg.admin}/readyz")).status_code == 503
    admin = bearer(BOOT_ADMIN)  # the admin API answers 503 too, never a 500 or a half-change
    for method, path, body in (("GET", "/v1/tokens", None), ("GET", "/v1/stats", None),
                               ("POST", "/v1/tokens", {"subject": "a", "name": "during"}),
                               ("GET", "/v1/tokens?format=csv", None)):
        r = await http.request(method, f"{rg.admin}{path}", json=body, headers=admin)
        assert r.status_code == 503 and r.headers["retry-after"], (path, r.text)
        assert r.json()["error"] == "temporarily_unavailable"

    own_postgres.start()

    async def works() -> bool:
        return (await http.get(f"{rg.proxy}/echo", headers=bearer(unseen))).status_code == 200

    await until(works, 20)
    assert (await http.get(f"{rg.admin}/readyz")).status_code == 200
    names = [t["name"] for t in (await http.get(f"{rg.admin}/v1/tokens", headers=admin)
                                 ).json()["items"]]
    assert sorted(names) == ["seen", "unseen"]


async def test_sigterm_finishes_in_flight_requests_and_flushes_usage(upstream, tmp_path):
    store = f"sqlite:///{tmp_path}/gw.db"
    port, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")} | {
        "AUTHGATE_STORE": store, "AUTHGATE_UPSTREAM": upstream, "AUTHGATE_PEPPER": "p",
        "AUTHGATE_LISTEN": f"127.0.0.1:{port}", "AUTHGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "AUTHGATE_USAGE_FLUSH_INTERVAL_S": "3600"}  # only the shutdown flush can write usage
    created = subprocess.run([sys.executable, "-m", "gateway", "tokens", "create", "--subject",
                              "a", "--name", "b", "--json"], env=env, capture_output=True,
                             text=True, check=True)
    token = json.loads(created.stdout)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", env=env)
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            async def up() -> bool:
                try:
                    return (await client.get(f"http://127.0.0.1:{admin}/healthz")).is_success
                except httpx.TransportError:
                    return False
            await until(up, 20)
            url = f"http://127.0.0.1:{port}"
            for _ in range(25):
                r = await client.get(f"{url}/echo", headers=bearer(token["token"]))
                assert r.status_code == 200
            slow = asyncio.create_task(client.get(f"{url}/slow?s=1",
                                                  headers=bearer(token["token"])))
            await asyncio.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            assert (await slow).status_code == 200  # in flight when SIGTERM came: finished
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    shown = subprocess.run([sys.executable, "-m", "gateway", "tokens", "show", token["id"],
                            "--json"], env=env, capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["usage_count"] == 26

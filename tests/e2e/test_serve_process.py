"""``authgate serve`` as a real process (``python -m gateway serve``), with a real upstream on
loopback and signals sent by PID: the access log on stdout (SPEC §6), ``--workers N`` and live
reload on SIGHUP (SPEC §3).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
import yaml

from gateway.access_log import FIELDS
from gateway.store import make_store
from tests.conftest import open_empty_store
from tests.e2e.conftest import free_port

ADMIN = "process-test-admin-secret"
READY_S = 60  # a loaded machine starts Python slowly


async def stream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/stream?n=N&every=S: N chunks of 1000 bytes, one every S seconds; anything else: echo of
    the request as JSON (path, query, headers) with the request body's length."""
    if scope["type"] != "http":
        return
    params = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    if scope["path"].startswith("/stream"):
        n, every = int(params.get("n", "10")), float(params.get("every", "0.2"))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(n):
            await send({"type": "http.response.body", "body": b"s" * 1000, "more_body": True})
            await asyncio.sleep(every)
        await send({"type": "http.response.body", "body": b""})
        return
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = json.dumps({"path": scope["path"], "received": received,
                       "headers": [[k.decode(), v.decode("latin-1")]
                                   for k, v in scope["headers"]]}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def upstream_url() -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(stream_app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


class Serve:
    """One ``authgate serve`` process; stdout and stderr go to files (never a full pipe)."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.proxy_port, self.admin_port = free_port(), free_port()
        self.config = {"listen": f"127.0.0.1:{self.proxy_port}",
                       "admin_listen": f"127.0.0.1:{self.admin_port}", "admin_token": ADMIN,
                       "pepper": "process-pepper", "usage_flush_interval_s": 0.2, **config}
        self.path = tmp_path / f"authgate-{self.proxy_port}.yaml"
        self.write(self.config)
        self.out_path = tmp_path / f"out-{self.proxy_port}.log"
        self.err_path = tmp_path / f"err-{self.proxy_port}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(self.path), *args],
                stdout=out, stderr=err, env={**clean, **(env or {})})
        self.proxy = f"http://127.0.0.1:{self.proxy_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"

    def write(self, config: dict[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        tmp.replace(self.path)  # atomically, as a config management tool would

    async def ready(self, workers: int = 1) -> None:
        deadline = time.monotonic() + READY_S
        async with httpx.AsyncClient(timeout=5) as client:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.stderr()
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.admin}/healthz")).status_code == 200 and (
                            workers == 1 or f"{self.admin_port}, {workers} workers" in
                            self.stderr()):  # the parent's line once every worker serves
                        return
                await asyncio.sleep(0.2)
        raise AssertionError(f"serve did not start: {self.stderr()}")

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    async def exit_status(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "serve did not exit"
            await asyncio.sleep(0.1)
        return self.proc.returncode

    def stdout(self) -> bytes:
        return self.out_path.read_bytes()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines()]

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(p) for p in path.read_text().split()]

    async def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, f"{what}; stderr: {self.stderr()}"
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            children = []
            with contextlib.suppress(OSError):
                children = self.children()
            for pid in [self.proc.pid, *children]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(config: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> Serve:
        s = Serve(tmp_path, config, args, env)
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


async def _token(client: httpx.AsyncClient, gw: Serve, subject: str = "alice",
                 scopes: tuple[str, ...] = ()) -> dict[str, Any]:
    r = await client.post(f"{gw.admin}/v1/tokens", headers={"Authorization": f"Bearer {ADMIN}"},
                          json={"subject": subject, "name": "t", "scopes": list(scopes)})
    assert r.status_code == 201, r.text
    return dict(r.json())


async def _lines_settled(gw: Serve, count: int) -> list[dict[str, Any]]:
    """The access log once it holds ``count`` lines (the writer flushes every 50 ms)."""
    await gw.wait_for(lambda: len(gw.stdout().splitlines()) >= count,
                      f"{count} access-log lines expected, got {gw.stdout()!r}")
    await asyncio.sleep(0.3)  # and no more than that
    return gw.lines()


async def _raw_request(port: int, head: bytes) -> bytes:
    """Bytes as sent, no client library in between (the upstream shares this event loop)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await asyncio.wait_for(reader.read(4096), 30)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()


# --- the access log ---------------------------------------------------------------------------


async def test_access_log_one_json_line_per_request_never_a_credential(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path) -> None:
    gw = serve({"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url,
                "api_key_header": "X-API-Key",
                "routes": [{"path": "/public/*", "auth": "none"},
                           {"path": "/reports/*", "scopes": ["reports:read"]}]})
    await gw.ready()
    async with httpx.AsyncClient(timeout=30) as client:
        token = await _token(client, gw)
        secret = token["token"]
        bearer = {"Authorization": f"Bearer {secret}", "X-Request-Id": "req-1"}
        r = await client.get(f"{gw.proxy}/echo?access_token={secret}&x=1", headers=bearer)
        assert r.status_code == 200
        r = await client.post(f"{gw.proxy}/upload?token={secret}", content=b"b" * 1234,
                              headers={"X-API-Key": secret, "X-Request-Id": "req-2"})
        assert r.status_code == 200 and r.json()["received"] == 1234
        upload_out = len(r.content)
        r = await client.get(f"{gw.proxy}/reports/q?key={secret}", headers={
            "Authorization": f"Bearer {secret}", "X-Request-Id": "req-3"})
        assert r.status_code == 403
        r = await client.get(f"{gw.proxy}/nothing", headers={"X-Request-Id": "req-4"})
        assert r.status_code == 401
        r = await client.get(f"{gw.proxy}/x", headers={
            "Authorization": f"Bearer {secret[:-3]}zzz", "X-Request-Id": "req-5"})
        assert r.status_code == 401
        r = await client.get(f"{gw.proxy}/public/a?secret={secret}",
                             headers={"X-Request-Id": "req-6"})
        assert r.status_code == 200
        # forward auth: logged (same format), the judged URI without its query
        r = await client.get(f"{gw.admin}/v1/authorize", headers={
            "X-Forwarded-Uri": f"/reports/z?t={secret}", "X-Forwarded-Method": "GET",
            "Authorization": f"Bearer {secret}", "X-Request-Id": "req-7"})
        assert r.status_code == 403
        # the admin API: not logged
        r = await client.get(f"{gw.admin}/v1/tokens", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200

    lines = await _lines_settled(gw, 7)
    out = gw.stdout()
    assert secret.encode() not in out and secret[:-6].encode() not in out
    assert ADMIN.encode() not in out and b"?" not in out and b"access_token" not in out
    assert all(tuple(line) == FIELDS for line in lines)
    by_id = {line["request_id"]: line for line in lines}
    assert sorted(by_id) == [f"req-{i}" for i in range(1, 8)]  # no line for the admin API
    one = by_id["req-1"]
    assert (one["method"], one["path"], one["status"], one["outcome"], one["route"]) == (
        "GET", "/echo", 200, "ok", "default")
    assert (one["subject"], one["token_id"], one["client_ip"]) == ("alice", token["id"],
                                                                   "127.0.0.1")
    assert one["upstream_ms"] > 0 and one["total_ms"] >= one["upstream_ms"]
    two = by_id["req-2"]
    assert (two["method"], two["bytes_in"], two["bytes_out"]) == ("POST", 1234, upload_out)
    assert (by_id["req-3"]["status"], by_id["req-3"]["outcome"], by_id["req-3"]["route"],
            by_id["req-3"]["upstream_ms"]) == (403, "insufficient_scope", "/reports/*", None)
    # a refused request whose token was known (here: lacking a scope) names it
    assert (by_id["req-3"]["subject"], by_id["req-3"]["token_id"]) == ("alice", token["id"])
    assert (by_id["req-4"]["outcome"], by_id["req-4"]["route"], by_id["req-4"]["subject"]) == (
        "no_credential", "default", None)
    assert (by_id["req-5"]["status"], by_id["req-5"]["outcome"]) == (401, "invalid_token")
    assert (by_id["req-5"]["subject"], by_id["req-5"]["token_id"]) == (None, None)  # unknown
    assert (by_id["req-6"]["route"], by_id["req-6"]["path"], by_id["req-6"]["token_id"]) == (
        "/public/*", "/public/a", None)
    seven = by_id["req-7"]
    assert (seven["path"], seven["status"], seven["outcome"], seven["route"], seven["subject"],
            seven["token_id"]) == ("/reports/z", 403, "insufficient_scope", "/reports/*",
                                   "alice", token["id"])
    gw.signal(signal.SIGTERM)
    assert await gw.exit_status() == 0


async def test_hostile_paths_and_methods_cannot_break_a_line(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path) -> None:
    gw = serve({"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url,
                "routes": [{"path": "/public/*", "auth": "none"}]})
    await gw.ready()
    heads = [
        # encoded control characters and non-UTF-8 bytes (refused 400 by the path rule)
        b"GET /a%00%0a%0d%ff%fe/%22%7d HTTP/1.1\r\nHost: x\r\nX-Request-Id: h1\r\n\r\n",
        # quote, brace and backslash as sent: a JSON injection attempt
        b'GET /public/"},{"status":200}\\ HTTP/1.1\r\nHost: x\r\nX-Request-Id: h2\r\n\r\n',
        # forward auth: the URI and method come from headers (tab and bytes \x80-\xff)
        b"GET /v1/authorize HTTP/1.1\r\nHost: x\r\nX-Request-Id: h3\xff\"\r\n"
        b"X-Forwarded-Uri: /p\tq\xff\xc3\xa9\"}\r\nX-Forwarded-Method: G\tET\"\r\n\r\n",
    ]
    assert (await _raw_request(gw.proxy_port, heads[0])).startswith(b"HTTP/1.1 400")
    assert (await _raw_request(gw.proxy_port, heads[1])).startswith(b"HTTP/1.1 200")
    assert (await _raw_request(gw.admin_port, heads[2])).startswith(b"HTTP/1.1 4")
    lines = await _lines_settled(gw, 3)
    assert gw.stdout().isascii() and len(lines) == 3
    by_id = {line["request_id"]: line for line in lines}
    assert by_id["h1"]["path"] == "/a%00%0a%0d%ff%fe/%22%7d"
    assert (by_id["h1"]["status"], by_id["h1"]["outcome"]) == (400, "invalid_request")
    assert by_id["h2"]["path"] == '/public/"},{"status":200}\\' and by_id["h2"]["status"] == 200
    three = by_id['h3\\xff"']
    assert three["path"] == '/p\tq\\xffé"}' and three["method"] == 'G\tET"'
    assert three["status"] == 400


async def test_access_log_false_writes_nothing(serve: Callable[..., Serve], upstream_url: str,
                                               tmp_path: Path) -> None:
    gw = serve({"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url,
                "routes": [{"path": "/public/*", "auth": "none"}]},
               env={"AUTHGATE_ACCESS_LOG": "false"})
    await gw.ready()
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(5):
            assert (await client.get(f"{gw.proxy}/public/x")).status_code == 200
        assert (await client.get(f"{gw.proxy}/private")).status_code == 401
    await asyncio.sleep(0.5)
    gw.signal(signal.SIGTERM)
    assert await gw.exit_status() == 0
    assert gw.stdout() == b""


# --- workers ----------------------------------------------------------------------------------


@pytest.fixture
async def pair(backend_pair: tuple[str, str]) -> tuple[str, str]:
    """The backend pair (tests/e2e/conftest.py), emptied."""
    store, cache = backend_pair
    await (await open_empty_store(store)).close()
    if cache != "memory://":
        r = aioredis.from_url(cache)
        await r.flushdb()
        await r.aclose()
    return store, cache


async def _usage_count(store_url: str, token_id: str) -> int:
    store = make_store(store_url)
    await store.open()
    try:
        record = await store.get_token(token_id)
        assert record is not None
        return record.usage_count
    finally:
        await store.close()


async def test_workers_share_the_listeners_and_count_every_request_after_sigterm(
        serve: Callable[..., Serve], upstream_url: str, pair: tuple[str, str]) -> None:
    store, cache = pair
    gw = serve({"store": store, "cache": cache, "upstream": upstream_url,
                "default_rate_limit": None}, "--workers", "2")
    await gw.ready(workers=2)
    assert len(gw.children()) == 2
    warnings = [line for line in gw.stderr().splitlines() if "per process" in line]
    assert len(warnings) == (1 if cache == "memory://" else 0)
    n = 200
    async with httpx.AsyncClient(timeout=30) as client:
        token = await _token(client, gw)
        headers = {"Authorization": f"Bearer {token['token']}"}

        async def one(i: int) -> int:
            # a new connection each: the kernel hands them to either worker
            async with httpx.AsyncClient(timeout=30) as c:
                return (await c.get(f"{gw.proxy}/echo?i={i}", headers=headers)).status_code

        statuses: list[int] = []
        for start in range(0, n, 20):
            statuses += await asyncio.gather(*(one(i) for i in range(start, start + 20)))
    assert statuses == [200] * n
    gw.signal(signal.SIGTERM)  # at once: the last usage is still in the workers' memory
    assert await gw.exit_status() == 0
    assert await _usage_count(store, token["id"]) == n
    assert len(gw.lines()) == n  # every worker's access log reached stdout too


async def test_a_worker_that_dies_is_restarted_and_serving_goes_on(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path) -> None:
    gw = serve({"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url,
                "routes": [{"path": "/public/*", "auth": "none"}], "access_log": False},
               "--workers", "2")
    await gw.ready(workers=2)
    first = gw.children()
    os.kill(first[0], signal.SIGKILL)

    def dead(pid: int) -> bool:  # gone, or a zombie not yet reaped
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
        except OSError:
            return True

    # (a connection the worker had accepted when it was killed is lost, as in any crash)
    await gw.wait_for(lambda: dead(first[0]), "the worker did not die")
    async with httpx.AsyncClient(timeout=30) as client:
        # the listening sockets stay open in the parent: requests are served meanwhile
        for _ in range(20):
            assert (await client.get(f"{gw.proxy}/public/x",
                                     headers={"Connection": "close"})).status_code == 200
        await gw.wait_for(lambda: len(gw.children()) == 2 and first[0] not in gw.children(),
                          "the killed worker was not replaced")
        await gw.wait_for(lambda: "restarting" in gw.stderr(), "no restart line")
        for _ in range(20):
            assert (await client.get(f"{gw.proxy}/public/x",
                                     headers={"Connection": "close"})).status_code == 200
    gw.signal(signal.SIGTERM)
    assert await gw.exit_status() == 0


async def test_workers_stop_gracefully_when_the_parent_is_killed(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/gw.db"
    gw = serve({"store": store, "upstream": upstream_url, "access_log": False},
               "--workers", "2")
    await gw.ready(workers=2)
    workers = gw.children()
    async with httpx.AsyncClient(timeout=30) as client:
        token = await _token(client, gw)
        for _ in range(10):
            r = await client.get(f"{gw.proxy}/echo",
                                 headers={"Authorization": f"Bearer {token['token']}"})
            assert r.status_code == 200
    gw.signal(signal.SIGKILL)  # nobody forwards signals any more: the workers notice
    assert await gw.exit_status() == -signal.SIGKILL

    def running(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    await gw.wait_for(lambda: not any(running(pid) for pid in workers),
                      "the orphaned workers kept running")
    assert await _usage_count(store, token["id"]) == 10  # and flushed what they counted


async def test_workers_that_cannot_start_make_serve_exit_1(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        gw = serve({"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url,
                    "listen": f"127.0.0.1:{taken.getsockname()[1]}"}, "--workers", "2")
        assert await gw.exit_status() == 1
        assert "cannot bind" in gw.stderr() and "Traceback" not in gw.stderr()
    finally:
        taken.close()
    # a store that cannot be opened: each worker fails before serving -> stop, exit 1
    gw = serve({"store": "postgresql://nobody@127.0.0.1:1/none", "upstream": upstream_url},
               "--workers", "2")
    assert await gw.exit_status() == 1
    assert "before serving" in gw.stderr() and "Traceback" not in gw.stderr()


# --- reload on SIGHUP -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
async def test_reload_changes_routes_without_dropping_a_streaming_request(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path, workers: int) -> None:
    base = {"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url}
    gw = serve({**base, "routes": [{"path": "/stream/*", "auth": "none"},
                                   {"path": "/old/*", "auth": "none"}]},
               "--workers", str(workers))
    await gw.ready(workers)
    host_alias = upstream_url.replace("127.0.0.1", "localhost")  # an upstream new to the pools

    def reloaded() -> int:
        return gw.stderr().count("config reloaded")

    async with httpx.AsyncClient(timeout=60) as client:
        async def fresh(path: str) -> int:
            async with httpx.AsyncClient(timeout=30) as c:  # a new connection: any worker
                return (await c.get(f"{gw.proxy}{path}")).status_code

        assert (await fresh("/old/x"), await fresh("/new/x")) == (200, 401)
        async with client.stream("GET", f"{gw.proxy}/stream/s?n=30&every=0.2") as streaming:
            assert streaming.status_code == 200
            chunks = streaming.aiter_bytes()
            received = len(await anext(chunks))
            gw.config["routes"] = [{"path": "/stream/*", "auth": "none"},
                                   {"path": "/new/*", "auth": "none", "upstream": host_alias}]
            gw.config["access_log"] = False
            gw.write(gw.config)
            gw.signal(signal.SIGHUP)
            await gw.wait_for(lambda: reloaded() == workers, "not every worker reloaded")
            after = 0
            async for chunk in chunks:  # the request in flight runs to its end
                after += len(chunk)
        assert after > 0 and received + after == 30_000  # it did cross the reload
        statuses = await asyncio.gather(*(fresh("/new/x") for _ in range(10)))
        assert statuses == [200] * 10  # every worker routes by the new file
        assert (await fresh("/old/x")) == 401

        # an invalid file: one line naming the key, the running config keeps serving
        gw.write({**gw.config, "routes": [{"path": "no-slash", "auth": "none"}]})
        gw.signal(signal.SIGHUP)
        await gw.wait_for(lambda: "reload refused" in gw.stderr(), "no refusal line")
        await asyncio.sleep(1)
        refused = [x for x in gw.stderr().splitlines() if "reload refused" in x]
        assert len(refused) == 1 and "routes.0.path" in refused[0]
        assert await fresh("/new/x") == 200 and reloaded() == workers

        # a changed store is ignored (named), the rest applies; the access log back on
        gw.write({**gw.config, "store": f"sqlite:///{tmp_path}/other.db", "access_log": True})
        gw.signal(signal.SIGHUP)
        await gw.wait_for(lambda: reloaded() == 2 * workers, "second reload not applied")
        assert "store" in next(x for x in gw.stderr().splitlines() if "ignored" in x)
        assert await fresh("/new/x") == 200
    assert not (tmp_path / "other.db").exists()
    gw.signal(signal.SIGTERM)
    assert await gw.exit_status() == 0
    # logged: the requests before the reload (the stream too: it started with the log on) and
    # the one after it came back on; none of the 13 while it was off
    lines = [(line["path"], line["status"]) for line in gw.lines()]
    assert sorted(lines) == [("/new/x", 200), ("/new/x", 401), ("/old/x", 200),
                             ("/stream/s", 200)]


async def test_a_credential_in_the_path_is_redacted_in_every_spelling(
        serve: Callable[..., Serve], upstream_url: str, tmp_path: Path) -> None:
    """SPEC §6: a token in the path (plain, percent-encoded, %5F for its "_", twice encoded, a
    ;jsessionid= parameter), proxied or judged by forward auth, never reaches the log."""
    gw = serve({"store": f"sqlite:///{tmp_path}/gw.db", "upstream": upstream_url,
                "routes": [{"path": "/public/*", "auth": "none"}]})
    await gw.ready()
    async with httpx.AsyncClient(timeout=30) as client:
        secret = (await _token(client, gw))["token"]
    prefix, random = secret.split("_", 1)
    paths = {
        "p1": f"/public/t/{secret}",
        "p2": f"/public/a%3Ftoken%3D{secret}",
        "p3": f"/public/x;jsessionid={secret}",
        "p4": f"/public/{prefix}%5F{random}",
        "p5": f"/public/{prefix}%255F{random}/z",
        "p6": "/public/x;jsessionid=s3cr3t-value;v=2/y",
    }
    for rid, path in paths.items():
        head = f"GET {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n\r\n".encode()
        assert (await _raw_request(gw.proxy_port, head)).startswith(b"HTTP/1.1 ")
    heads = {  # forward auth: the path comes from X-Forwarded-Uri
        "f1": f"X-Forwarded-Uri: /public/t/{secret}\r\n".encode(),
        "f2": f"X-Forwarded-Uri: /public/{prefix}%5F{random}\r\n".encode(),
        "f3": f"X-Forwarded-Uri: /public/x;jsessionid={secret}\r\n".encode(),
        "f4": b"X-Forwarded-Uri: /public/\xff\xfe/" + secret.encode() + b"\r\n",
        "f5": b"X-Forwarded-Method: " + b"G" * 500 + b"\r\nX-Forwarded-Uri: /public/a\r\n",
    }
    for rid, extra in heads.items():
        head = (b"GET /v1/authorize HTTP/1.1\r\nHost: x\r\nX-Request-Id: " + rid.encode()
                + b"\r\n" + extra + b"\r\n")
        assert (await _raw_request(gw.admin_port, head)).startswith(b"HTTP/1.1 ")
    lines = await _lines_settled(gw, len(paths) + len(heads))
    out = gw.stdout()
    assert random.encode() not in out and random[:20].encode() not in out
    assert b"s3cr3t" not in out
    by_id = {line["request_id"]: line for line in lines}
    assert sorted(by_id) == sorted([*paths, *heads])
    assert by_id["p1"]["path"] == "/public/t/[redacted]"
    assert by_id["p2"]["path"] == "/public/a%3Ftoken%3D[redacted]"
    assert by_id["p3"]["path"] == "/public/x;jsessionid=[redacted]"
    assert by_id["p4"]["path"] == "/public/[redacted]"
    assert by_id["p5"]["path"] == "/public/[redacted]/z"
    assert by_id["p6"]["path"] == "/public/x;jsessionid=[redacted];v=[redacted]/y"
    assert by_id["f1"]["path"] == "/public/t/[redacted]"
    assert by_id["f2"]["path"] == "/public/[redacted]"
    assert by_id["f3"]["path"] == "/public/x;jsessionid=[redacted]"
    assert by_id["f4"]["path"] == "/public/\\xff\\xfe/[redacted]"
    assert by_id["f5"]["method"] == "G" * 32
    gw.signal(signal.SIGTERM)
    assert await gw.exit_status() == 0

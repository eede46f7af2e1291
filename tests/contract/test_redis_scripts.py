"""The limiter's scripts on one Redis server (``redis_scripts.ScriptPipe``), on real servers:
replies matched to their callers, exact limits across replicas, NOSCRIPT, a server killed or
frozen mid-flight, credentials and databases from the URL, the cap on calls in flight."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis

from gateway import redis_scripts
from gateway.config import RateLimit
from gateway.ratelimit import RedisLimiter
from gateway.redis_client import RedisClient, make_redis, script_id
from tests.redis_topologies import REDIS_URL, free_cluster_port

# Fault tests (servers killed, paused, TLS refused) can leave a transport for the garbage
# collector; collect after each test, here, so that a "unclosed transport" warning is not
# raised in whichever unrelated test the collector happens to run next (seen once in CI, after
# these modules; not reproduced since and not diagnosed: it may be the pipe's transport on a
# failure path or one of a test's own clients). Ignored in these modules only (the other
# test_redis_scripts_* modules import this mark and fixture).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning",
                                        "ignore::ResourceWarning")


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    yield
    gc.collect()


ECHO = "return ARGV[1]"  # a script whose reply names its caller
ECHO_SHA = script_id(ECHO)


class PrivateRedis:
    """A redis-server of this test's own on a free loopback port, signalled by PID only."""

    def __init__(self, *args: str, password: str | None = None, tls: bool = False) -> None:
        self.port = free_cluster_port()
        self.args, self.password = args, password
        self.dir = tempfile.mkdtemp(prefix="authgate-scripts-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls: list[str] = []
        if tls:  # a self-signed certificate for 127.0.0.1, its own CA
            self.cert = f"{self.dir}/cert.pem"
            subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-keyout", f"{self.dir}/key.pem", "-out", self.cert, "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
            self.tls = ["--tls", "--cacert", self.cert]

    def url(self, db: int = 0, userinfo: str = "") -> str:
        return f"redis://{userinfo}127.0.0.1:{self.port}/{db}"

    def cli(self, *args: str) -> str:
        auth = ["--no-auth-warning", "-a", self.password] if self.password else []
        return subprocess.run(["redis-cli", "-p", str(self.port), *self.tls, *auth, *args],
                              capture_output=True, text=True, timeout=10).stdout.strip()

    def start(self) -> None:
        extra = ["--requirepass", self.password] if self.password else []
        if self.tls:
            extra += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.cert,
                      "--tls-key-file", f"{self.dir}/key.pem", "--tls-ca-cert-file", self.cert,
                      "--tls-auth-clients", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir, *extra, *self.args],
            stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            assert time.monotonic() < deadline, "own redis-server did not start"
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # (in case a test left it stopped)
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    server.start()
    yield server
    server.stop()


class Failures:
    def __init__(self, client: RedisClient) -> None:
        self.count = 0
        client.on_error = self.inc

    def inc(self) -> None:
        self.count += 1


async def flushed(url: str) -> None:
    r = aioredis.from_url(url)
    await r.flushdb()
    await r.script_flush()
    await r.aclose()


def in_redis(server: PrivateRedis, key: str, db: int = 0) -> bool:
    return server.cli("-n", str(db), "exists", f"authgate:rl:{key}") == "1"


# --- matching and exactness (the shared test Redis) ---------------------------------------------

async def test_each_of_many_concurrent_calls_gets_its_own_reply_even_when_some_are_cancelled():
    await flushed(REDIS_URL)
    client = RedisClient(REDIS_URL)
    failures = Failures(client)
    pipe = client.lean_scripts
    assert pipe is not None  # one server: the lean path

    async def echo(i: int) -> object:
        return await pipe.run(ECHO, ECHO_SHA, [], [f"caller-{i}"])

    tasks = [asyncio.ensure_future(echo(i)) for i in range(1500)]
    await asyncio.sleep(0)  # every call written; then some callers give up
    for task in tasks[::7]:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 7:
            assert result == f"caller-{i}".encode()
        else:
            assert isinstance(result, asyncio.CancelledError)
    assert await echo(-1) == b"caller--1"  # the replies of the cancelled calls were consumed
    assert failures.count == 0
    await client.close()


async def test_concurrent_hits_on_distinct_and_shared_keys_each_get_their_own_result():
    await flushed(REDIS_URL)
    client = RedisClient(REDIS_URL)
    failures = Failures(client)
    limiter = RedisLimiter(client)
    shared = RateLimit(10_000, 10_000)  # (one request per second: whole numbers throughout)

    async def hit(i: int) -> tuple[str, int, int]:
        if i % 2:  # a key of its own, whose quota names it: its first hit leaves quota - 1
            result = await limiter.hit([(f"own:{{{i}}}", RateLimit(1000 + i, 1000 + i))])
            return "own", i, result.remaining
        result = await limiter.hit([("shared", shared)])
        return "shared", i, result.remaining

    results = await asyncio.gather(*(hit(i) for i in range(1200)))
    for kind, i, remaining in results:
        if kind == "own":
            assert remaining == 1000 + i - 1
    shared_left = sorted(r for kind, _, r in results if kind == "shared")
    assert shared_left == list(range(10_000 - 600, 10_000))  # each hit saw its own charge
    assert failures.count == 0
    await client.close()


async def test_two_replicas_admit_exactly_the_limit_of_many_concurrent_hits():
    await flushed(REDIS_URL)
    clients = [RedisClient(REDIS_URL), RedisClient(REDIS_URL)]  # two connections, two "replicas"
    failures = [Failures(c) for c in clients]
    a, b = RedisLimiter(clients[0]), RedisLimiter(clients[1])
    limit = RateLimit(137, 60)
    results = await asyncio.gather(
        *((a, b)[i % 2].hit([("exact", limit)]) for i in range(1000)))
    assert sum(r.admitted for r in results) == 137
    quota = await asyncio.gather(
        *((a, b)[i % 2].hit_quota([("t:{q}:named", RateLimit(61, 60))], None, 0)
          for i in range(400)))
    assert sum(r.admitted for r in quota) == 61
    assert [f.count for f in failures] == [0, 0]
    for c in clients:
        await c.close()


# --- NOSCRIPT, failures and recovery (a server of our own) ---------------------------------------

async def test_after_script_flush_the_script_is_loaded_once_and_every_hit_still_goes_to_redis(
        own_redis):
    client = RedisClient(own_redis.url())
    failures = Failures(client)
    limiter = RedisLimiter(client)
    assert (await limiter.hit([("warm", RateLimit(5, 60))])).remaining == 4
    own_redis.cli("script", "flush")
    own_redis.cli("config", "resetstat")
    results = await asyncio.gather(*(limiter.hit([("after", RateLimit(500, 60))])
                                     for _ in range(200)))
    assert sorted(r.remaining for r in results) == list(range(300, 500))  # all counted in Redis
    stats = own_redis.cli("info", "commandstats")
    loads = [line for line in stats.splitlines() if line.startswith("cmdstat_script|load:")]
    assert len(loads) == 1 and loads[0].split(":", 1)[1].startswith("calls=1,"), stats
    assert failures.count == 0
    await client.close()


async def test_a_server_killed_mid_flight_fails_every_pending_hit_then_a_restart_is_used_again(
        own_redis):
    client = RedisClient(own_redis.url())
    failures = Failures(client)
    limiter = RedisLimiter(client)
    assert (await limiter.hit([("before", RateLimit(5, 60))])).admitted
    assert in_redis(own_redis, "before")
    own_redis.signal(signal.SIGSTOP)  # frozen: the next hits are written and wait
    hits = [asyncio.ensure_future(limiter.hit([(f"k{i % 5}", RateLimit(3, 60))]))
            for i in range(300)]
    await asyncio.sleep(0.1)
    assert not any(h.done() for h in hits)
    own_redis.kill()
    results = await asyncio.wait_for(asyncio.gather(*hits), 5)  # none hangs
    # the per-replica fallback answered: 3 per key
    assert sum(r.admitted for r in results) == 15
    assert not client.healthy() and failures.count == 1
    own_redis.start()  # the same port, empty
    await asyncio.sleep(1.1)  # the backoff
    assert client.healthy()
    assert (await limiter.hit([("after", RateLimit(5, 60))])).admitted
    assert in_redis(own_redis, "after")  # Redis answered, over a new connection
    assert failures.count == 1
    await client.close()


async def test_a_server_that_stops_answering_fails_pending_hits_after_the_socket_timeout(
        own_redis, caplog):
    client = RedisClient(own_redis.url())
    failures = Failures(client)
    limiter = RedisLimiter(client)
    assert (await limiter.hit([("x", RateLimit(5, 60))])).admitted
    own_redis.signal(signal.SIGSTOP)
    with caplog.at_level(logging.WARNING, logger="authgate.cache"):
        results = await asyncio.wait_for(asyncio.gather(
            *(limiter.hit([("x", RateLimit(5, 60))]) for _ in range(20))), 5)
    own_redis.signal(signal.SIGCONT)
    assert sum(r.admitted for r in results) == 5  # fallback: a fresh per-replica count
    assert failures.count == 1 and not client.healthy()
    assert "TimeoutError" in caplog.text  # the reply timeout ended them (the socket is fine)
    await client.close()


async def test_calls_past_the_cap_fall_back_at_once_while_the_calls_in_flight_wait(
        own_redis, monkeypatch, caplog):
    monkeypatch.setattr(redis_scripts, "MAX_PENDING", 10)
    client = RedisClient(own_redis.url())
    failures = Failures(client)
    limiter = RedisLimiter(client)
    assert (await limiter.hit([("cap", RateLimit(100, 60))])).admitted
    own_redis.signal(signal.SIGSTOP)
    waiting = [asyncio.ensure_future(limiter.hit([("cap", RateLimit(100, 60))]))
               for _ in range(10)]
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.WARNING, logger="authgate.cache"):
        over = [await asyncio.wait_for(limiter.hit([("cap", RateLimit(100, 60))]), 0.5)
                for _ in range(3)]
    assert all(o.admitted for o in over) and failures.count == 3  # fallback, counted as errors
    assert caplog.text.count("10 script calls awaiting replies") == 1
    assert client.healthy() and not any(w.done() for w in waiting)  # not marked down
    own_redis.signal(signal.SIGCONT)
    results = await asyncio.gather(*waiting)
    assert sorted(r.remaining for r in results) == list(range(89, 99))  # from Redis
    assert failures.count == 3
    await client.close()


# --- the URL's credentials and database -----------------------------------------------------------

@pytest.mark.parametrize("userinfo", [":s3cret-pw@", "default:s3cret-pw@"])
async def test_password_and_database_come_from_the_url(userinfo):
    server = PrivateRedis(password="s3cret-pw")
    server.start()
    try:
        client = RedisClient(server.url(db=3, userinfo=userinfo))
        failures = Failures(client)
        limiter = RedisLimiter(client)
        assert [(await limiter.hit([("pw", RateLimit(2, 60))])).admitted
                for _ in range(3)] == [True, True, False]
        assert in_redis(server, "pw", db=3) and not in_redis(server, "pw", db=0)
        assert failures.count == 0
        await client.close()
    finally:
        server.stop()


async def test_a_wrong_password_falls_back_and_says_so_without_the_password(caplog):
    server = PrivateRedis(password="s3cret-pw")
    server.start()
    try:
        client = RedisClient(server.url(userinfo=":not-the-pw-8d1f@"))
        failures = Failures(client)
        limiter = RedisLimiter(client)
        with caplog.at_level(logging.WARNING, logger="authgate.cache"):
            result = await limiter.hit([("pw", RateLimit(2, 60))])
        assert result.admitted and result.remaining == 1  # the per-replica fallback
        assert not client.healthy() and failures.count == 1
        assert not in_redis(server, "pw")
        assert "AUTH failed (WRONGPASS)" in caplog.text
        assert "credentials" in caplog.text
        assert "not-the-pw-8d1f" not in caplog.text and "s3cret" not in caplog.text
        await client.close()
    finally:
        server.stop()


async def test_rediss_runs_the_scripts_over_tls_and_checks_the_certificate():
    server = PrivateRedis(tls=True)
    server.start()
    try:
        trusted = RedisClient(f"rediss://127.0.0.1:{server.port}/2?ssl_ca_certs={server.cert}")
        failures = Failures(trusted)
        limiter = RedisLimiter(trusted)
        assert [(await limiter.hit([("tls", RateLimit(2, 60))])).admitted
                for _ in range(3)] == [True, True, False]
        assert in_redis(server, "tls", db=2) and failures.count == 0
        await trusted.close()
        untrusted = RedisClient(f"rediss://127.0.0.1:{server.port}/2")  # system CAs only
        failures = Failures(untrusted)
        assert (await RedisLimiter(untrusted).hit([("tls2", RateLimit(2, 60))])).admitted
        assert failures.count == 1 and not untrusted.healthy()  # refused: the fallback
        assert not in_redis(server, "tls2", db=2)
        await untrusted.close()
    finally:
        server.stop()


async def test_a_server_that_is_not_there_falls_back_within_the_connect_timeout():
    client = RedisClient(f"redis://127.0.0.1:{free_cluster_port()}/0")
    failures = Failures(client)
    limiter = RedisLimiter(client)
    results = await asyncio.wait_for(asyncio.gather(
        *(limiter.hit([("gone", RateLimit(2, 60))]) for _ in range(5))), 2)
    assert [r.admitted for r in results].count(True) == 2
    assert failures.count == 1  # one connect attempt, shared by the calls that waited for it
    await client.close()


# --- which clients have the lean path ----------------------------------------------------------

async def test_only_a_single_server_runs_its_scripts_off_redis_py():
    single = make_redis(REDIS_URL)
    cluster = make_redis("redis+cluster://127.0.0.1:1/")
    sentinel = make_redis("redis+sentinel://127.0.0.1:1/mymaster")
    assert single.lean_scripts is not None
    assert cluster.lean_scripts is None and sentinel.lean_scripts is None  # on redis-py
    for client in (single, cluster, sentinel):
        await client.close()


def test_a_command_is_encoded_as_resp_bulk_strings():
    assert redis_scripts.encode_evalsha("ab", ["k"], [5, b"x"]) == (
        b"*6\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\n5\r\n$1\r\nx\r\n")


async def test_a_closed_client_opens_no_new_connection(own_redis):
    client = RedisClient(own_redis.url())
    pipe = client.lean_scripts
    assert pipe is not None
    assert await pipe.run(ECHO, ECHO_SHA, [], ["open"]) == b"open"
    await client.close()
    assert await pipe.run(ECHO, ECHO_SHA, [], ["closed"]) is None
    await asyncio.sleep(0.05)
    assert "connected_clients:1" in own_redis.cli("info", "clients")  # redis-cli's own only


async def test_a_database_the_server_lacks_falls_back_and_says_so(own_redis, caplog):
    client = RedisClient(own_redis.url(db=99))  # 16 databases by default
    failures = Failures(client)
    with caplog.at_level(logging.WARNING, logger="authgate.cache"):
        result = await RedisLimiter(client).hit([("db", RateLimit(2, 60))])
    assert result.admitted and failures.count == 1 and not client.healthy()
    assert "SELECT failed (ERR): the server refused database 99" in caplog.text
    await client.close()


async def test_a_peer_that_does_not_speak_resp_fails_the_pending_calls(caplog):
    """Not Redis at all (a wrong port in the URL): its bytes cannot be parsed."""
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        await reader.read(100)  # until the client gives up
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RedisClient(f"redis://127.0.0.1:{port}/0")
    failures = Failures(client)
    limiter = RedisLimiter(client)
    with caplog.at_level(logging.WARNING, logger="authgate.cache"):
        results = await asyncio.wait_for(asyncio.gather(
            *(limiter.hit([("p", RateLimit(2, 60))]) for _ in range(4))), 5)
    assert [r.admitted for r in results] == [True, True, False, False]  # the fallback
    assert failures.count == 1 and "ProtocolError" in caplog.text
    await client.close()
    server.close()
    await server.wait_closed()

"""The lean pipe (rediss://) builds a TLS context per connect attempt, as redis-py does per
connection: after the server's certificate is re-issued at the same paths and Redis restarts, it
reconnects (limits stay shared); a CA file missing at start-up is a connect failure (the gateway
starts degraded), not a crash. Found in review: the pipe once built its context once."""

from __future__ import annotations

import subprocess

import pytest

from gateway.config import RateLimit
from gateway.ratelimit import RedisLimiter
from gateway.redis_client import RedisClient, make_redis, script_id
from tests.contract.test_redis_scripts import (  # noqa: F401 (pytestmark, fixture)
    PrivateRedis,
    collect_garbage,
    pytestmark,
)

ECHO = "return ARGV[1]"


def _reissue(server: PrivateRedis) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", f"{server.dir}/key.pem", "-out", server.cert, "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)


@pytest.fixture
def tls_redis():
    server = PrivateRedis(tls=True)
    server.start()
    yield server
    server.stop()


async def test_after_a_certificate_rotation_the_lean_pipe_reconnects(tls_redis):
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.cert}"
    client = RedisClient(url)
    try:
        assert await client.lean_scripts.run(ECHO, script_id(ECHO), [], ["a"]) == b"a"
        tls_redis.stop()
        _reissue(tls_redis)  # same paths, new key and certificate (a routine rotation)
        tls_redis.start()
        client._down_until = 0.0
        # redis-py: a new pooled connection reads the CA file again and verifies the new cert
        assert await client.call(client.client.eval(ECHO, 0, "b")) == b"b"
        client._down_until = 0.0
        # was: None (SSLCertVerificationError, forever), and the client is marked down
        assert await client.lean_scripts.run(ECHO, script_id(ECHO), [], ["c"]) == b"c"
        assert client.healthy()
    finally:
        await client.close()


async def test_after_a_rotation_two_replicas_still_share_one_limit(tls_redis):
    url = f"rediss://127.0.0.1:{tls_redis.port}/0?ssl_ca_certs={tls_redis.cert}"
    replicas = [RedisClient(url) for _ in range(2)]
    limiters = [RedisLimiter(c) for c in replicas]
    key = [("t:{x}", RateLimit(1, 60))]
    try:
        assert [(await lim.hit(key)).admitted for lim in limiters] == [True, False]
        tls_redis.stop()
        _reissue(tls_redis)
        tls_redis.start()  # (a restart forgets the limiter state)
        for c in replicas:
            c._down_until = 0.0
            assert await c.call(c.client.ping())  # redis-py: Redis is fine
        # was: [True, True], each replica admits the whole limit while Redis is up
        assert [(await lim.hit(key)).admitted for lim in limiters] == [True, False]
    finally:
        for c in replicas:
            await c.close()


def test_a_tls_file_missing_at_start_does_not_stop_the_client_being_built():
    # e416f82: constructed (redis-py reads the files at connect: the gateway starts degraded);
    # was: FileNotFoundError from ScriptPipe.__init__ -> make_redis -> Services.open
    make_redis("rediss://127.0.0.1:1/0?ssl_ca_certs=/nonexistent/ca.pem")


async def test_services_open_with_a_tls_file_not_there_yet(tmp_path):
    # was: FileNotFoundError, so `serve` (and any CLI command that opens the services) fails
    # where e416f82 opened and served degraded (limits per replica, lookups from the store)
    from gateway.config import Settings
    from gateway.services import Services

    settings = Settings(store=f"sqlite:///{tmp_path}/s.db", pepper="p",
                        cache="rediss://127.0.0.1:1/0?ssl_ca_certs=/nonexistent/ca.pem")
    services = await Services.open(settings)
    await services.close()

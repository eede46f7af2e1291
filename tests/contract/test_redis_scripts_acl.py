"""A Redis user allowed EVAL/EVALSHA but not SCRIPT (a least-privilege ACL). The old
standalone path (RedisClient.script: EVALSHA, on NOSCRIPT an EVAL, which also caches the
script) ran the limiter; the lean pipe must too: when SCRIPT LOAD is refused it runs EVAL (found
in review: it once relied on SCRIPT LOAD alone, so every hit failed and marked Redis down)."""

from __future__ import annotations

import pytest

from gateway.redis_client import RedisClient, script_id
from tests.contract.test_redis_scripts import (  # noqa: F401 (pytestmark, fixture)
    PrivateRedis,
    collect_garbage,
    pytestmark,
)

ECHO = "return ARGV[1]"


@pytest.fixture
def acl_redis():
    server = PrivateRedis()
    server.start()
    assert server.cli("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all",
                      "-script") == "OK"
    yield server
    server.stop()


async def test_a_user_without_script_load_still_runs_the_limiter(acl_redis):
    url = f"redis://app:pw@127.0.0.1:{acl_redis.port}/0"
    client = RedisClient(url)
    try:
        # redis-py path (still used by add_credits, cluster, sentinel): EVAL on NOSCRIPT
        assert await client.call(client.script(ECHO, script_id(ECHO), [], "a")) == b"a"
        acl_redis.cli("SCRIPT", "FLUSH")
        client._down_until = 0.0
        # was: None (SCRIPT LOAD refused -NOPERM, the re-sent EVALSHA gets NOSCRIPT again)
        assert await client.lean_scripts.run(ECHO, script_id(ECHO), [], ["b"]) == b"b"
    finally:
        await client.close()

"""Adversarial matching of ScriptPipe replies to callers on a real redis-server, under
uvloop (what `serve` runs) and asyncio: random cancellations, SCRIPT FLUSH (NOSCRIPT + re-sent
EVALSHA), CLIENT KILL (connection lost mid-flight), CLIENT PAUSE past the reply timeout (the
pending calls fail; their replies arrive later on a closed connection), DEBUG SLEEP. Every
reply a caller gets must be its own (ECHO script), or None; nothing raises; nothing hangs."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
import uvloop

from gateway.redis_client import RedisClient, script_id
from tests.contract.test_redis_scripts import (  # noqa: F401 (pytestmark, fixture)
    PrivateRedis,
    collect_garbage,
    pytestmark,
)

ECHO = "return ARGV[1]"
ECHO_SHA = script_id(ECHO)


async def _storm(url: str, seconds: float = 4.0) -> dict[str, int]:
    client = RedisClient(url)
    pipe = client.lean_scripts
    admin = aioredis.from_url(url)
    stats = {"ok": 0, "none": 0, "cancelled": 0, "wrong": 0, "raised": 0}
    stop = asyncio.Event()
    rng = random.Random(7)

    async def one(tag: str) -> None:
        reply = await pipe.run(ECHO, ECHO_SHA, [], [tag])
        if reply is None:
            stats["none"] += 1
        elif reply != tag.encode():
            stats["wrong"] += 1
        else:
            stats["ok"] += 1

    async def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            client._down_until = 0.0  # no backoff: keep the pipe busy through every fault
            task = asyncio.ensure_future(one(f"{i}:{n}"))
            if rng.random() < 0.2:
                await asyncio.sleep(0)
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                stats["cancelled"] += 1
            except Exception:
                stats["raised"] += 1
            n += 1
            await asyncio.sleep(0)

    workers = [asyncio.create_task(worker(i)) for i in range(100)]
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    faults = ["flush", "kill", "pause", "sleep"]
    while loop.time() < end:
        await asyncio.sleep(0.15)
        fault = rng.choice(faults)
        try:
            if fault == "flush":
                await admin.script_flush()
            elif fault == "kill":
                await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            elif fault == "pause":
                await admin.execute_command("CLIENT", "PAUSE", "1200", "ALL")
            else:
                await admin.execute_command("DEBUG", "SLEEP", "0.3")
        except Exception:
            pass
    stop.set()
    await asyncio.wait_for(asyncio.gather(*workers), 10)  # nothing hangs
    conn = pipe._conn
    assert conn is None or len(conn.pending) < 10_000
    await admin.aclose()
    await client.close()
    return stats


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("tls", [False, True])
def test_no_caller_ever_gets_another_callers_reply(loop, tls):
    server = PrivateRedis("--enable-debug-command", "yes", tls=tls)
    server.start()
    try:
        url = server.url()
        if tls:
            url = url.replace("redis://", "rediss://") + f"?ssl_ca_certs={server.cert}"
        run = uvloop.run if loop == "uvloop" else asyncio.run
        stats = run(_storm(url))
    finally:
        server.stop()
    print(stats)
    assert stats["wrong"] == 0, stats
    assert stats["raised"] == 0, stats
    assert stats["ok"] > 100, stats  # some calls got through between faults


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_no_cross_talk_with_auth_and_select_across_reconnects(loop):
    server = PrivateRedis("--enable-debug-command", "yes", password="s3cret")
    server.start()
    try:
        url = server.url(db=3, userinfo=":s3cret@")
        run = uvloop.run if loop == "uvloop" else asyncio.run
        stats = run(_storm(url, seconds=3.0))
    finally:
        server.stop()
    print(stats)
    assert stats["wrong"] == 0 and stats["raised"] == 0 and stats["ok"] > 100, stats

"""The Redis limiter in process: CPU per hit and hits/s at concurrency 1 and 32.

    python bench/limiter_micro.py [--hits 20000] [--repeat 3] [--loop uvloop|asyncio]

Runs ``RedisLimiter.hit`` (gateway/lua/gcra.lua) against a private redis-server on a free
loopback port (started and stopped by PID here), over whichever ``gateway`` package is imported:
to compare with another revision, put its tree first on PYTHONPATH (the script prints which one
it measured). CPU is this process's (time.process_time) and the redis-server's (/proc), per hit;
each figure is the best of ``--repeat`` runs (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import gateway
from gateway.config import RateLimit
from gateway.ratelimit import RedisLimiter
from gateway.redis_client import RedisClient

LIMIT = RateLimit(1_000_000_000, 60)  # always admitted: every hit is a full script run


def _free_port() -> int:
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(23000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free loopback port")


def _cpu_of(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _round(limiter: RedisLimiter, hits: int, concurrency: int,
                 redis_pid: int) -> tuple[float, float, float]:
    """(hits/s, gateway CPU us per hit, redis CPU us per hit) for one run."""
    per_worker = hits // concurrency

    async def worker(w: int) -> None:
        limits = [(f"bench:{{{w}}}", LIMIT)]
        for _ in range(per_worker):
            result = await limiter.hit(limits)
            assert result.admitted

    redis0, cpu0, wall0 = _cpu_of(redis_pid), time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    done = per_worker * concurrency
    return done / wall, cpu / done * 1e6, (_cpu_of(redis_pid) - redis0) / done * 1e6


@contextlib.contextmanager
def private_redis() -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server on a free loopback port, stopped by PID afterwards."""
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL)
        proc.port = port  # type: ignore[attr-defined]
        try:
            deadline = time.monotonic() + 10
            while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                                 text=True).stdout.strip() != "PONG":
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
            yield proc
        finally:
            proc.terminate()
            proc.wait(10)


async def main(port: int, redis_pid: int, hits: int, repeat: int) -> None:
    client = RedisClient(f"redis://127.0.0.1:{port}/0")
    limiter = RedisLimiter(client)
    failures: list[int] = []
    client.on_error = lambda: failures.append(1)
    await _round(limiter, 2000, 32, redis_pid)  # warm up: script loaded, connections open
    lean = getattr(client, "lean_scripts", None) is not None
    print(f"gateway package: {os.path.dirname(gateway.__file__)} "
          f"({'lean pipe' if lean else 'redis-py'}), loop "
          f"{type(asyncio.get_running_loop()).__module__}, {hits} hits, best of {repeat}")
    print(f"{'conc':>4} {'hits/s':>9} {'gw CPU us/hit':>14} {'redis CPU us/hit':>17}")
    for concurrency in (1, 32):
        runs = [await _round(limiter, hits, concurrency, redis_pid) for _ in range(repeat)]
        print(f"{concurrency:>4} {max(r[0] for r in runs):>9.0f} "
              f"{min(r[1] for r in runs):>14.1f} {min(r[2] for r in runs):>17.1f}")
    assert not failures, "Redis failed during the bench: the fallback answered"
    await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the gateway serves on uvloop")
    ns = parser.parse_args()
    with private_redis() as server:
        bench = main(server.port, server.pid, ns.hits, ns.repeat)  # type: ignore[attr-defined]
        if ns.loop == "uvloop":
            import uvloop

            uvloop.run(bench)
        else:
            asyncio.run(bench)

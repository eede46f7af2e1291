"""WebSocket message rate through the gateway against a direct connection to the same upstream.

    python bench/ws_bench.py                  # 3 interleaved rounds of 10 s, 1 and 32 connections
    python bench/ws_bench.py --quick          # 1 round of 2 s: a smoke run
    python bench/ws_bench.py --size 4096 --conns 1,8,64

Starts a WebSocket echo upstream (the ``websockets`` package, in its own process) and one
gateway (``authgate serve``, SQLite + memory, uvloop + httptools as served), then, in this
process, drives N client connections that each send a message of ``--size`` bytes and wait for
its echo, as fast as they can, first directly against the upstream, then through the gateway
(interleaved rounds). Prints, per connection count: round trips a second (median of rounds),
p50 and p99 of one round trip, the ratio gateway/direct, and the gateway's CPU per 1,000 round
trips (each round trip is two relayed messages). The clients share the machine with both
servers, so the figures compare the two paths; they are not the gateway's ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness import PY, ROOT, cpu_seconds, free_port, start, stop_all, wait_port

UPSTREAM = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(conn):
    async for message in conn:
        await conn.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), compression=None, max_size=None):
        await asyncio.Future()

asyncio.run(main())
"""


async def create_token(store: str) -> str:
    sys.path.insert(0, str(ROOT))
    from gateway.authority import Actor, TokenAuthority
    from gateway.config import Settings
    from gateway.store import make_store

    s = make_store(store)
    await s.open()
    await s.migrate()
    _, secret = await TokenAuthority(s, Settings(pepper="bench")).create(
        Actor("bench"), subject="bench", name="ws-bench")
    await s.close()
    return secret


async def drive(url: str, headers: dict[str, str], conns: int, size: int,
                seconds: float) -> tuple[float, list[float]]:
    """Round trips a second over ``conns`` connections, and every round trip's seconds."""
    from websockets.asyncio.client import connect

    payload = os.urandom(size)
    times: list[float] = []
    stop = time.monotonic() + seconds

    async def one() -> int:
        n = 0
        async with connect(url, additional_headers=headers, compression=None,
                           max_size=None) as ws:
            while time.monotonic() < stop:
                t = time.perf_counter()
                await ws.send(payload)
                await ws.recv()
                times.append(time.perf_counter() - t)
                n += 1
        return n

    started = time.monotonic()
    counts = await asyncio.gather(*(one() for _ in range(conns)))
    return sum(counts) / (time.monotonic() - started), times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one round of 2 s")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", default="1,32")
    ap.add_argument("--size", type=int, default=256, help="message bytes")
    opts = ap.parse_args()
    if opts.quick:
        opts.rounds, opts.seconds = 1, 2.0
    tmp = Path(tempfile.mkdtemp(prefix="authgate-ws-bench-"))
    up_port, gw_port = free_port(), free_port()
    store = f"sqlite:///{tmp}/ws.db"
    secret = await create_token(store)
    procs = [start([PY, "-c", UPSTREAM, str(up_port)], log=tmp / "upstream.log")]
    env = {"AUTHGATE_STORE": store, "AUTHGATE_CACHE": "memory://", "AUTHGATE_PEPPER": "bench",
           "AUTHGATE_UPSTREAM": f"http://127.0.0.1:{up_port}",
           "AUTHGATE_LISTEN": f"127.0.0.1:{gw_port}",
           "AUTHGATE_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",
           "AUTHGATE_DEFAULT_RATE_LIMIT": "null", "AUTHGATE_ACCESS_LOG": "false",
           "PYTHONPATH": str(ROOT)}
    procs.append(start([PY, "-m", "gateway", "serve"], env=env, log=tmp / "gateway.log",
                       cwd=ROOT))
    try:
        wait_port(up_port, proc=procs[0])
        wait_port(gw_port, proc=procs[1])
        paths = {"direct": (f"ws://127.0.0.1:{up_port}/", {}),
                 "gateway": (f"ws://127.0.0.1:{gw_port}/",
                             {"Authorization": f"Bearer {secret}"})}
        print(f"message {opts.size} B, {opts.rounds} round(s) of {opts.seconds:g} s; "
              "one round trip = one message each way")
        print(f"{'path':<8} {'conns':>5} {'trips/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'ratio':>6} {'gw CPU ms/1k':>12}")
        for conns in [int(c) for c in opts.conns.split(",")]:
            rates: dict[str, list[float]] = {p: [] for p in paths}
            times: dict[str, list[float]] = {p: [] for p in paths}
            cpu: list[float] = []
            for _ in range(opts.rounds):
                for name, (url, headers) in paths.items():
                    before = cpu_seconds(procs[1].pid)
                    rate, t = await drive(url, headers, conns, opts.size, opts.seconds)
                    if name == "gateway":
                        cpu.append((cpu_seconds(procs[1].pid) - before) * 1e6
                                   / max(1.0, rate * opts.seconds))
                    rates[name].append(rate)
                    times[name].extend(t)
            direct = statistics.median(rates["direct"])
            for name in paths:
                rate = statistics.median(rates[name])
                extra = f"{statistics.median(cpu):>12.0f}" if name == "gateway" else ""
                print(f"{name:<8} {conns:>5} {rate:>9.0f} {pct(times[name], 0.5):>7.2f} "
                      f"{pct(times[name], 0.99):>7.2f} {rate / direct:>6.2f} {extra}")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    asyncio.run(main())

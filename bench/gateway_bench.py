"""Gateway throughput and latency against bare pass-through baselines, all in one run.

    python bench/gateway_bench.py [--duration 10] [--skip-postgres]

Starts a fast upstream (200-byte body), the bare Starlette pass-throughs (aiohttp client: the
baseline; httpx default transport: for reference) and the gateway on SQLite + memory and on
PostgreSQL + Redis, then drives each with wrk at 32 and 256 connections (tokens pre-created,
cache warm, a per-token rate limit on, identity headers injected). Prints req/s, p50, p99,
errors and the ratios gateway / baseline; then the gateway's RSS while serving 10,000 distinct
tokens. Needs `wrk` (Debian: apt-get install wrk) and, unless skipped, PostgreSQL and Redis on
127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PG = os.environ.get("AUTHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = "redis://127.0.0.1:6379/10"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def write_wrk_script(path: Path, tokens: list[str]) -> None:
    quoted = ",".join(f'"{t}"' for t in tokens)
    path.write_text(
        f"local tokens = {{{quoted}}}\nlocal i = 0\n"
        "request = function()\n  i = i % #tokens + 1\n"
        '  return wrk.format("GET", "/bench", {["Authorization"] = "Bearer " .. tokens[i]})\n'
        "end\n")


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_wrk(port: int, conns: int, duration: int, script: Path | None) -> dict[str, float]:
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/bench"], capture_output=True,
                         text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99,
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


async def create_tokens(store: str, n: int) -> list[str]:
    from gateway.authority import Actor, TokenAuthority
    from gateway.config import Settings
    from gateway.store import make_store

    s = make_store(store)
    await s.open()
    await s.migrate()
    auth = TokenAuthority(s, Settings(pepper="bench"))
    out = []
    for i in range(n):
        _, secret = await auth.create(Actor("bench"), subject=f"bench{i % 50}", name="bench",
                                      scopes=["read"], rate_limit="1000000000/minute")
        out.append(secret)
    await s.close()
    return out


async def pg_database(action: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG)
    try:
        if action == "create":
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def gateway_env(store: str, cache: str, upstream: str, port: int) -> dict[str, str]:
    return {"AUTHGATE_STORE": store, "AUTHGATE_CACHE": cache, "AUTHGATE_UPSTREAM": upstream,
            "AUTHGATE_LISTEN": f"127.0.0.1:{port}", "AUTHGATE_ADMIN_LISTEN":
            f"127.0.0.1:{free_port()}", "AUTHGATE_PEPPER": "bench",
            "AUTHGATE_LOCAL_CACHE_TTL_S": "5"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--rounds", type=int, default=3,
                    help="measure every target this many times, interleaved; report the median")
    opts = ap.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    tmp = Path(tempfile.mkdtemp(prefix="authgate-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[tuple[str, int], dict[str, float]] = {}
    pg_name = f"authgate_bench_{secrets.token_hex(4)}"
    try:
        up = free_port()
        procs.append(start([PY, str(HERE / "servers.py"), "upstream", str(up)]))
        wait_port(up)
        upstream = f"http://127.0.0.1:{up}"

        targets: list[tuple[str, int, Path | None, subprocess.Popen[bytes]]] = []
        for name, kind in (("baseline (starlette+aiohttp)", "baseline-aiohttp"),
                           ("reference (starlette+httpx)", "baseline-httpx")):
            port = free_port()
            p = start([PY, str(HERE / "servers.py"), kind, str(port), upstream])
            procs.append(p)
            targets.append((name, port, None, p))

        pairs = [("gateway sqlite+memory", f"sqlite:///{tmp}/bench.db", "memory://")]
        if not opts.skip_postgres:
            asyncio.run(pg_database("create", pg_name))
            pairs.append(("gateway postgresql+redis", PG.rsplit("/", 1)[0] + "/" + pg_name,
                          REDIS))
            import redis

            redis.Redis.from_url(REDIS).flushdb()
        for name, store, cache in pairs:
            tokens = asyncio.run(create_tokens(store, 100))
            script = tmp / f"{name.split()[-1]}.lua"
            write_wrk_script(script, tokens)
            port = free_port()
            p = start([PY, "-m", "gateway", "serve"], gateway_env(store, cache, upstream, port))
            procs.append(p)
            targets.append((name, port, script, p))

        for _name, port, script, _ in targets:
            wait_port(port)
            run_wrk(port, 32, 2, script)  # warm caches and connection pools
        # Interleaved rounds, median per target: these machines drift by +/-20 % over minutes.
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for _ in range(opts.rounds):
            for conns in (32, 256):
                for name, port, script, _ in targets:
                    r = run_wrk(port, conns, opts.duration, script)
                    runs.setdefault((name, conns), []).append(r)
                    print(f"  measured {name} c={conns}: {r['rps']:.0f} req/s", file=sys.stderr)
        for key, rs in runs.items():
            rs.sort(key=lambda r: r["rps"])
            median = dict(rs[len(rs) // 2])
            median["socket_errors"] = sum(r["socket_errors"] for r in rs)
            median["non2xx"] = sum(r["non2xx"] for r in rs)
            results[key] = median

        base = "baseline (starlette+aiohttp)"
        print(f"\nmedian of {opts.rounds} interleaved round(s), {opts.duration} s each; "
              "errors and non2xx summed over rounds")
        print(f"{'target':<30} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'errors':>7} {'non2xx':>7} {'rps/base':>9} {'p99/base':>9}")
        for (name, conns), r in results.items():
            b = results[(base, conns)]
            print(f"{name:<30} {conns:>5} {r['rps']:>9.0f} {r['p50']:>8.2f} {r['p99']:>8.2f} "
                  f"{r['socket_errors']:>7} {r['non2xx']:>7} {r['rps'] / b['rps']:>9.2f} "
                  f"{r['p99'] / b['p99']:>9.2f}")

        # Memory: the SQLite gateway serving 10,000 distinct tokens.
        name, _, _, proc = targets[2]
        tokens = asyncio.run(create_tokens(pairs[0][1], 10_000))
        script = tmp / "many.lua"
        write_wrk_script(script, tokens)
        before = rss_mib(proc.pid)
        run_wrk(targets[2][1], 32, max(opts.duration, 10), script)
        after = rss_mib(proc.pid)
        print(f"\nRSS of {name}: {before:.0f} MiB before, {after:.0f} MiB after serving "
              f"10,000 distinct tokens")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if not opts.skip_postgres:
            asyncio.run(pg_database("drop", pg_name))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

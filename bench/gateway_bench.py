"""Gateway throughput and latency against a bare pass-through, in interleaved rounds of one run.

    python bench/gateway_bench.py                      # full run, ~6 min on 2 cores
    python bench/gateway_bench.py --compare eb8d702    # and that revision's gateway, ~9 min
    python bench/gateway_bench.py --quick              # short rounds, for development
    python bench/gateway_bench.py --cluster            # + a PostgreSQL + Redis Cluster row
    python bench/gateway_bench.py --variant 'assertion:AUTHGATE_IDENTITY_ASSERTION={"ttl_s":60}'
                                                       # + a row signing an identity assertion
    python bench/gateway_bench.py --variant nolog:AUTHGATE_ACCESS_LOG=false
                                                       # + a row without the access log
    python bench/gateway_bench.py --workers 2          # + a row of serve --workers 2 (req/s
                                                       #   per worker vs one process)
    python bench/gateway_bench.py --floor              # + the gateway with judging made free
                                                       #   (bench/floor.py)

Starts a 200-byte upstream, the baselines and one gateway process per backend pair (SQLite +
memory, PostgreSQL + a private redis-server), then drives each in turn with wrk at 32, 256 and 1
connections, round after round, and prints the medians: req/s, p50, p99, errors, ratios to the
bare pass-through (same server, ASGI style and client as the gateway; no auth) and to the
Starlette + aiohttp reference, latency added at one connection, and the CPU of each server and
of the gateway's Redis per 1,000 requests. Then the gateway's RSS while serving 10,000 distinct
tokens. docs/benchmarks.md says what every column means. Needs wrk (apt-get install wrk),
redis-server and PostgreSQL on 127.0.0.1 (or --skip-postgres).
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    HERE,
    PY,
    ROOT,
    Redis,
    Tree,
    add_worktree,
    cpu_seconds,
    existing_redis,
    free_port,
    own_redis,
    pg_database,
    remove_worktree,
    rss_mib,
    run_wrk,
    start,
    stop_all,
    wait_port,
    write_wrk_script,
)

BARE, REF = "bare (plain ASGI + aiohttp)", "starlette + aiohttp (ref)"


async def create_tokens(store: str, n: int) -> list[str]:
    """n fresh tokens (no practical rate limit) in ``store``, by whichever ``gateway`` imports."""
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


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    script: Path | None = None
    redis: Redis | None = None
    tree: str = ""
    backend: str = ""
    variant: str = ""
    runs: dict[int, list[dict[str, float]]] = field(default_factory=dict)


def gateway_env(store: str, cache: str, upstream: str, port: int) -> dict[str, str]:
    return {"AUTHGATE_STORE": store, "AUTHGATE_CACHE": cache, "AUTHGATE_UPSTREAM": upstream,
            "AUTHGATE_LISTEN": f"127.0.0.1:{port}", "AUTHGATE_ADMIN_LISTEN":
            f"127.0.0.1:{free_port()}", "AUTHGATE_PEPPER": "bench",
            "AUTHGATE_LOCAL_CACHE_TTL_S": "5"}


class Bench:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.tmp = Path(tempfile.mkdtemp(prefix="authgate-bench-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.databases: list[str] = []
        self.worktrees: list[Tree] = []
        self.targets: list[Target] = []
        self.logs: dict[int, Path] = {}
        self.upstream = ""

    # -- setup ----------------------------------------------------------------------------------

    def launch(self, name: str, args: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{len(self.procs)}-{name.split()[0]}.log"
        self.procs.append(start(args, env=env, log=log, cwd=cwd))
        self.logs[self.procs[-1].pid] = log
        return self.procs[-1]

    def gateways(self, tree: Tree, variants: list[tuple[str, dict[str, str]]]) -> None:
        backends = ["sqlite+memory"] + ([] if self.opts.skip_postgres else ["postgresql+redis"])
        if self.opts.cluster and tree.path == ROOT and not self.opts.skip_postgres:
            backends.append("postgresql+cluster")  # a private 3-node Redis Cluster
        for backend in backends:
            redis: Redis | None = None
            if backend == "sqlite+memory":
                store = f"sqlite:///{self.tmp}/{tree.label}.db"
            else:
                self.databases.append(f"authgate_bench_{secrets.token_hex(4)}")
                store = pg_database("create", self.databases[-1])
                redis = self.cluster() if backend == "postgresql+cluster" else self.redis()
                # (one per gateway: its CPU is that gateway's alone)
            script = self.tmp / f"{tree.label}-{backend}.lua"
            write_wrk_script(script, tree.create_tokens(store, 100))
            for suffix, extra in [("", {})] + (variants if backend == "sqlite+memory" else []):
                name = f"{'gateway' if tree.path == ROOT else tree.label} {backend}"
                name += f" {suffix}" if suffix else ""
                port = free_port()
                env = {**gateway_env(store, redis.url if redis else "memory://", self.upstream,
                                     port), **tree.env, **extra}
                proc = self.launch(name, [PY, "-m", "gateway", "serve"], env, tree.path)
                self.targets.append(Target(name, port, proc, script, redis, tree.label, backend,
                                           suffix))
            if self.opts.floor and backend == "sqlite+memory" and tree.path == ROOT:
                # bench/floor.py: decisions made once and replayed (judging free), log off
                port = free_port()
                env = {**gateway_env(store, "memory://", self.upstream, port),
                       "AUTHGATE_ACCESS_LOG": "false"}
                proc = self.launch("floor", [PY, str(HERE / "floor.py")], env, tree.path)
                self.targets.append(Target("floor sqlite+memory (judging free)", port, proc,
                                           script, None, tree.label, backend, "floor"))

    def redis(self) -> Redis:
        if self.opts.redis:
            return existing_redis(self.opts.redis)
        r = own_redis(self.tmp / f"{len(self.procs)}-redis.log")
        assert r.proc is not None
        self.procs.append(r.proc)
        return r

    def cluster(self) -> Redis:
        """A private 3-node Redis Cluster (bench/cluster.py); its CPU is not in the redis
        column (three processes), only the gateway's own."""
        from cluster import own_cluster

        url, _ = own_cluster(self.tmp, lambda name, args: self.launch(name, args))
        return Redis(url, None)

    def setup(self) -> None:
        port = free_port()
        self.wait(port, self.launch("upstream", [PY, str(HERE / "servers.py"), "upstream",
                                                 str(port)]))
        self.upstream = f"http://127.0.0.1:{port}"
        for name, kind in [(BARE, "bare"), (REF, "baseline-aiohttp")] + (
                [("starlette + httpx (ref)", "baseline-httpx")] if self.opts.httpx_ref else []):
            port = free_port()
            proc = self.launch(name, [PY, str(HERE / "servers.py"), kind, str(port),
                                      self.upstream])
            self.targets.append(Target(name, port, proc))
        trees = [Tree("current", ROOT)]
        if self.opts.compare:
            self.worktrees.append(add_worktree(self.opts.compare))
            trees.append(self.worktrees[-1])
        variants = [parse_variant(v) for v in self.opts.variant]
        if self.opts.workers > 1:  # serve --workers N: its CPU is counted over its workers
            variants.append((f"workers={self.opts.workers}",
                             {"AUTHGATE_WORKERS": str(self.opts.workers)}))
        for tree in trees:
            tree.check()
            self.gateways(tree, variants if tree.path == ROOT else [])
        first_script = next(t.script for t in self.targets if t.script)
        for t in self.targets:
            # The baselines get the same wrk script (same Lua cost in wrk, same header bytes).
            t.script = t.script or first_script
            self.wait(t.port, t.proc)
            run_wrk(t.port, 32, self.opts.warm, t.script)  # warm caches and connection pools

    def wait(self, port: int, proc: subprocess.Popen[bytes]) -> None:
        try:
            wait_port(port, proc=proc)
        except RuntimeError:
            log = self.logs.get(proc.pid)
            print(log.read_text()[-3000:] if log else "", file=sys.stderr)
            raise

    # -- rounds ---------------------------------------------------------------------------------

    def measure(self, t: Target, conns: int) -> dict[str, float]:
        pid = t.proc.pid
        rpid = t.redis.pid if t.redis else None
        cpu0, redis0 = cpu_with_children(pid), cpu_seconds(rpid)
        r = run_wrk(t.port, conns, self.opts.duration, t.script)
        n = max(r["requests"], 1)
        r["cpu"] = (cpu_with_children(pid) - cpu0) / n * 1e6  # ms per 1,000 requests
        r["redis"] = (cpu_seconds(rpid) - redis0) / n * 1e6 if rpid else float("nan")
        return r

    def rounds(self) -> None:
        for i in range(self.opts.rounds):
            order = self.targets[i % len(self.targets):] + self.targets[:i % len(self.targets)]
            for conns in self.opts.conns:
                for t in order:  # rotated each round: no target always runs first
                    t.runs.setdefault(conns, []).append(self.measure(t, conns))
                    r = t.runs[conns][-1]
                    print(f"  round {i + 1} c={conns} {t.name}: {r['rps']:.0f} req/s, "
                          f"p50 {r['p50']:.3f} ms", file=sys.stderr)

    # -- report ---------------------------------------------------------------------------------

    def paired(self, t: Target, conns: int, base: Target, key: str, op: str = "/") -> float:
        """Median over rounds of t's figure against base's in the same round (drift cancels)."""
        vals = []
        for a, b in zip(t.runs[conns], base.runs[conns], strict=True):
            if op == "/":
                vals.append(a[key] / b[key] if b[key] else float("nan"))
            else:
                vals.append(a[key] - b[key])
        return statistics.median(vals)

    def report(self) -> dict[tuple[str, int], dict[str, float]]:
        bare, ref = self.targets[0], self.targets[1]
        out: dict[tuple[str, int], dict[str, float]] = {}
        print(f"\nmedians of {self.opts.rounds} interleaved round(s) of {self.opts.duration} s; "
              "ratios are medians of same-round pairs; errors summed over rounds")
        head = (f"{'target':<34} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'non2xx':>6} "
                f"{'/bare':>6} {'/ref':>6} {'p99/bare':>8} {'+p50 ms':>8} {'cpu':>6} {'redis':>6} "
                f"{'cpu/bare':>8}")
        for conns in self.opts.conns:
            print(f"\nwrk -c{conns} -t{1 if conns == 1 else 2}   (cpu, redis: CPU ms per 1,000 "
                  "requests)\n" + head)
            for t in self.targets:
                rs = t.runs[conns]
                m = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50", "p99", "cpu")}
                m["redis"] = statistics.median(r["redis"] for r in rs)
                m["err"] = sum(r["socket_errors"] for r in rs)
                m["non2xx"] = sum(r["non2xx"] for r in rs)
                m["/bare"] = self.paired(t, conns, bare, "rps")
                m["/ref"] = self.paired(t, conns, ref, "rps")
                m["p99/bare"] = self.paired(t, conns, bare, "p99")
                m["+p50"] = self.paired(t, conns, bare, "p50", "-")
                redis = [0.0 if r["redis"] != r["redis"] else r["redis"] for r in rs]
                m["cpu/bare"] = statistics.median(
                    (r["cpu"] + x) / b["cpu"] if b["cpu"] else float("nan")
                    for r, x, b in zip(rs, redis, bare.runs[conns], strict=True))
                out[(t.name, conns)] = m
                redis_s = "-" if t.redis is None else f"{m['redis']:.1f}"
                print(f"{t.name:<34} {m['rps']:>7.0f} {m['p50']:>7.3f} {m['p99']:>7.2f} "
                      f"{m['err']:>4.0f} {m['non2xx']:>6.0f} {m['/bare']:>6.2f} {m['/ref']:>6.2f} "
                      f"{m['p99/bare']:>8.2f} {m['+p50']:>8.3f} {m['cpu']:>6.1f} {redis_s:>6} "
                      f"{m['cpu/bare']:>8.2f}")
        self.compare_summary()
        self.workers_summary()
        return out

    def workers_summary(self) -> None:
        """serve --workers N against one process: req/s per worker (1.0 = each worker serves as
        much as one process alone; on a machine with fewer free cores than N, less)."""
        n = self.opts.workers
        multi = next((t for t in self.targets if t.variant == f"workers={n}"), None)
        single = next((t for t in self.targets if t.name == "gateway sqlite+memory"), None)
        if multi is None or single is None:
            return
        print(f"\nserve --workers {n} / one process (sqlite+memory; medians of same-round pairs)")
        for conns in self.opts.conns:
            total = self.paired(multi, conns, single, "rps")
            print(f"  c={conns:<4} req/s {total:.2f}x in all, {total / n:.2f}x per worker")

    def compare_summary(self) -> None:
        if not self.worktrees:
            return
        label = self.worktrees[0].label
        print(f"\ncurrent tree / {label} (medians of same-round pairs; req/s ratio > 1: the "
              "current tree is faster; +p50: ms the current tree adds)")
        for t in self.targets:
            if t.tree != "current" or t.variant:
                continue
            old = next((o for o in self.targets if o.tree == label and o.backend == t.backend),
                       None)
            if old is None:
                continue
            for conns in self.opts.conns:
                rps = self.paired(t, conns, old, "rps")
                print(f"  {t.backend:<18} c={conns:<4} req/s {rps:.3f}"
                      f"   p50 {self.paired(t, conns, old, 'p50', '-'):+.3f} ms"
                      f"   p99 {self.paired(t, conns, old, 'p99'):.2f}x")

    def rss(self) -> tuple[float, float] | None:
        t = next(t for t in self.targets if t.name == "gateway sqlite+memory")
        store = f"sqlite:///{self.tmp}/current.db"
        n = self.opts.rss_tokens
        script = self.tmp / "many.lua"
        write_wrk_script(script, Tree("current", ROOT).create_tokens(store, n))
        before = rss_mib(t.proc.pid)
        r = run_wrk(t.port, 32, self.opts.rss_duration, script)
        after = rss_mib(t.proc.pid)
        print(f"\nRSS of {t.name}: {before:.0f} MiB before, {after:.0f} MiB after serving "
              f"{n:,} distinct tokens ({r['requests']:,.0f} requests, "
              f"{r['socket_errors'] + r['non2xx']:.0f} errors): growth {after - before:.1f} MiB")
        return before, after

    def targets_summary(self, m: dict[tuple[str, int], dict[str, float]],
                        rss: tuple[float, float] | None) -> None:
        print("\nissue 10 targets (current tree)")
        checks = []
        limits = (("sqlite+memory", 0.90, 0.1), ("postgresql+redis", 0.85, 0.2))
        for backend, floor, added in limits:
            name = f"gateway {backend}"
            if (name, 32) in m:
                checks.append((f"{backend} c32 req/s / bare >= {floor}", m[(name, 32)]["/bare"],
                               m[(name, 32)]["/bare"] >= floor))
            for c in (32, 256):
                if (name, c) in m:
                    checks.append((f"{backend} c{c} p99 / bare p99 <= 1.2",
                                   m[(name, c)]["p99/bare"], m[(name, c)]["p99/bare"] <= 1.2))
                    errs = m[(name, c)]["err"] + m[(name, c)]["non2xx"]
                    checks.append((f"{backend} c{c} errors == 0", errs, errs == 0))
            if (name, 1) in m:
                checks.append((f"{backend} c1 added p50 ms <= {added}", m[(name, 1)]["+p50"],
                               m[(name, 1)]["+p50"] <= added))
        if rss is not None:
            checks.append((f"RSS growth MiB, {self.opts.rss_tokens:,} tokens < 20",
                           rss[1] - rss[0], rss[1] - rss[0] < 20))
        for text, value, ok in checks:
            print(f"  {'ok  ' if ok else 'MISS'} {text:<48} {value:.3f}")

    def cleanup(self) -> None:
        stop_all(self.procs)
        for name in self.databases:
            pg_database("drop", name)
        for tree in self.worktrees:
            remove_worktree(tree)
        shutil.rmtree(self.tmp, ignore_errors=True)


def cpu_with_children(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (the workers of ``serve --workers``)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return cpu_seconds(pid) + sum(cpu_seconds(int(c)) for c in children)


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    label, _, pairs = text.partition(":")
    env = dict(p.split("=", 1) for p in pairs.split(",") if p)
    if not label or not env:
        raise SystemExit(f"--variant {text!r}: expected LABEL:KEY=VALUE[,KEY=VALUE]")
    return label, env


def options(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="development: 1 round of 2 s, 1,000 tokens for RSS (figures are rough)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds per level (default 5)")
    ap.add_argument("--duration", type=int, help="seconds per wrk run (default 5)")
    ap.add_argument("--conns", default="32,256,1", help="wrk connection counts (default 32,256,1)")
    ap.add_argument("--compare", metavar="REV",
                    help="also measure the gateway of git revision REV (temporary worktree)")
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--redis", metavar="URL", help="use this Redis instead of starting a "
                    "private redis-server (its CPU then includes every other client's)")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE,...",
                    help="an extra SQLite gateway of the current tree with these environment "
                    "variables, e.g. httpx:AUTHGATE_FORWARDER=httpx (repeatable)")
    ap.add_argument("--httpx-ref", action="store_true",
                    help="also measure a Starlette + httpx bare pass-through")
    ap.add_argument("--no-rss", action="store_true", help="skip the RSS measurement")
    ap.add_argument("--floor", action="store_true",
                    help="also bench/floor.py: the gateway with each decision made once and "
                    "replayed (no access log): what the gateway costs beyond judging")
    ap.add_argument("--workers", type=int, default=0, metavar="N",
                    help="also a SQLite gateway run with serve --workers N, and its req/s per "
                    "worker against one process")
    ap.add_argument("--cluster", action="store_true",
                    help="also a PostgreSQL + Redis Cluster gateway (a private 3-node cluster)")
    opts = ap.parse_args(argv)
    opts.rounds = opts.rounds or (1 if opts.quick else 5)
    opts.duration = opts.duration or (2 if opts.quick else 5)
    opts.warm = 1 if opts.quick else 2
    opts.rss_tokens = 1_000 if opts.quick else 10_000
    opts.rss_duration = 3 if opts.quick else 10
    opts.conns = [int(c) for c in opts.conns.split(",")]
    return opts


def main() -> None:
    opts = options()
    for tool in ("wrk", *(() if opts.redis or opts.skip_postgres else ("redis-server",))):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (Debian: apt-get install -y {tool})")
    bench = Bench(opts)
    started = time.monotonic()
    try:
        bench.setup()
        runs = len(bench.targets) * len(opts.conns) * opts.rounds
        print(f"{len(bench.targets)} targets, {runs} wrk runs of {opts.duration} s: about "
              f"{runs * opts.duration / 60:.1f} min", file=sys.stderr)
        bench.rounds()
        medians = bench.report()
        rss = None if opts.no_rss else bench.rss()
        bench.targets_summary(medians, rss)
    finally:
        bench.cleanup()
    print(f"\n(run took {(time.monotonic() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()

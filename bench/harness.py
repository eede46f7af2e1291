"""What the benchmarks share: ports, processes, CPU and RSS readings, wrk, Redis, git trees.

Nothing here imports ``gateway``: the same harness drives the current tree's gateway and another
revision's (``--compare``), each in its own interpreter with its own ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
PG = os.environ.get("AUTHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start(args: list[str], env: dict[str, str] | None = None, log: Path | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    # Output goes to a file, not a pipe nobody reads: a full pipe would stall the server.
    if log is None:
        return subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=cwd,
                                stdout=out, stderr=subprocess.STDOUT)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of one process (not its children), from /proc/<pid>/stat."""
    if pid is None:
        return 0.0
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5)


# -- wrk ----------------------------------------------------------------------------------------

def write_wrk_script(path: Path, tokens: list[str]) -> None:
    quoted = ",".join(f'"{t}"' for t in tokens)
    # Each wrk thread has its own Lua state; the second starts half-way through the list, so
    # two threads present distinct tokens rather than the same ones twice.
    path.write_text(
        f"local tokens = {{{quoted}}}\nlocal i = 0\nlocal threads = 0\n"
        'setup = function(thread)\n  thread:set("offset", threads)\n  threads = threads + 1\nend\n'
        "init = function(args)\n  i = (offset or 0) * math.floor(#tokens / 2)\nend\n"
        "request = function()\n  i = i % #tokens + 1\n"
        '  return wrk.format("GET", "/bench", {["Authorization"] = "Bearer " .. tokens[i]})\n'
        "end\n")


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)] if m else float("nan")


def run_wrk(port: int, conns: int, duration: float, script: Path | None) -> dict[str, float]:
    threads = 1 if conns == 1 else 2
    cmd = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, f"http://127.0.0.1:{port}/bench"], capture_output=True,
                         text=True, check=True).stdout
    found = {k: re.search(p, out, re.M) for k, p in (
        ("rps", r"Requests/sec:\s+([\d.]+)"), ("p50", r"^\s+50%\s+(\S+)"),
        ("p99", r"^\s+99%\s+(\S+)"), ("requests", r"(\d+) requests in"))}
    if not all(found.values()):
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(found["rps"].group(1)), "p50": _ms(found["p50"].group(1)),  # type: ignore[union-attr]
            "p99": _ms(found["p99"].group(1)), "requests": int(found["requests"].group(1)),  # type: ignore[union-attr]
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "non2xx": int(non2xx.group(1)) if non2xx else 0}


# -- Redis --------------------------------------------------------------------------------------

@dataclass
class Redis:
    url: str
    pid: int | None  # None: not on this host (its CPU cannot be read)
    proc: subprocess.Popen[bytes] | None = None


def own_redis(log: Path) -> Redis:
    """A private redis-server on a free loopback port: its CPU is the gateway's alone."""
    port = free_port()
    proc = start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                  "--appendonly", "no", "--daemonize", "no"], log=log)
    wait_port(port, proc=proc)
    return Redis(f"redis://127.0.0.1:{port}/0", proc.pid, proc)


def existing_redis(url: str) -> Redis:
    """A Redis already running (e.g. the system one); its CPU includes every other client's."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        pid = int(client.info("server")["process_id"])
    finally:
        client.close()
    return Redis(url, pid if Path(f"/proc/{pid}/stat").exists() else None)


# -- PostgreSQL ---------------------------------------------------------------------------------

def pg_database(action: str, name: str) -> str:
    """Create or drop a throwaway database; returns its URL."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(PG)
        try:
            if action == "create":
                await conn.execute(f'CREATE DATABASE "{name}"')
            else:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())
    return PG.rsplit("/", 1)[0] + "/" + name


# -- source trees -------------------------------------------------------------------------------

@dataclass
class Tree:
    """A source tree whose ``gateway`` package a subprocess imports (via PYTHONPATH)."""
    label: str
    path: Path

    @property
    def env(self) -> dict[str, str]:
        # PYTHONPATH comes before site-packages, so it wins over the editable install's finder.
        return {"PYTHONPATH": str(self.path)}

    def check(self) -> None:
        out = subprocess.run([PY, "-c", "import gateway; print(gateway.__file__)"],
                             env={**os.environ, **self.env}, cwd=self.path, text=True,
                             capture_output=True, check=True).stdout.strip()
        if not Path(out).resolve().is_relative_to(self.path.resolve()):
            raise RuntimeError(f"{self.label}: imports gateway from {out}, not {self.path}")

    def create_tokens(self, store: str, n: int) -> list[str]:
        """n tokens made by this tree's own code (its schema, its hashing)."""
        code = (f"import asyncio, sys; sys.path.append({str(HERE)!r}); "
                "from gateway_bench import create_tokens; "
                "print(*asyncio.run(create_tokens(sys.argv[1], int(sys.argv[2]))), sep='\\n')")
        out = subprocess.run([PY, "-c", code, store, str(n)], env={**os.environ, **self.env},
                             cwd=self.path, text=True, capture_output=True)
        if out.returncode != 0:
            raise RuntimeError(f"{self.label}: creating tokens failed:\n{out.stderr}")
        return out.stdout.split()


def add_worktree(rev: str) -> Tree:
    """Check ``rev`` out into a temporary git worktree under /tmp (the repo's files untouched)."""
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
                         text=True, capture_output=True, check=True).stdout.strip()
    path = Path(tempfile.mkdtemp(prefix=f"authgate-compare-{sha}-"))
    path.rmdir()  # git wants to create it
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(path),
                    sha], check=True)
    return Tree(sha, path)


def remove_worktree(tree: Tree) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree.path)],
                   check=False, capture_output=True)
    shutil.rmtree(tree.path, ignore_errors=True)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)

"""Private Redis topologies for tests: a 3-node Redis Cluster and a master + Sentinel.

Real ``redis-server`` processes on free loopback ports, in a temp dir, started and stopped by
PID (never by name). A cluster node also listens on its port + 10000 (the cluster bus), so its
port is chosen with that one free too, both below the ephemeral range.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

_PORTS = random.Random()
NODE_TIMEOUT_MS = 1500  # a dead node is marked failed (cluster down) this soon


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


_HANDED: set[int] = set()


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free too, both below 32768."""
    for _ in range(500):
        port = _PORTS.randrange(20000, 22700)
        if port not in _HANDED and _free(port) and _free(port + 10000):
            _HANDED.add(port)  # the nodes of one cluster are picked before any starts
            return port
    raise AssertionError("no free loopback port pair for a cluster node")


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, timeout=10).stdout.strip()


def _wait(check, what: str, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s} s"
        time.sleep(0.05)


class Server:
    """One redis-server (or sentinel) process on a port, with its own directory."""

    def __init__(self, port: int, workdir: Path, *args: str, conf: str | None = None) -> None:
        self.port, self.dir, self.args, self.conf = port, workdir, args, conf
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = ["redis-server"]
        if self.conf is not None:  # sentinel: a config file it may rewrite
            path = self.dir / "sentinel.conf"
            if not path.exists():
                path.write_text(self.conf)
            argv.append(str(path))
        argv += ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                 *self.args]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: _cli(self.port, "ping") == "PONG", f"redis on {self.port} answering")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


class Cluster:
    """Three masters, no replicas: ``redis+cluster://`` URL with every node as a seed."""

    def __init__(self, nodes: int = 3) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="authgate-cluster-"))
        self.nodes: list[Server] = []
        for _ in range(nodes):
            port = free_cluster_port()
            self.nodes.append(Server(
                port, self.tmp / str(port), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "",
                "--appendonly", "no"))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes) + "/"

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        out = subprocess.run(
            ["redis-cli", "--cluster", "create",
             *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        self.wait_ok()

    def state(self, port: int) -> str:
        for line in _cli(port, "cluster", "info").splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return ""

    def wait_ok(self, timeout_s: float = 30.0) -> None:
        _wait(lambda: all(self.state(n.port) == "ok" for n in self.nodes if n.proc),
              "cluster_state ok", timeout_s)

    def flush(self) -> None:
        for node in self.nodes:
            _cli(node.port, "flushall")
            _cli(node.port, "script", "flush")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


class SentinelSetup:
    """One master and one sentinel watching it as ``mymaster`` (quorum 1); ``replica`` adds a
    replica so that a failover has somewhere to go."""

    MASTER = "mymaster"

    def __init__(self, with_replica: bool = False) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="authgate-sentinel-"))
        ports = [free_cluster_port() for _ in range(3)]
        self.master = Server(ports[0], self.tmp / "master", "--save", "", "--appendonly", "no")
        self.replica = Server(ports[1], self.tmp / "replica", "--save", "", "--appendonly", "no",
                              "--replicaof", "127.0.0.1", str(ports[0])) if with_replica else None
        conf = (f"sentinel monitor {self.MASTER} 127.0.0.1 {ports[0]} 1\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\n"
                f"sentinel failover-timeout {self.MASTER} 5000\n")
        self.sentinel = Server(ports[2], self.tmp / "sentinel", "--sentinel", conf=conf)

    def url(self, db: int = 0, master: str | None = None) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{master or self.MASTER}/{db}"

    def start(self) -> None:
        self.master.start()
        if self.replica is not None:
            self.replica.start()
            _wait(lambda: "master_link_status:up" in _cli(self.replica.port, "info",  # type: ignore[union-attr]
                                                            "replication"), "replica in sync")
        self.sentinel.start()
        _wait(lambda: _cli(self.sentinel.port, "sentinel", "get-master-addr-by-name",
                           self.MASTER) != "", "sentinel knows the master")

    def master_port(self) -> int:
        return int(_cli(self.sentinel.port, "sentinel", "get-master-addr-by-name",
                        self.MASTER).split()[-1])

    def flush(self) -> None:
        _cli(self.master_port(), "flushall")
        _cli(self.master_port(), "script", "flush")

    def stop(self) -> None:
        for s in (self.sentinel, self.replica, self.master):
            if s is not None:
                s.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- pytest fixtures (session-scoped: one cluster and one sentinel per run) --------------------

REDIS_URL = os.environ.get("AUTHGATE_TEST_REDIS", "redis://127.0.0.1:6379/9")
TOPOLOGIES = ["redis", "cluster", "sentinel"]  # the Redis kinds a shared-cache test runs on


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[Cluster]:
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[SentinelSetup]:
    setup = SentinelSetup()
    try:
        setup.start()
        yield setup
    finally:
        setup.stop()


async def flushed_url(request: pytest.FixtureRequest, kind: str) -> str:
    """The cache URL of a Redis of ``kind`` (see TOPOLOGIES), emptied (data and scripts)."""
    if kind == "cluster":
        cluster: Cluster = request.getfixturevalue("redis_cluster")
        cluster.wait_ok()
        cluster.flush()
        return cluster.url
    if kind == "sentinel":
        setup: SentinelSetup = request.getfixturevalue("redis_sentinel")
        setup.flush()
        return setup.url(db=int(REDIS_URL.rsplit("/", 1)[1] or 0))
    r = aioredis.from_url(REDIS_URL)
    await r.flushdb()
    await r.script_flush()
    await r.aclose()
    return REDIS_URL


def subscribers(ports: list[int], channel: str = "authgate:invalidate") -> int:
    total = 0
    for port in ports:
        out = _cli(port, "pubsub", "numsub", channel).split()
        total += int(out[1]) if len(out) == 2 else 0
    return total


async def wait_subscribed(request: pytest.FixtureRequest, kind: str, count: int) -> None:
    """Wait until ``count`` listeners are subscribed on a private topology (the shared Redis's
    channel is global and other runs use it too: there a short sleep has to do)."""
    if kind == "redis":
        await asyncio.sleep(0.05)
        return
    if kind == "cluster":
        ports = [n.port for n in request.getfixturevalue("redis_cluster").nodes if n.proc]
    else:
        ports = [request.getfixturevalue("redis_sentinel").master_port()]
    deadline = time.monotonic() + 10
    while subscribers(ports) < count:
        assert time.monotonic() < deadline, f"{count} listeners not subscribed within 10 s"
        await asyncio.sleep(0.02)

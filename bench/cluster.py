"""A private 3-node Redis Cluster for the benchmark's ``--cluster`` row (no replicas).

Each node also listens on its port + 10000 (the cluster bus): ports are picked with both free,
below the ephemeral range. The processes are started through the caller's ``launch`` so the
benchmark's cleanup stops them by PID like its other servers.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_pair() -> int:
    for _ in range(500):
        port = random.randrange(20000, 22700)
        if _free(port) and _free(port + 10000):
            return port
    raise RuntimeError("no free loopback port pair for a cluster node")


def own_cluster(tmp: Path, launch: Callable[[str, list[str]], subprocess.Popen[bytes]],
                nodes: int = 3) -> tuple[str, list[int]]:
    """Start and join the nodes; the ``redis+cluster://`` URL and the nodes' PIDs."""
    ports, pids = [], []
    for _ in range(nodes):
        port = _port_pair()
        workdir = tmp / f"cluster-{port}"
        workdir.mkdir()
        proc = launch(f"redis-cluster-{port}", [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--save", "", "--appendonly", "no"])
        ports.append(port)
        pids.append(proc.pid)
    for port in ports:
        deadline = time.monotonic() + 30
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError(f"cluster node {port} did not start")
            time.sleep(0.05)
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                    "--cluster-replicas", "0", "--cluster-yes"],
                   check=True, capture_output=True, timeout=60)
    deadline = time.monotonic() + 30
    while not all("cluster_state:ok" in subprocess.run(
            ["redis-cli", "-p", str(p), "cluster", "info"], capture_output=True,
            text=True).stdout for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("the benchmark's cluster did not become ok")
        time.sleep(0.1)
    return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports) + "/", pids

"""`authgate demo` prints a curl line that works when pasted."""

from __future__ import annotations

import os
import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import httpx


def three_free_ports() -> int:
    """A port with the next two free as well (the demo listens on port, port+1, port+2), taken
    below the ephemeral range so outgoing connections of other tests cannot grab them meanwhile."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 30000)
        try:
            for p in (port, port + 1, port + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise AssertionError("no three free ports in a row below the ephemeral range")


def test_demo_curl_line_works():
    port = three_free_ports()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = ""
        deadline = time.monotonic() + 30
        while "curl -s -H" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            line = proc.stdout.readline()
        args = shlex.split(line.strip())
        assert args[:3] == ["curl", "-s", "-H"]
        name, _, value = args[3].partition(": ")
        r = httpx.get(args[4], headers={name: value}, timeout=10)
        assert r.status_code == 200
        seen = {k.lower(): v for k, v in r.json()["headers"].items()}
        assert seen["x-auth-subject"] == "demo-user" and "authorization" not in seen
        assert httpx.get(args[4], timeout=10).status_code == 401
        assert re.fullmatch(r"Bearer agt_[0-9A-Za-z]{38}", value)
        while "Admin page:" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            line = proc.stdout.readline()
        page, admin = re.fullmatch(r"Admin page: (\S+)  sign in with: (\S+)", line.strip()).groups()
        assert "Content-Security-Policy" in httpx.get(page, timeout=10).headers
        r = httpx.get(page.replace("/admin", "/v1/stats"), timeout=10,
                      headers={"Authorization": f"Bearer {admin}"})
        assert r.status_code == 200 and r.json()["active"] == 2
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err

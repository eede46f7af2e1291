"""In-process cost of the gateway's hot path (no sockets): microseconds per request.

    python bench/hot_path_micro.py                  # this checkout
    python bench/hot_path_micro.py --src /tmp/main  # another checkout's gateway/ (e.g. main,
                                                    # from `git archive main | tar -x -C /tmp/main`)

Rows: the proxy app (SQLite + memory, a stand-in forwarder answering 200) with the access log
off and on (on: lines queued, not written), the writer thread's cost per line (``format_line``
and the batched write to /dev/null), ``format_line`` alone on a typical line, and the hot-path
metrics of one request (outcome counter + the two latency histograms): CPU time of the
thread, so other processes on the box count less than in elapsed time. Each row is the minimum
of ``--repeat`` runs of ``--n`` iterations (a VM is noisy: compare two checkouts in one session,
never figures from different days).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# CPU time of this thread, not elapsed time: other processes on a shared box do not count
# (every row runs on this thread; the access log's writer is called here, not in its thread).
cpu = time.thread_time


class StandInForwarder:
    """Answers 200 with the headers the proxy asked to add (as tests/unit/test_refusals.py)."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def forward(self, scope: Any, receive: Any, send: Any, decision: Any,
                      extra: list[tuple[bytes, bytes]], request_id: bytes) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": extra})
        await send({"type": "http.response.body", "body": b"upstream"})


def best(runs: list[float]) -> str:
    return f"{min(runs):8.2f} us   (runs: {', '.join(f'{r:.2f}' for r in runs)})"


async def main(args: argparse.Namespace) -> None:
    import gateway
    from gateway.access_log import AccessLog, format_line
    from gateway.app import Gateway
    from gateway.authority import Actor
    from gateway.config import Settings
    from gateway.services import Services
    print(f"gateway from {Path(gateway.__file__).parent}")
    tmp = tempfile.mkdtemp(prefix="authgate-micro-")
    settings = Settings(store=f"sqlite:///{tmp}/micro.db", pepper="bench",
                        upstream="http://127.0.0.1:1")
    services = await Services.open(settings)
    gw = Gateway(services, StandInForwarder())  # type: ignore[arg-type]
    _, secret = await services.authority.create(Actor("b"), subject="bench", name="bench",
                                                scopes=["read"], rate_limit="1000000000/minute")
    headers = [(b"host", b"127.0.0.1:8080"), (b"authorization", b"Bearer " + secret.encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
             "scheme": "http", "path": "/bench", "raw_path": b"/bench", "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 40000),
             "server": ("127.0.0.1", 8080)}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    app = gw.proxy_app
    pipeline = services.pipeline
    devnull = os.open(os.devnull, os.O_WRONLY)
    log = AccessLog(services.metrics, fd=devnull)  # no thread: lines stay queued
    gc.collect()
    gc.freeze()  # as `serve` does
    gc.set_threshold(7000, 20, 20)

    async def timed(fn: Callable[[], Awaitable[Any]], n: int) -> float:
        for _ in range(500):
            await fn()
        log._pending.clear()
        started = cpu()
        for _ in range(n):
            await fn()
        return (cpu() - started) / n * 1e6

    def timed_sync(fn: Callable[[], Any], n: int) -> float:
        for _ in range(500):
            fn()
        started = cpu()
        for _ in range(n):
            fn()
        return (cpu() - started) / n * 1e6

    n, lines = args.n, min(args.n, 15_000)  # the log's buffer drops past MAX_PENDING
    rows: dict[str, list[float]] = {k: [] for k in (
        "proxy_app, log off", "proxy_app, log on (queued)", "writer: format + write per line",
        "format_line, typical line", "metrics of one request")}
    metrics = services.metrics
    typical = (1_700_000_000.25, b"0f1e2d3c4b5a69788796a5b4c3d2e1f0", "10.0.0.1", "GET",
               b"/api/v1/items/12345", 200, "ok", "/api/*", "alice@example.com",
               "tok_5fYh2kQm9vXc", 0.0123456, 0.0201234, 0, 512)

    def observe() -> None:
        metrics.outcome["ok"].inc()
        metrics.request_seconds.observe(0.0011)
        metrics.upstream_seconds.observe(0.0009)

    for _ in range(args.repeat):
        pipeline.access_log = None
        rows["proxy_app, log off"].append(await timed(lambda: app(scope, receive, send), n))
        pipeline.access_log = log
        rows["proxy_app, log on (queued)"].append(
            await timed(lambda: app(scope, receive, send), lines))
        queued = len(log._pending)
        started = cpu()
        log._flush()
        rows["writer: format + write per line"].append(
            (cpu() - started) / queued * 1e6)
        pipeline.access_log = None
        rows["format_line, typical line"].append(timed_sync(lambda: format_line(typical), n))
        rows["metrics of one request"].append(timed_sync(observe, n))
    for label, runs in rows.items():
        print(f"{label:34s} {best(runs)}")
    on_loop = min(rows["proxy_app, log on (queued)"]) - min(rows["proxy_app, log off"])
    print(f"{'access log on the loop (on - off)':34s} {on_loop:8.2f} us")
    print(f"{'store lookups (token cached: ~1)':34s} "
          f"{services.metrics.registry.get_sample_value('authgate_store_lookups_total'):8.0f}")
    os.close(devnull)
    await services.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT,
                        help="the checkout whose gateway/ to time")
    parser.add_argument("--n", type=int, default=20_000, help="iterations per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row (the minimum is shown)")
    parsed = parser.parse_args()
    sys.path.insert(0, str(parsed.src.resolve()))
    asyncio.run(main(parsed))

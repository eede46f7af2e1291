"""A/B of the access log and hot-path metrics in one process, tightly interleaved: another
checkout's gateway/access_log.py and gateway/metrics.py against this one's.

    git archive main gateway | tar -x -C /tmp/main
    python bench/hot_path_ab.py --base /tmp/main

Why: on a shared VM the machine's speed drifts by 1.5x from minute to minute, so two runs of
bench/hot_path_micro.py can mislead by more than the change measured. Here both versions run
in alternating rounds of ``--n`` iterations (CPU time of the thread), and the minimum over
``--rounds`` is shown. Rows: the loop's share of the log per request (``Entry``, its ``send``
twice, ``forwarding``, ``record``) over a bare pair of sends; the writer per line
(``_flush`` of real-looking lines to /dev/null); the metrics of one request.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
cpu = time.thread_time


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class _Record:
    subject = "alice@example.com"
    id = "tok_5fYh2kQm9vXc"


class _Route:
    pattern = "/api/*"


class _Decision:
    record = _Record()
    route = _Route()


SCOPE = {"method": "GET", "path": "/api/v1/items/12345", "raw_path": b"/api/v1/items/12345"}
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"x" * 512}
LINE = (1_700_000_000.25, b"0f1e2d3c4b5a69788796a5b4c3d2e1f0", "10.0.0.1", "GET",
        b"/api/v1/items/12345", 200, "ok", "/api/*", "alice@example.com", "tok_5fYh2kQm9vXc",
        0.0123456, 0.0201234, 0, 512)


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    pass


def on_the_loop(module: ModuleType) -> Callable[[int], Awaitable[None]]:
    log, entry_of, clock = module.AccessLog(), module.Entry, time.perf_counter
    decision = _Decision()

    async def run(n: int) -> None:
        for _ in range(n):
            entry = entry_of(log, SCOPE, receive, send, clock(), b"rid")
            entry.forwarding(decision)
            await entry.send(START)
            await entry.send(BODY)
            log.record(entry, "ok", "127.0.0.1")
        log._pending.clear()
    return run


async def bare(n: int) -> None:
    for _ in range(n):
        await send(START)
        await send(BODY)


def writer(module: ModuleType, fd: int, n: int) -> Callable[[int], None]:
    log = module.AccessLog(fd=fd)
    lines = [(LINE[0] + i * 2e-5, *LINE[1:]) for i in range(n)]  # 50,000 requests a second

    def run(count: int) -> None:
        log._pending.extend(lines[:count])
        log._flush()
    return run


def metrics(module: ModuleType) -> Callable[[int], None]:
    m = module.Metrics()
    outcome, request, upstream = m.outcome["ok"], m.request_seconds, m.upstream_seconds

    def run(n: int) -> None:
        for _ in range(n):
            outcome.inc()
            request.observe(0.0011)
            upstream.observe(0.0009)
    return run


async def main(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    base_log = load("base_access_log", args.base / "gateway" / "access_log.py")
    base_metrics = load("base_metrics", args.base / "gateway" / "metrics.py")
    import gateway.access_log as this_log
    import gateway.metrics as this_metrics
    n = args.n
    fd = os.open(os.devnull, os.O_WRONLY)
    loop_rows = {"base": on_the_loop(base_log), "this": on_the_loop(this_log)}
    sync_rows = {"writer per line, base": writer(base_log, fd, n),
                 "writer per line, this": writer(this_log, fd, n),
                 "metrics per request, base": metrics(base_metrics),
                 "metrics per request, this": metrics(this_metrics)}
    runs: dict[str, list[float]] = {"bare sends": []}
    runs.update({f"log on the loop, {k}": [] for k in loop_rows})
    runs.update({k: [] for k in sync_rows})
    for i in range(args.rounds):
        started = cpu()
        await bare(n)
        runs["bare sends"].append((cpu() - started) / n * 1e6)
        for key, run in (list(loop_rows.items())[::1 if i % 2 else -1]):
            started = cpu()
            await run(n)
            runs[f"log on the loop, {key}"].append((cpu() - started) / n * 1e6)
        for key, fn in (list(sync_rows.items())[::1 if i % 2 else -1]):
            started = cpu()
            fn(n)
            runs[key].append((cpu() - started) / n * 1e6)
    os.close(fd)
    bare_us = min(runs.pop("bare sends"))
    for label, values in runs.items():
        extra = bare_us if "loop" in label else 0.0  # the loop rows: over a bare pair of sends
        print(f"{label:28s} {min(values) - extra:6.2f} us   (median "
              f"{sorted(values)[len(values) // 2] - extra:.2f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True,
                        help="the checkout to compare with (its gateway/ is read)")
    parser.add_argument("--n", type=int, default=2000, help="iterations per round")
    parser.add_argument("--rounds", type=int, default=60, help="alternating rounds")
    asyncio.run(main(parser.parse_args()))

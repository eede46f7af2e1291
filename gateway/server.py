"""Runs both listeners in one process under uvicorn (uvloop + httptools).

SIGTERM/SIGINT: both servers stop accepting, in-flight requests finish (bounded by
``GRACEFUL_S``), then usage is flushed and everything closed; exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Iterator

import uvicorn

from gateway.app import Gateway
from gateway.config import Settings, split_hostport

GRACEFUL_S = 10
log = logging.getLogger("authgate")


class _Server(uvicorn.Server):
    """uvicorn's server without its own signal capture: we stop both servers together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app, listen: str, loop: str) -> uvicorn.Config:  # type: ignore[no-untyped-def]
    host, port = split_hostport(listen)
    return uvicorn.Config(app, host=host, port=port, lifespan="off", loop=loop, interface="asgi3",
                          http="httptools", log_level="warning", access_log=False,
                          timeout_graceful_shutdown=GRACEFUL_S, server_header=False,
                          # The client address is the peer's: a client must not choose its IP
                          # (per-IP limits, X-Forwarded-For) by sending X-Forwarded-For itself.
                          proxy_headers=False,
                          date_header=False)


async def serve(settings: Settings, ready: Callable[[Gateway], Awaitable[None]] | None = None,
                loop: str = "uvloop", shutdown: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``shutdown`` is set, for callers that embed it)."""
    gateway = await Gateway.start(settings)
    # Everything built so far lives as long as the process: keep it out of the collector's
    # scans, and collect the young generation less often (fewer pauses on the hot path).
    gc.collect()
    gc.freeze()
    gc.set_threshold(7000, 20, 20)
    servers = [_Server(_config(gateway.proxy_app, settings.listen, loop)),
               _Server(_config(gateway.admin_app(), settings.admin_listen, loop))]

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop)
    watcher = asyncio.create_task(shutdown.wait()) if shutdown else None
    if watcher is not None:
        watcher.add_done_callback(lambda _: stop())
    try:
        tasks = [asyncio.create_task(s.serve()) for s in servers]
        while not all(s.started for s in servers):
            if any(t.done() for t in tasks):  # a listener failed to bind
                stop()
                break
            await asyncio.sleep(0.02)
        else:
            log.warning("authgate proxy on %s, admin on %s", settings.listen,
                        settings.admin_listen)
            if ready is not None:
                await ready(gateway)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        if watcher is not None:
            watcher.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            running.remove_signal_handler(sig)
        await gateway.stop()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed or not all(s.started for s in servers):
        raise SystemExit(1)


def run(settings: Settings, ready: Callable[[Gateway], Awaitable[None]] | None = None) -> None:
    import uvloop

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, ready))

"""``authgate serve --workers N`` (SPEC §3): N processes, each a full gateway, on the same
listeners.

The parent binds the proxy and admin sockets once and forks the workers, which inherit them and
accept from the same queues (as gunicorn and uvicorn's own ``--workers`` do). Chosen over
SO_REUSEPORT, where each worker binds its own socket and the kernel spreads connections
across them, because:

- a bind error (port taken, bad address) is reported once, by the parent, before any worker
  starts, and ``serve`` exits 1;
- the listening sockets outlive any worker: connections that arrive while a worker restarts wait
  in the shared queue and are served by the others, where a SO_REUSEPORT socket that closes
  drops (resets) the connections queued on it;
- no other process can join the port's group and take a share of the traffic.

The cost: the kernel does not balance connections among workers that accept from one queue (a
busy worker accepts less often; long-lived keep-alive connections stay where they landed).

The parent runs no event loop and serves nothing: it forwards signals and watches the workers.

- SIGTERM / SIGINT: every worker gets SIGTERM, stops accepting, finishes in-flight requests,
  flushes its usage and events, and exits; the parent exits 0 when all did (1 if one had to be
  killed after ``STOP_TIMEOUT_S`` or exited non-zero).
- SIGHUP: the parent reads the config (an invalid file: one log line, nothing signalled, the
  running config stays) and, when valid, sends SIGHUP to every worker, which reloads
  (gateway.reload). A worker restarted later starts on the reloaded config.
- The parent killed (SIGKILL): each worker notices within ``ORPHAN_CHECK_S`` and stops as on
  SIGTERM.
- A worker that dies while serving is restarted (one log line with its exit status). More than
  ``MAX_RESTARTS`` restarts within ``RESTART_WINDOW_S`` (a crash loop), or a worker that dies
  before it ever served (a start-up failure: the store unreachable, ...), stops every worker and
  ``serve`` exits 1.

Background work that must run once per deployment, not once per process (the alerts watcher) is
leader-elected with a lease in the store, so N workers on one host are N candidates and one
leader, as N replicas are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import uvloop

from gateway import reload as reloading
from gateway.app import Gateway
from gateway.config import Settings, split_hostport
from gateway.server import GRACEFUL_S, serve

log = logging.getLogger("authgate")

BACKLOG = 2048
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = GRACEFUL_S + 20.0  # in-flight requests, then the usage flush and closing
ORPHAN_CHECK_S = 1.0  # how often a worker checks that its parent still runs
MEMORY_WARNING = ("workers: cache is memory://, so rate limits and token caches are per process "
                  "(each of the {n} workers admits its own share; use redis:// to share them)")


@dataclass
class _Worker:
    index: int
    pid: int
    ready_fd: int  # read end of the pipe the worker writes one byte to once it serves
    ready: bool = False
    reload_pending: bool = False  # a SIGHUP came before it served: sent once it does


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on ``listen`` (HOST:PORT), inheritable by the workers."""
    host, port = split_hostport(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=BACKLOG)
    sock.set_inheritable(True)
    return sock


class Supervisor:
    def __init__(self, settings: Settings, load: Callable[[], Settings] | None) -> None:
        self.settings = settings
        self.load = load
        self.workers: dict[int, _Worker] = {}  # pid -> worker
        self.sockets: tuple[socket.socket, socket.socket] | None = None
        self.restarts: list[float] = []
        self.status = 0
        self._stop_requested = False
        self._reload_requested = False
        self._announced = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)

    # --- signals ------------------------------------------------------------------------------

    def _on_stop(self, signum: int, frame: object) -> None:
        self._stop_requested = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload_requested = True

    def _install(self) -> None:
        signal.set_wakeup_fd(self._wake_w)  # a signal wakes the select() below at once
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the loop to reap at once

    # --- workers -----------------------------------------------------------------------------

    def spawn(self, index: int) -> None:
        assert self.sockets is not None
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the parent's code
            os.close(ready_r)
            self._child(ready_w)
        os.close(ready_w)
        self.workers[pid] = _Worker(index, pid, ready_r)

    def _child(self, ready_w: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # A SIGHUP before the worker's loop handles it must not end it (the default
            # action); the parent re-sends one once the worker serves.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            os.close(self._wake_r)
            os.close(self._wake_w)
            for fd in [w.ready_fd for w in self.workers.values()]:
                os.close(fd)

            async def ready(gateway: Gateway) -> None:
                os.write(ready_w, b"1")
                os.close(ready_w)

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self._worker(ready))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException as e:  # one line, no traceback (SPEC §5)
            log.error("worker %d failed: %s", os.getpid(), type(e).__name__)
        finally:
            logging.shutdown()
            os._exit(code)

    async def _worker(self, ready: Callable[[Gateway], Awaitable[None]]) -> None:
        """A worker's gateway; it stops by itself (gracefully) if the parent is gone (killed
        with SIGKILL: nobody would forward signals or restart it any more)."""
        parent = os.getppid()
        shutdown = asyncio.Event()
        loop = asyncio.get_running_loop()
        timer: list[asyncio.TimerHandle] = []

        def check() -> None:
            if os.getppid() == parent:
                timer[:] = [loop.call_later(ORPHAN_CHECK_S, check)]
                return
            log.error("worker %d: the serve process is gone, stopping", os.getpid())
            shutdown.set()

        check()
        try:
            await serve(self.settings, ready, shutdown=shutdown, sockets=self.sockets,
                        reload=self.load, announce=False)
        finally:
            for handle in timer:
                handle.cancel()

    def signal_all(self, sig: int) -> None:
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def _reap(self, stopping: bool) -> bool:
        """Collect exited workers; restart those that died while serving. False when
        ``serve`` must stop (a start-up failure or a crash loop)."""
        ok = True
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            os.close(worker.ready_fd)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                # A worker still starting when the stop came may die of the SIGTERM itself
                # (its handlers not yet installed): it served nothing, so nothing was lost.
                if code != 0 and not (code == -signal.SIGTERM and not worker.ready):
                    self.status = 1
                continue
            how = f"exit status {code}" if code >= 0 else f"signal {-code}"
            if not worker.ready:
                log.error("worker %d exited (%s) before serving: stopping", pid, how)
                self.status = 1
                ok = False
                continue
            now = time.monotonic()
            self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
            if len(self.restarts) > MAX_RESTARTS:
                log.error("worker %d exited (%s): more than %d restarts in %g s, stopping",
                          pid, how, MAX_RESTARTS, RESTART_WINDOW_S)
                self.status = 1
                ok = False
                continue
            log.error("worker %d exited (%s): restarting it", pid, how)
            self.spawn(worker.index)
        return ok

    def _read_ready(self, fds: list[int]) -> None:
        by_fd = {w.ready_fd: w for w in self.workers.values()}
        for fd in fds:
            worker = by_fd.get(fd)
            if worker is None or worker.ready:
                continue
            try:
                data = os.read(fd, 1)
            except OSError:
                data = b""
            if data:
                worker.ready = True
                if worker.reload_pending:
                    worker.reload_pending = False
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGHUP)
        if not self._announced and self.workers and all(w.ready for w in self.workers.values()):
            self._announced = True
            log.warning("authgate proxy on %s, admin on %s, %d workers", self.settings.listen,
                        self.settings.admin_listen, len(self.workers))

    def _reload(self) -> None:
        if self.load is None:
            return
        new = reloading.read(self.load, self.settings)
        if new is None:
            return
        self.settings = reloading.merged(self.settings, new)  # what restarted workers start on
        for worker in self.workers.values():
            if worker.ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGHUP)
            else:
                worker.reload_pending = True

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.sockets = (bind(self.settings.listen), bind(self.settings.admin_listen))
        except OSError as e:
            log.error("listen: cannot bind %s / %s (%s)", self.settings.listen,
                      self.settings.admin_listen, e.strerror)
            return 1
        if self.settings.cache == "memory://":
            log.warning(MEMORY_WARNING.format(n=self.settings.workers))
        self._install()
        for index in range(self.settings.workers):
            self.spawn(index)
        deadline: float | None = None
        while self.workers:
            fds = [self._wake_r] + [w.ready_fd for w in self.workers.values() if not w.ready]
            readable, _, _ = select.select(fds, [], [], 1.0)
            if self._wake_r in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 512)
            self._read_ready([fd for fd in readable if fd != self._wake_r])
            stopping = deadline is not None
            if not self._reap(stopping) and not stopping:
                self._stop_requested = True
            if self._stop_requested and deadline is None:
                deadline = time.monotonic() + STOP_TIMEOUT_S
                self.signal_all(signal.SIGTERM)
            elif deadline is not None and time.monotonic() > deadline:
                log.error("workers %s did not stop within %g s: killed",
                          sorted(self.workers), STOP_TIMEOUT_S)
                self.signal_all(signal.SIGKILL)
                self.status = 1
                deadline = float("inf")
            if self._reload_requested and deadline is None:
                self._reload_requested = False
                self._reload()
        for sock in self.sockets:
            sock.close()
        return self.status


def supervise(settings: Settings, load: Callable[[], Settings] | None) -> int:
    """Run ``settings.workers`` worker processes until SIGTERM; the exit status of ``serve``."""
    return Supervisor(settings, load).run()

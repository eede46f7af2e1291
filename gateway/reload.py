"""Live reload on SIGHUP (SPEC §3 Reload): read the config file again and apply what may change.

    RELOADABLE               the keys a reload changes: routes, roles, the limits, trusted
                             proxies, alerts, the access log
    merged(running, new)     the running settings with the reloadable keys taken from ``new``
    ignored(running, new)    the other keys ``new`` changes (named in the log, never applied)
    Reloads(gateway, load)   a serving process's SIGHUP handler: one reload at a time

The listeners, store, cache, pepper and every other key are read once at start: a change to them
in the file is logged by name ("ignored until a restart") and nothing else happens. An invalid
file is refused with one log line naming the key, and the running config keeps serving. A request
in flight finishes on the config it started with; the next one sees the new config. Route rate
limits are kept by the route's position in the list (reordering routes hands one route's counters
to another, for at most one window).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from gateway.config import Settings
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("authgate")

# ``alerts`` counts only where the settings know it (the monitoring branch adds the key).
RELOADABLE = ("routes", "roles", "default_rate_limit", "failed_auth_limit", "trusted_proxies",
              "alerts", "access_log")


def merged(running: Settings, new: Settings) -> Settings:
    """``running`` with every reloadable key taken from ``new`` (both already validated)."""
    return running.model_copy(update={
        key: getattr(new, key) for key in RELOADABLE if key in Settings.model_fields})


def ignored(running: Settings, new: Settings) -> list[str]:
    """The keys ``new`` changes that a reload does not apply (names only: values may be
    secrets, e.g. a store URL's password or the pepper)."""
    return [key for key in Settings.model_fields
            if key not in RELOADABLE and getattr(running, key) != getattr(new, key)]


def read(load: Callable[[], Settings], running: Settings) -> Settings | None:
    """Read the config (``load``); log one line and return None when it is invalid, else the
    settings to run with. Blocking (it reads a file): call it off the event loop."""
    try:
        new = load()
    except ConfigError as e:
        log.error("reload refused, the running config stays (pid %d): %s", os.getpid(), e)
        return None
    changed = ignored(running, new)
    if changed:
        log.warning("reload: %s changed in the config but only take(s) effect on a restart "
                    "(ignored)", ", ".join(changed))
    return new


class Reloads:
    """SIGHUP in a serving process: read the config off the loop, then ``Gateway.reload``. A
    SIGHUP during a reload is not lost: one more reload follows it."""

    def __init__(self, gateway: Gateway, load: Callable[[], Settings] | None) -> None:
        self._gateway = gateway
        self._load = load
        self._wanted = False
        self._task: asyncio.Task[None] | None = None
        self.done = 0  # reloads applied (tests)

    def request(self) -> None:
        self._wanted = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        load = self._load
        assert load is not None
        while self._wanted:
            self._wanted = False
            try:
                new = await asyncio.to_thread(read, load, self._gateway.settings)
                if new is not None:
                    await self._gateway.reload(new)
                    self.done += 1
                    log.warning("config reloaded (pid %d)", os.getpid())
            except Exception as e:  # never let a reload take the process down
                log.error("reload failed, the running config stays (%s)", type(e).__name__)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

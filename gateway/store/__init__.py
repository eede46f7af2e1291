"""Token stores, picked by URL scheme from one table (as uvicorn picks its loop by name).

Each driver module (and so its database library: aiosqlite, asyncpg) is imported only when its
scheme is chosen.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.store.base import (
    STATUSES,
    Event,
    EventFilter,
    LegacyImport,
    LegacyStore,
    Revoked,
    Stats,
    Status,
    Suspension,
    TokenFilter,
    TokenRecord,
    TokenStore,
    Usage,
)
from gateway.store.sql import Driver, SqlStore


def _sqlite(url: str) -> Driver:
    from gateway.store.sqlite import SqliteDriver

    return SqliteDriver(url)


def _postgres(url: str) -> Driver:
    from gateway.store.postgres import PostgresDriver

    return PostgresDriver(url)


DRIVERS: dict[str, Callable[[str], Driver]] = {
    "sqlite": _sqlite,
    "postgresql": _postgres,
    "postgres": _postgres,
}


def make_store(url: str) -> SqlStore:
    """Build (not open) the store for ``url``."""
    scheme = url.split("://", 1)[0]
    try:
        return SqlStore(DRIVERS[scheme](url))
    except KeyError:
        raise ValueError(f"unsupported store URL scheme {scheme!r}") from None


async def open_store(url: str) -> SqlStore:
    """Open the store; embedded SQLite migrates itself (PostgreSQL: `authgate migrate`)."""
    store = make_store(url)
    await store.open()
    try:
        if store.dialect == "sqlite":
            await store.migrate()
    except BaseException:
        await store.close()
        raise
    return store


__all__ = [
    "STATUSES",
    "Event",
    "EventFilter",
    "LegacyImport",
    "LegacyStore",
    "Revoked",
    "SqlStore",
    "Stats",
    "Status",
    "Suspension",
    "TokenFilter",
    "TokenRecord",
    "TokenStore",
    "Usage",
    "make_store",
    "open_store",
]

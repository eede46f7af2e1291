"""Token stores, picked by URL scheme from one table (as uvicorn picks its loop by name)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.store.base import (
    STATUSES,
    Event,
    EventFilter,
    Revoked,
    Stats,
    Status,
    TokenFilter,
    TokenRecord,
    TokenStore,
    Usage,
)
from gateway.store.postgres import PostgresDriver
from gateway.store.sql import Driver, SqlStore
from gateway.store.sqlite import SqliteDriver

DRIVERS: dict[str, Callable[[str], Driver]] = {
    "sqlite": SqliteDriver,
    "postgresql": PostgresDriver,
    "postgres": PostgresDriver,
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
    "Revoked",
    "SqlStore",
    "Stats",
    "Status",
    "TokenFilter",
    "TokenRecord",
    "TokenStore",
    "Usage",
    "make_store",
    "open_store",
]

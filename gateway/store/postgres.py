"""PostgreSQL driver (asyncpg, pooled). asyncpg errors become StoreUnavailable here, only here."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from gateway.errors import StoreUnavailable
from gateway.store.sql import Row

_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except asyncpg.UndefinedTableError as e:
        raise StoreUnavailable("the store has no schema yet: run `authgate migrate`") from e
    except _UNAVAILABLE as e:
        raise StoreUnavailable(f"PostgreSQL unavailable: {type(e).__name__}") from e


def _rowcount(status: str) -> int:
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class _Conn:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with _translated():
            rows: list[Row] = await self._conn.fetch(sql, *args)  # asyncpg.Record
            return rows

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with _translated():
            row: Row | None = await self._conn.fetchrow(sql, *args)
            return row

    async def execute(self, sql: str, *args: Any) -> int:
        async with _translated():
            return _rowcount(await self._conn.execute(sql, *args))

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with _translated():
            await self._conn.executemany(sql, rows)

    async def script(self, sql: str) -> None:
        async with _translated():
            await self._conn.execute(sql)  # no args: simple protocol, many statements


class PostgresDriver:
    dialect = "postgresql"
    # Replicas starting together must not migrate at once.
    migration_lock: str | None = "SELECT pg_advisory_xact_lock(727465)"

    def __init__(self, url: str, min_size: int = 1, max_size: int = 10) -> None:
        self._url = url
        self._sizes = (min_size, max_size)
        self._pool: asyncpg.Pool | None = None

    @staticmethod
    async def _init_conn(conn: asyncpg.Connection) -> None:
        await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")

    async def open(self) -> None:
        async with _translated():
            self._pool = await asyncpg.create_pool(
                self._url, min_size=self._sizes[0], max_size=self._sizes[1],
                init=self._init_conn, command_timeout=10, timeout=5)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreUnavailable("store is not open")
        return self._pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Conn]:
        async with _translated(), self.pool.acquire() as conn, conn.transaction():
            yield _Conn(conn)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[_Conn]:
        async with _translated(), self.pool.acquire() as conn:
            yield _Conn(conn)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with self._conn() as c:
            return await c.fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        async with self._conn() as c:
            return await c.fetchrow(sql, *args)

"""SQLite driver (aiosqlite): the embedded default. sqlite3 runs in aiosqlite's own thread, so the
event loop never blocks on disk.

One writer connection serialised by an asyncio lock (a transaction holds it across awaits, so no
other coroutine's statement can slip into it) and one reader connection; WAL lets them overlap.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import aiosqlite

from gateway.errors import StoreUnavailable
from gateway.store.sql import Row


@lru_cache(maxsize=256)
def _sql(text: str) -> str:
    """$1..$n -> ?1..?n (SQLite's numbered parameters)."""
    return re.sub(r"\$(\d+)", r"?\1", text)


def _param(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).isoformat(timespec="microseconds")
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, dict | list | tuple):
        return json.dumps(v)
    return v


def _params(args: Sequence[Any]) -> list[Any]:
    return [_param(a) for a in args]


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    try:
        yield
    except (sqlite3.OperationalError, ValueError) as e:  # ValueError: connection closed
        raise StoreUnavailable(f"SQLite unavailable: {e}") from e


class _Conn:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        async with _translated():
            return list(await self._db.execute_fetchall(_sql(sql), _params(args)))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def execute(self, sql: str, *args: Any) -> int:
        async with _translated():
            async with self._db.execute(_sql(sql), _params(args)) as cur:
                return cur.rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        async with _translated():
            await self._db.executemany(_sql(sql), [_params(r) for r in rows])

    async def script(self, sql: str) -> None:
        # executescript() would COMMIT first; run statement by statement inside our transaction.
        body = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
        for statement in filter(None, (s.strip() for s in body.split(";"))):
            await self.execute(statement)


class SqliteDriver:
    dialect = "sqlite"
    migration_lock: str | None = None  # BEGIN IMMEDIATE already serialises writers

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("sqlite:///")
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> aiosqlite.Connection:
        folder = os.path.dirname(self.path) or "."
        if not os.path.isdir(folder):  # noqa: ASYNC240 - one stat, once, at start
            raise StoreUnavailable(f"SQLite unavailable: directory {folder} does not exist")
        try:
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except sqlite3.Error:
            # aiosqlite stops its worker thread without waiting; let it finish while this
            # event loop still runs, or it reports to a closed loop later.
            await asyncio.sleep(0.05)
            raise
        db.row_factory = sqlite3.Row
        # execute_fetchall finalises each statement, so no pragma holds a lock afterwards.
        await db.execute_fetchall("PRAGMA busy_timeout = 5000")
        await db.execute_fetchall("PRAGMA synchronous = NORMAL")
        return db

    async def open(self) -> None:
        try:
            async with _translated():
                self._writer = await self._connect()
                await self._writer.execute_fetchall("PRAGMA journal_mode = WAL")
                self._reader = await self._connect()
        except BaseException:
            await self.close()  # aiosqlite's threads would otherwise keep the process alive
            raise

    async def close(self) -> None:
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    def _db(self, db: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if db is None:
            raise StoreUnavailable("store is not open")
        return db

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Conn]:
        async with self._lock:
            db = self._db(self._writer)
            conn = _Conn(db)
            await conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await db.execute_fetchall("ROLLBACK")
                raise
            await conn.execute("COMMIT")

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await _Conn(self._db(self._reader)).fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await _Conn(self._db(self._reader)).fetchrow(sql, *args)

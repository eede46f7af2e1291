"""Laravel Sanctum's ``personal_access_tokens`` table, read from MySQL/MariaDB, PostgreSQL or
SQLite (SPEC §10). Each database library is imported only when its scheme is used.

Sanctum stores SHA-256(secret) in ``token`` and hands out ``ID|SECRET``; the gateway later finds
the record by ``sanctum:ID:SHA256(SECRET)`` (gateway/imports/legacy.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from gateway.imports.sources import (
    HEX64,
    SourceError,
    check_scopes,
    parse_time,
    record,
    sanctum_key,
)
from gateway.store import LegacyImport

COLUMNS = ("id", "tokenable_type", "tokenable_id", "name", "token", "abilities",
           "last_used_at", "expires_at", "created_at")
# Sanctum 2 tables have no expires_at; tokenable_type only matters with --qualified-subject.
OPTIONAL = ("expires_at", "tokenable_type")
TABLE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})?")
SCHEMES = ("mysql", "mariadb", "postgresql", "postgres", "sqlite")
TIMEOUT_S = 10

Rows = tuple[list[str], list[dict[str, Any]]]  # the table's columns; the wanted columns' rows


def describe(url: str) -> str:
    """The source without its password, for messages and the audit event."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _quoted(table: str, quote: str) -> str:
    return ".".join(f"{quote}{part}{quote}" for part in table.split("."))


async def _mysql(url: str, table: str, wanted: tuple[str, ...],
                 optional: tuple[str, ...]) -> Rows:
    import asyncmy  # only when a mysql:// source is used

    parts = urlsplit(url)
    try:
        conn = await asyncio.wait_for(asyncmy.connect(
            host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
            user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
            db=parts.path.lstrip("/") or None, connect_timeout=TIMEOUT_S), TIMEOUT_S)
    except Exception as e:
        raise SourceError(f"cannot connect to {describe(url)}: {_reason(e)}") from None
    try:
        async with conn.cursor() as cur:
            name = _quoted(table, "`")
            await cur.execute(f"SELECT * FROM {name} WHERE 1 = 0")  # noqa: S608 - TABLE_RE
            columns = [d[0] for d in cur.description or ()]
            await cur.execute(_select(columns, wanted, optional, name, "`"))
            names = [d[0] for d in cur.description or ()]
            rows = [dict(zip(names, r, strict=True)) for r in await cur.fetchall()]
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"cannot read table {table}: {_reason(e)}") from None
    finally:
        conn.close()
    return columns, rows


async def _postgres(url: str, table: str, wanted: tuple[str, ...],
                 optional: tuple[str, ...]) -> Rows:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=TIMEOUT_S)
    except Exception as e:
        raise SourceError(f"cannot connect to {describe(url)}: {_reason(e)}") from None
    try:
        name = _quoted(table, '"')
        stmt = await conn.prepare(f"SELECT * FROM {name} WHERE 1 = 0")  # noqa: S608
        columns = [a.name for a in stmt.get_attributes()]
        found = await conn.fetch(_select(columns, wanted, optional, name, '"'))
        rows = [dict(r.items()) for r in found]
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(f"cannot read table {table}: {_reason(e)}") from None
    finally:
        await conn.close()
    return columns, rows


def _sqlite_read(path: str, table: str, wanted: tuple[str, ...],
                 optional: tuple[str, ...]) -> Rows:
    try:  # read-only: a mistyped path must not create an empty database
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open sqlite:///{path}: {e}") from None
    try:
        name = _quoted(table, '"')
        cur = conn.execute(f"SELECT * FROM {name} WHERE 1 = 0")  # noqa: S608
        columns = [d[0] for d in cur.description]
        cur = conn.execute(_select(columns, wanted, optional, name, '"'))
        names = [d[0] for d in cur.description]
        return columns, [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    except sqlite3.Error as e:
        raise SourceError(f"cannot read table {table}: {e}") from None
    finally:
        conn.close()


async def _sqlite(url: str, table: str, wanted: tuple[str, ...],
                  optional: tuple[str, ...]) -> Rows:
    return await asyncio.to_thread(_sqlite_read, url.removeprefix("sqlite:///"), table, wanted,
                                   optional)


def _select(columns: list[str], wanted: tuple[str, ...], optional: tuple[str, ...], name: str,
            quote: str) -> str:
    """The query for the wanted columns, or SourceError naming the first missing one."""
    lower = {c.lower() for c in columns}
    for column in wanted:
        if column.lower() not in lower and column not in optional:
            raise SourceError(f"table {name.replace(quote, '')} has no column {column!r} "
                              "(expected Laravel Sanctum's personal_access_tokens schema)")
    present = [c for c in wanted if c.lower() in lower]
    # the table name matched TABLE_RE and is quoted; the columns are our own constants
    return f"SELECT {', '.join(quote + c + quote for c in present)} FROM {name} ORDER BY id"  # noqa: S608


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


FETCHERS: dict[str, Callable[[str, str, tuple[str, ...], tuple[str, ...]],
                                Awaitable[Rows]]] = {
    "mysql": _mysql, "mariadb": _mysql, "postgresql": _postgres, "postgres": _postgres,
    "sqlite": _sqlite,
}


async def read_sanctum(url: str, table: str = "personal_access_tokens",
                       qualified_subject: bool = False,
                       now: datetime | None = None) -> list[LegacyImport]:
    """Every row of the Sanctum table as an import, or SourceError naming the row and column."""
    scheme = url.split("://", 1)[0]
    if scheme not in FETCHERS:
        raise ValueError(f"unsupported source {scheme!r}: use mysql://, postgresql:// or "
                         "sqlite:///")
    if not TABLE_RE.fullmatch(table):
        raise ValueError(f"{table!r} is not a table name")
    # --qualified-subject needs tokenable_type: then it is no longer optional
    optional = ("expires_at",) if qualified_subject else OPTIONAL
    _, rows = await FETCHERS[scheme](url, table, COLUMNS, optional)
    now = now or datetime.now(UTC)
    found: list[LegacyImport] = []
    seen: dict[str, str] = {}
    for row in rows:
        item = _row(row, qualified_subject, now)
        digest = item.record.legacy_hash or ""
        if digest in seen:
            raise SourceError(f"row id={row['id']}: token: duplicate of row id={seen[digest]}")
        seen[digest] = str(row["id"])
        found.append(item)
    return found


def _row(row: dict[str, Any], qualified: bool, now: datetime) -> LegacyImport:
    sanctum_id = row["id"]
    if not isinstance(sanctum_id, int) or sanctum_id < 0:
        raise SourceError(f"row id={sanctum_id!r}: id: expected a whole number")
    where = f"row id={sanctum_id}"
    digest = row["token"]
    if isinstance(digest, bytes):
        digest = digest.decode("ascii", "replace")
    if not isinstance(digest, str) or not HEX64.fullmatch(digest):
        raise SourceError(f"{where}: token: expected 64 hex characters (SHA-256)")
    digest = digest.lower()
    owner = row["tokenable_id"]
    if isinstance(owner, bool) or not isinstance(owner, int | str):
        raise SourceError(f"{where}: tokenable_id: expected a number or text")
    subject: object = str(owner)
    if qualified:
        kind = row.get("tokenable_type")
        if not isinstance(kind, str) or not kind:
            raise SourceError(f"{where}: tokenable_type: expected text")
        subject = f"{kind}:{owner}"
    abilities = row["abilities"]
    if isinstance(abilities, bytes | str):
        try:
            abilities = json.loads(abilities)
        except ValueError:
            raise SourceError(f"{where}: abilities: not JSON") from None
    if abilities is None:
        abilities = []
    return LegacyImport(record(
        "sanctum", where, token_hash=sanctum_key(str(sanctum_id), digest), legacy_hash=digest,
        hint=f"{sanctum_id}|", subject=subject, name=row["name"],
        scopes=check_scopes(where, "abilities", abilities),
        created_at=parse_time(where, "created_at", row["created_at"]),
        expires_at=parse_time(where, "expires_at", row.get("expires_at")),
        last_used_at=parse_time(where, "last_used_at", row["last_used_at"]),
        metadata={"imported_from": "sanctum", "sanctum_id": sanctum_id}, now=now))

"""`authgate import` end to end against real sources (SPEC §10): a Laravel Sanctum table in the
real MariaDB (127.0.0.1:3306, AUTHGATE_TEST_MYSQL to point elsewhere), PostgreSQL and SQLite,
and JSON-lines files, into both stores. Bad sources exit 1 with one stderr line naming what is
wrong, and import nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import bcrypt
import click
import pytest
from click.testing import CliRunner, Result

from gateway.cli_import import import_command
from gateway.imports.legacy import LegacyVerifier
from gateway.store import EventFilter, TokenFilter, open_store
from tests.conftest import PG_ADMIN_URL, _pg_url, open_empty_store

MYSQL_ADMIN = os.environ.get("AUTHGATE_TEST_MYSQL", "mysql://root@127.0.0.1:3306/")
SECRET_A, SECRET_B = "A" * 36 + "aaaa", "sk" + "b" * 38


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# (id, tokenable_type, tokenable_id, name, token, abilities, last_used_at, expires_at, created_at)
ROWS: list[tuple[Any, ...]] = [
    (1, "App\\Models\\User", 7, "ci", sha(SECRET_A), '["*"]', "2024-03-01 10:00:00", None,
     "2024-01-02 03:04:05"),
    (2, "App\\Models\\Team", 9, "deploy", sha(SECRET_B), '["server:update", "read"]', None,
     "2030-01-01 00:00:00", "2024-01-05 00:00:00"),
]
COLS = ("id, tokenable_type, tokenable_id, name, token, abilities, last_used_at, expires_at, "
        "created_at")

MYSQL_TABLE = """CREATE TABLE {t} (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  tokenable_type VARCHAR(255) NOT NULL, tokenable_id BIGINT UNSIGNED NOT NULL,
  name VARCHAR(255) NOT NULL, token VARCHAR(64) NOT NULL UNIQUE, abilities TEXT NULL,
  last_used_at TIMESTAMP NULL, expires_at TIMESTAMP NULL, created_at TIMESTAMP NULL,
  updated_at TIMESTAMP NULL, INDEX (tokenable_type, tokenable_id))"""
PG_TABLE = """CREATE TABLE {t} (
  id BIGSERIAL PRIMARY KEY, tokenable_type VARCHAR(255) NOT NULL, tokenable_id BIGINT NOT NULL,
  name VARCHAR(255) NOT NULL, token VARCHAR(64) NOT NULL UNIQUE, abilities TEXT NULL,
  last_used_at TIMESTAMP(0) NULL, expires_at TIMESTAMP(0) NULL, created_at TIMESTAMP(0) NULL,
  updated_at TIMESTAMP(0) NULL)"""
SQLITE_TABLE = """CREATE TABLE {t} (
  id INTEGER PRIMARY KEY AUTOINCREMENT, tokenable_type VARCHAR NOT NULL,
  tokenable_id INTEGER NOT NULL, name VARCHAR NOT NULL, token VARCHAR NOT NULL,
  abilities TEXT, last_used_at DATETIME, expires_at DATETIME, created_at DATETIME,
  updated_at DATETIME)"""


class Source:
    """A real database holding Sanctum tables: create tables, add rows, by plain SQL."""

    def __init__(self, kind: str, url: str, run: Any, table_sql: str, mark: str) -> None:
        self.kind, self.url, self._run, self.table_sql, self.mark = kind, url, run, table_sql, mark

    def table(self, name: str, rows: list[tuple[Any, ...]] = ROWS, sql: str | None = None,
              cols: str = COLS) -> str:
        self._run([(sql or self.table_sql).format(t=name)] + [
            f"INSERT INTO {name} ({cols}) VALUES "
            f"({', '.join(self.mark.format(i + 1) for i in range(len(r)))})" for r in rows],
            rows)
        return name


def _mysql_run(db: str) -> Any:
    import asyncmy

    async def go(statements: list[str], rows: list[tuple[Any, ...]]) -> None:
        conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="",
                                     db=db, autocommit=True)
        try:
            async with conn.cursor() as cur:
                await cur.execute(statements[0])
                for sql, row in zip(statements[1:], rows, strict=False):
                    await cur.execute(sql, row)
        finally:
            conn.close()
    return lambda s, r: asyncio.run(go(s, r))


async def _mysql_admin(sql: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(host="127.0.0.1", port=3306, user="root", password="",
                                 autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mysql_source() -> Iterator[Source]:
    name = f"authgate_src_{secrets.token_hex(5)}"
    try:
        asyncio.run(_mysql_admin(f"CREATE DATABASE {name}"))
    except OSError as e:
        pytest.skip(f"MariaDB not reachable: {e}")
    yield Source("mysql", MYSQL_ADMIN + name, _mysql_run(name), MYSQL_TABLE, "%s")
    asyncio.run(_mysql_admin(f"DROP DATABASE IF EXISTS {name}"))


def _pg_value(v: Any) -> Any:
    """asyncpg binds a timestamp as a datetime, not as text."""
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", v):
        return datetime.fromisoformat(v)
    return v


@pytest.fixture(scope="module")
def postgresql_source() -> Iterator[Source]:
    name = f"authgate_src_{secrets.token_hex(5)}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def go(statements: list[str], rows: list[tuple[Any, ...]]) -> None:
        conn = await asyncpg.connect(_pg_url(name))
        try:
            await conn.execute(statements[0])
            for sql, row in zip(statements[1:], rows, strict=False):
                await conn.execute(sql, *(_pg_value(v) for v in row))
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    yield Source("postgresql", _pg_url(name), lambda s, r: asyncio.run(go(s, r)), PG_TABLE,
                 "${}")
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_source(tmp_path: Path) -> Source:
    path = tmp_path / "laravel.sqlite"

    def run(statements: list[str], rows: list[tuple[Any, ...]]) -> None:
        conn = sqlite3.connect(path)
        conn.execute(statements[0])
        for sql, row in zip(statements[1:], rows, strict=False):
            conn.execute(sql, row)
        conn.commit()
        conn.close()
    return Source("sqlite", f"sqlite:///{path}", run, SQLITE_TABLE, "?{}")


@pytest.fixture(params=["mysql", "postgresql", "sqlite"])
def source(request: pytest.FixtureRequest) -> Source:
    return request.getfixturevalue(f"{request.param}_source")  # type: ignore[no-any-return]


@pytest.fixture
def store(store_url: str) -> str:
    """The store URL, emptied (PostgreSQL is one database per run)."""
    async def empty() -> None:
        await (await open_empty_store(store_url)).close()
    asyncio.run(empty())
    return store_url


def cli(*args: str) -> Result:
    root = click.Group("authgate")
    root.add_command(import_command)
    return CliRunner().invoke(root, ["import", *args])


def fails(result: Result, *needles: str) -> str:
    assert result.exit_code == 1, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def tokens_in(store_url: str) -> list[Any]:
    async def go() -> list[Any]:
        s = await open_store(store_url)
        try:
            return await s.list_tokens(TokenFilter(), datetime.now(UTC), 100)
        finally:
            await s.close()
    return asyncio.run(go())


def verify(store_url: str, kinds: list[str], *presented: str) -> list[Any]:
    async def go() -> list[Any]:
        s = await open_store(store_url)
        try:
            v = LegacyVerifier(kinds, s, None)
            return [await v.verify(p) for p in presented]
        finally:
            await s.close()
    return asyncio.run(go())


def test_sanctum_import_from_each_source_into_each_store(source: Source, store: str) -> None:
    table = source.table(f"pat_{secrets.token_hex(4)}")
    args = ["sanctum", "--from", source.url, "--table", table, "--store", store]
    result = cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == {"imported": 2, "skipped": 0}
    again = cli(*args, "--json")
    assert json.loads(again.stdout) == {"imported": 0, "skipped": 2}
    assert "skipped 2" in cli(*args).stdout
    records = {r.subject: r for r in tokens_in(store)}
    assert set(records) == {"7", "9"}
    assert records["7"].scopes == ("*",) and records["9"].scopes == ("server:update", "read")
    assert records["7"].last_used_at is not None and records["7"].last_used_at.hour == 10
    assert records["9"].expires_at is not None and records["9"].expires_at.year == 2030
    assert records["7"].created_at.isoformat().startswith("2024-01-02T03:04:05")
    ok_a, ok_b, wrong_id, no_id = verify(store, ["sanctum"], f"1|{SECRET_A}", f"2|{SECRET_B}",
                                         f"2|{SECRET_A}", SECRET_A)
    assert ok_a.subject == "7" and ok_b.subject == "9" and wrong_id is None and no_id is None


def test_qualified_subject_and_event(mysql_source: Source, store: str) -> None:
    table = mysql_source.table(f"pat_q{secrets.token_hex(3)}")
    result = cli("sanctum", "--from", mysql_source.url, "--table", table, "--store", store,
                 "--qualified-subject", "--json")
    assert result.exit_code == 0, result.stderr
    assert {r.subject for r in tokens_in(store)} == {"App\\Models\\User:7",
                                                       "App\\Models\\Team:9"}

    async def events() -> Any:
        s = await open_store(store)
        try:
            return await s.list_events(EventFilter(type="tokens_imported"), 5)
        finally:
            await s.close()
    (event,) = asyncio.run(events())
    assert event.details["imported"] == 2 and event.details["kind"] == "sanctum"
    assert event.details["source"].startswith("mysql://127.0.0.1:3306/authgate_src_")


BAD_ROW = (3, "App\\Models\\User", 8, "bad", sha("c"), "not json", None, None, None)
WRONG_TOKEN = (3, "App\\Models\\User", 8, "bad", "zz", "[]", None, None, None)
BAD_SCOPE = (3, "App\\Models\\User", 8, "bad", sha("c"), '["has space"]', None, None, None)


def test_bad_sanctum_sources_exit_1_and_import_nothing(source: Source, store: str) -> None:
    u = source.url
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["--table", "no_such_table"], ("cannot read table no_such_table",)),
        (["--table", source.table(f"b1_{secrets.token_hex(3)}", [*ROWS, BAD_ROW])],
         ("row id=3", "abilities", "not JSON")),
        (["--table", source.table(f"b2_{secrets.token_hex(3)}", [*ROWS, WRONG_TOKEN])],
         ("row id=3", "token")),
        (["--table", source.table(f"b3_{secrets.token_hex(3)}", [*ROWS, BAD_SCOPE])],
         ("row id=3", "abilities", "has space")),
        (["--table", source.table(
            f"b4_{secrets.token_hex(3)}", [r[:5] + r[6:] for r in ROWS],
            sql=re.sub(r"abilities TEXT( NULL)?,", "", source.table_sql),
            cols=COLS.replace(" abilities,", ""))], ("no column 'abilities'",)),
    ]
    for extra, needles in cases:
        fails(cli("sanctum", "--from", u, "--store", store, *extra), *needles)
    assert tokens_in(store) == []


def test_unreachable_sources(store: str, tmp_path: Path) -> None:
    fails(cli("sanctum", "--from", "mysql://root@127.0.0.1:1/app", "--store", store),
          "cannot connect to mysql://127.0.0.1:1/app")
    fails(cli("sanctum", "--from", "postgresql://postgres:pw@127.0.0.1:1/app", "--store",
              store), "cannot connect to postgresql://127.0.0.1:1/app")
    line = fails(cli("sanctum", "--from", f"sqlite:///{tmp_path}/missing.db", "--store", store),
                 "missing.db")
    assert "pw" not in line
    assert not (tmp_path / "missing.db").exists()
    assert tokens_in(store) == []


def test_duplicate_sanctum_token_named(sqlite_source: Source, store: str) -> None:
    dup = (3, "App\\Models\\User", 8, "again", sha(SECRET_A), "[]", None, None, None)
    table = sqlite_source.table(f"pat_dup{secrets.token_hex(3)}", [*ROWS, dup])
    fails(cli("sanctum", "--from", sqlite_source.url, "--table", table, "--store", store),
          "row id=3", "duplicate of row id=1")
    assert tokens_in(store) == []


def test_bad_usage_exit_2(store: str) -> None:
    for args in (["sanctum", "--from", "ftp://x/y"], ["sanctum", "--from", "sqlite:///x",
                                                      "--table", "a;drop"],
                 ["bcrypt", "--from", "x.jsonl"], ["bcrypt", "--from", "x", "--prefix", "m k"],
                 ["sha256"]):
        result = cli(*args, "--store", store)
        assert result.exit_code == 2, (args, result.stderr)


# --- JSON lines --------------------------------------------------------------------------------


def jsonl(path: Path, *lines: Any) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def line(kind: str, digest: str, **kw: Any) -> dict[str, Any]:
    return {kind: digest, "subject": "alice", "name": "old key", "scopes": ["read"]} | kw


def test_sha256_and_bcrypt_files(store: str, tmp_path: Path) -> None:
    shas = jsonl(tmp_path / "s.jsonl", line("sha256", sha("plain-one")),
                 line("sha256", sha("plain-two"), subject="bob", expires_at=None,
                      created_at="2023-01-01T00:00:00Z"))
    result = cli("sha256", "--from", shas, "--store", store, "--json")
    assert json.loads(result.stdout) == {"imported": 2, "skipped": 0}, result.stderr
    assert json.loads(cli("sha256", "--from", shas, "--store", store, "--json").stdout) == {
        "imported": 0, "skipped": 2}
    mk = "mk_" + "Q" * 30
    hashed = bcrypt.hashpw(mk.encode(), bcrypt.gensalt(4)).decode()
    bfile = jsonl(tmp_path / "b.jsonl", line("bcrypt", hashed, subject="carol"))
    result = cli("bcrypt", "--from", bfile, "--prefix", "mk_", "--store", store, "--json")
    assert json.loads(result.stdout) == {"imported": 1, "skipped": 0}, result.stderr
    one, two, carol, miss = verify(store, ["sha256", "bcrypt"], "plain-one", "plain-two", mk,
                                   mk + "x")
    assert (one.subject, two.subject, carol.subject, miss) == ("alice", "bob", "carol", None)
    assert json.loads(cli("bcrypt", "--from", bfile, "--prefix", "mk_", "--store", store,
                          "--json").stdout) == {"imported": 0, "skipped": 1}


def test_bad_files_exit_1_naming_the_line(store: str, tmp_path: Path) -> None:
    good = line("sha256", sha("g"))
    new = (tmp_path / f"bad{n}.jsonl" for n in range(100)).__next__
    cases: list[tuple[list[str], tuple[str, ...]]] = [
        (["sha256", "--from", str(tmp_path / "none.jsonl")], ("cannot read", "none.jsonl")),
        (["sha256", "--from", jsonl(new(), good, "{not json")], ("line 2", "not valid JSON")),
        (["sha256", "--from", jsonl(new(), good, line("sha256", sha("h"), scopes="read"))],
         ("line 2", "scopes", "list")),
        (["sha256", "--from", jsonl(new(), good, line("sha256", 12))], ("line 2", "sha256")),
        (["sha256", "--from", jsonl(new(), good, line("sha256", sha("h"), subject=7))],
         ("line 2", "subject")),
        (["sha256", "--from", jsonl(new(), good, line("sha256", sha("h"), expires_at="soon"))],
         ("line 2", "expires_at", "not a time")),
        (["sha256", "--from", jsonl(new(), good, {"sha256": sha("h"), "name": "n", "scopes": []})],
         ("line 2", "missing key 'subject'")),
        (["sha256", "--from", jsonl(new(), good, line("sha256", sha("h"), colour="red"))],
         ("line 2", "unknown key 'colour'")),
        (["sha256", "--from", jsonl(new(), good, "", line("sha256", sha("g")))],
         ("line 3", "duplicate sha256 (also on line 1)")),
        (["sha256", "--from", jsonl(new(), good, "[1, 2]")], ("line 2", "JSON object")),
        (["bcrypt", "--prefix", "mk_", "--from", jsonl(new(), line("bcrypt", "$2b$04$short"))],
         ("line 1", "bcrypt hash")),
    ]
    for args, needles in cases:
        fails(cli(*args, "--store", store), *needles)
    latin = new()
    latin.write_bytes(b'{"sha256": "\xff"}\n')
    fails(cli("sha256", "--from", str(latin), "--store", store), "line 1")
    assert tokens_in(store) == []

"""Shared fixtures: throwaway PostgreSQL databases, SQLite files, settings.

PostgreSQL tests use the real server at 127.0.0.1:5432 (AUTHGATE_TEST_PG to point elsewhere):
one database per test run, created here and dropped afterwards, so runs never collide.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from gateway.authority import TokenAuthority
from gateway.config import Settings
from gateway.store import SqlStore, make_store
from tests.redis_topologies import redis_cluster, redis_sentinel  # noqa: F401 - session fixtures

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
_STARTED = time.time()
PG_ADMIN_URL = os.environ.get("AUTHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this run; dropped at the end."""
    name = f"authgate_test_{secrets.token_hex(6)}"

    async def create() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        store = make_store(_pg_url(name))
        await store.open()
        await store.migrate()
        await store.close()

    async def drop() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    yield _pg_url(name)
    asyncio.run(drop())


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/authgate.db"
    return request.getfixturevalue("pg_database")


async def open_empty_store(url: str) -> SqlStore:
    s = make_store(url)
    await s.open()
    await s.migrate()
    if s.dialect == "postgresql":  # one database per run: empty it between tests
        async with s.driver.transaction() as tx:
            await tx.execute("TRUNCATE tokens, token_events, token_usage_daily, token_usage_ips, "
                             "subjects")
            await tx.execute("TRUNCATE request_outcomes")
            await tx.execute("TRUNCATE alerts, alert_deliveries, monitor_lease")  # 006
    return s


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    s = await open_empty_store(store_url)
    yield s
    await s.close()


class Clock:
    """A settable clock for expiry and grace tests."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings() -> Settings:
    return Settings(pepper="test-pepper")


@pytest.fixture
def authority(store: SqlStore, settings: Settings, clock: Clock) -> TokenAuthority:
    return TokenAuthority(store, settings, clock=clock)


def pytest_terminal_summary(terminalreporter, config) -> None:
    """Name what this run left in artifacts/ (the dashboard screenshot, the fuzzer's count)."""
    fresh = sorted(p for p in ARTIFACTS.glob("*") if p.stat().st_mtime >= _STARTED) \
        if ARTIFACTS.is_dir() else []
    if not fresh:
        return
    terminalreporter.section("artifacts")
    for path in fresh:
        text = path.read_text().strip() if path.suffix == ".txt" else ""
        terminalreporter.write_line(f"{path.relative_to(ARTIFACTS.parent)}  {text}".rstrip())

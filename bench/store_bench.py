"""Time 10,000 sequential creates and 10,000 lookups by hash on each store backend.

    python bench/store_bench.py [N]

PostgreSQL runs in a throwaway database on 127.0.0.1:5432 that is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time

import asyncpg

from gateway.authority import Actor, TokenAuthority
from gateway.config import Settings
from gateway.store import make_store

PG = os.environ.get("AUTHGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def run(url: str, n: int) -> tuple[float, float]:
    store = make_store(url)
    await store.open()
    await store.migrate()
    auth = TokenAuthority(store, Settings(pepper="bench"))
    actor = Actor("bench")
    hashes = []
    t0 = time.perf_counter()
    for i in range(n):
        record, _ = await auth.create(actor, subject=f"s{i % 100}", name="bench")
        hashes.append(record.token_hash)
    create_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h in hashes:
        assert await store.get_by_hash(h) is not None
    lookup_s = time.perf_counter() - t0
    await store.close()
    return create_s, lookup_s


async def main(n: int) -> None:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = await run(f"sqlite:///{tmp}/bench.db", n)
    name = f"authgate_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(PG)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        results["postgresql"] = await run(PG.rsplit("/", 1)[0] + "/" + name, n)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()
    print(f"{'backend':<12} {n} creates          {n} lookups by hash")
    for backend, (c, lk) in results.items():
        print(f"{backend:<12} {c:6.2f} s ({c / n * 1e3:5.2f} ms each)  "
              f"{lk:6.2f} s ({lk / n * 1e3:5.3f} ms each)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000))

"""The token cache contract, in-process only (memory://) and with the real Redis: two TokenCache
instances stand for two replicas, a real SQLite store and TokenAuthority make the changes.

The revocation bound (SPEC §3): no copy outlives the start of the store read it came from plus
``local_cache_ttl_s``, whoever made the change, even a writer that cannot reach Redis, and even
when the change lands while a fill is in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.authority import Actor, TokenAuthority
from gateway.cache import LocalCache, RedisShared, TokenCache
from gateway.config import Settings
from gateway.store import SqlStore, TokenRecord
from tests.conftest import open_empty_store
from tests.e2e.conftest import free_port
from tests.redis_topologies import TOPOLOGIES, flushed_url, wait_subscribed

ADMIN = Actor("cli:test")
SETTINGS = Settings(pepper="cache-contract")
SLACK_S = 0.15  # scheduling slack on a busy 2-core machine


@dataclass
class Loader:
    """The store read, counted; ``hold`` parks a read after the store answered (a slow fill)."""
    store: SqlStore
    calls: int = 0
    started: list[float] = field(default_factory=list)
    hold: asyncio.Event | None = None
    read_done: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, token_hash: str) -> TokenRecord | None:
        self.calls += 1
        self.started.append(time.monotonic())
        record = await self.store.get_by_hash(token_hash)
        if self.hold is not None:
            self.read_done.set()
            await self.hold.wait()
        return record


@dataclass
class Replica:
    cache: TokenCache
    authority: TokenAuthority
    loader: Loader
    layers: list[str] = field(default_factory=list)

    async def lookup(self, token_hash: str) -> TokenRecord | None:
        return await self.cache.lookup(token_hash, self.loader, self.layers.append)

    async def layer_of(self, token_hash: str) -> str:
        await self.lookup(token_hash)
        return self.layers[-1]


MakeReplica = Callable[..., Awaitable[Replica]]


@pytest.fixture
async def store(tmp_path) -> AsyncIterator[SqlStore]:
    s = await open_empty_store(f"sqlite:///{tmp_path}/cache.db")
    yield s
    await s.close()


@pytest.fixture(params=["memory", *TOPOLOGIES])
async def replica(request, store) -> AsyncIterator[MakeReplica]:
    """Replicas on one store; with a Redis kind (one server, a Redis Cluster, a Sentinel-managed
    master) they share it (flushed first)."""
    shared = None if request.param == "memory" else await flushed_url(request, request.param)
    made: list[TokenCache] = []

    async def make(ttl_s: float = 30.0, cache_url: str | None = None,
                   **local: int) -> Replica:
        url = cache_url or shared
        cache = TokenCache(LocalCache(ttl_s, **local), RedisShared(url) if url else None)
        cache.start()
        made.append(cache)
        if url is not None:
            await wait_subscribed(request, request.param, len(made))
        return Replica(cache, TokenAuthority(store, SETTINGS, invalidate=cache.invalidate),
                       Loader(store))

    yield make
    for cache in made:
        await cache.close()
        if cache.shared is not None:
            await cache.shared.close()


@pytest.fixture(params=TOPOLOGIES)
async def redis_replica(request, store) -> AsyncIterator[MakeReplica]:
    url = await flushed_url(request, request.param)
    made: list[TokenCache] = []

    async def make(ttl_s: float = 30.0) -> Replica:
        cache = TokenCache(LocalCache(ttl_s), RedisShared(url))
        cache.start()
        made.append(cache)
        # subscribed before any broadcast it should hear
        await wait_subscribed(request, request.param, len(made))
        return Replica(cache, TokenAuthority(store, SETTINGS, invalidate=cache.invalidate),
                       Loader(store))

    yield make
    for cache in made:
        await cache.close()
        assert cache.shared is not None
        await cache.shared.close()


async def unreachable_writer(store: SqlStore, ttl_s: float) -> tuple[TokenAuthority, TokenCache]:
    """A process whose Redis is a closed loopback port (or the CLI with memory://)."""
    cache = TokenCache(LocalCache(ttl_s), RedisShared(f"redis://127.0.0.1:{free_port()}/0"))
    return TokenAuthority(store, SETTINGS, invalidate=cache.invalidate), cache


async def eventually_revoked(rep: Replica, token_hash: str, within_s: float) -> float:
    """Poll until the replica sees the token revoked; seconds it took (bounded loop)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < within_s + 1.0:
        record = await rep.lookup(token_hash)
        if record is not None and record.revoked_at is not None:
            return time.monotonic() - t0
        await asyncio.sleep(0.01)
    raise AssertionError(f"still not revoked after {within_s + 1.0} s")


# --- hits, misses, negative entries -------------------------------------------------------------


async def test_miss_then_local_hit_with_one_store_read(replica):
    a = await replica()
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    assert await a.lookup(record.token_hash) == record
    assert await a.lookup(record.token_hash) == record
    assert a.layers == ["store", "local"] and a.loader.calls == 1


async def test_unknown_token_is_remembered_briefly(replica):
    a = await replica()
    assert await a.lookup("0" * 64) is None
    assert await a.lookup("0" * 64) is None
    assert a.layers == ["store", "local"] and a.loader.calls == 1


async def test_a_flood_of_unknown_tokens_never_evicts_valid_ones(replica):
    a = await replica(max_entries=20)
    valid = [(await a.authority.create(ADMIN, subject="s", name=f"t{i}"))[0] for i in range(20)]
    for r in valid:
        await a.lookup(r.token_hash)
    for i in range(200):
        assert await a.lookup(f"{i:064x}") is None
    reads = a.loader.calls
    for r in valid:
        assert await a.lookup(r.token_hash) == r
    assert a.loader.calls == reads and a.layers[-20:] == ["local"] * 20


async def test_a_change_is_seen_at_once_by_the_replica_that_made_it(replica):
    a = await replica()
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    await a.lookup(record.token_hash)
    await a.authority.revoke(ADMIN, record.id)
    seen = await a.lookup(record.token_hash)
    assert seen is not None and seen.revoked_at is not None


# --- the shared layer and the broadcast ---------------------------------------------------------


async def test_a_store_read_is_shared_with_another_replica(redis_replica):
    a, b = await redis_replica(), await redis_replica()
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    await a.lookup(record.token_hash)
    assert await b.lookup(record.token_hash) == record
    assert await b.lookup("f" * 64) is None
    assert await a.layer_of("f" * 64) == "shared"  # the "no such token" is shared too
    assert b.layers == ["shared", "store"] and b.loader.calls == 1 and a.loader.calls == 1


async def test_broadcast_drops_the_copy_on_every_replica_within_milliseconds(redis_replica):
    a, b = await redis_replica(), await redis_replica()
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    await a.lookup(record.token_hash)
    assert await b.layer_of(record.token_hash) == "shared"
    assert await b.layer_of(record.token_hash) == "local"
    await a.authority.revoke(ADMIN, record.id)
    assert await eventually_revoked(b, record.token_hash, within_s=0.5) < 0.5  # ttl is 30 s


# --- the deadline: read start + ttl, whoever writes ---------------------------------------------


async def test_no_copy_outlives_read_start_plus_ttl(replica):
    ttl = 0.5
    a, b = await replica(ttl), await replica(ttl)
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    await a.lookup(record.token_hash)
    await asyncio.sleep(0.3)
    await b.lookup(record.token_hash)  # with Redis: a's read, shared; else a read of its own
    origin = {"a": a.loader.started[0],
              "b": a.loader.started[0] if b.layers == ["shared"] else b.loader.started[0]}
    gone: dict[str, float] = {}
    while len(gone) < 2 and time.monotonic() < origin["b"] + ttl + 1:
        for name, rep in (("a", a), ("b", b)):
            if name not in gone and await rep.layer_of(record.token_hash) != "local":
                gone[name] = time.monotonic()
        await asyncio.sleep(0.01)
    for name in ("a", "b"):  # kept until close to its deadline, never past it
        assert origin[name] + ttl - 0.1 <= gone[name] <= origin[name] + ttl + SLACK_S, name


async def test_a_writer_that_cannot_reach_redis_is_seen_within_the_ttl(replica, store):
    ttl = 0.6
    a, b = await replica(ttl), await replica(ttl)
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    await a.lookup(record.token_hash)
    await b.lookup(record.token_hash)
    read_start = a.loader.started[0]
    writer, cache = await unreachable_writer(store, ttl)
    try:
        await writer.revoke(ADMIN, record.id)  # reports success; Redis never hears of it
    finally:
        assert cache.shared is not None
        await cache.shared.close()
    for rep in (a, b):
        await eventually_revoked(rep, record.token_hash, within_s=ttl)
        assert time.monotonic() <= read_start + ttl + SLACK_S


async def test_a_fill_racing_a_change_does_not_write_the_old_record_back(replica):
    a = await replica()  # ttl 30 s: only the race guard can make this pass
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    a.loader.hold = asyncio.Event()
    slow = asyncio.create_task(a.lookup(record.token_hash))
    await a.loader.read_done.wait()  # the store answered with the active record
    await a.authority.revoke(ADMIN, record.id)
    a.loader.hold.set()
    assert (await slow).revoked_at is None  # that request was already judged
    a.loader.hold = None
    seen = await a.lookup(record.token_hash)
    assert seen is not None and seen.revoked_at is not None


async def test_another_replicas_change_during_a_fill_keeps_the_old_record_out_of_redis(
        redis_replica):
    a, b = await redis_replica(), await redis_replica()
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    a.loader.hold = asyncio.Event()
    slow = asyncio.create_task(a.lookup(record.token_hash))
    await a.loader.read_done.wait()
    await b.authority.revoke(ADMIN, record.id)  # b reaches Redis: broadcast + version mark
    a.loader.hold.set()
    await slow
    a.loader.hold = None
    c = await redis_replica()  # a third replica, fresh: anything stale would be in Redis
    seen = await c.lookup(record.token_hash)
    assert seen is not None and seen.revoked_at is not None
    await eventually_revoked(a, record.token_hash, within_s=0.5)


async def test_a_fill_racing_a_writer_without_redis_dies_at_its_deadline(replica, store):
    ttl = 0.6
    a, b = await replica(ttl), await replica(ttl)
    record, _ = await a.authority.create(ADMIN, subject="s", name="n")
    a.loader.hold = asyncio.Event()
    slow = asyncio.create_task(a.lookup(record.token_hash))
    await a.loader.read_done.wait()
    read_start = a.loader.started[0]
    writer, cache = await unreachable_writer(store, ttl)
    try:
        await writer.revoke(ADMIN, record.id)
    finally:
        assert cache.shared is not None
        await cache.shared.close()
    await asyncio.sleep(0.2)  # the fill lands late, with part of its time used up
    a.loader.hold.set()
    await slow
    a.loader.hold = None
    for rep in (a, b):
        await eventually_revoked(rep, record.token_hash, within_s=ttl)
        assert time.monotonic() <= read_start + ttl + SLACK_S


async def test_revoke_all_empties_the_shared_cache_on_every_node(redis_replica):
    a = await redis_replica()
    records = [(await a.authority.create(ADMIN, subject="s", name=f"t{i}"))[0] for i in range(12)]
    for r in records:  # hashes spread over the slots: on a cluster, over every node
        await a.lookup(r.token_hash)
    await a.authority.revoke_all(ADMIN, "drill")
    fresh = await redis_replica()
    for r in records:
        seen = await fresh.lookup(r.token_hash)
        assert seen is not None and seen.revoked_at is not None
    assert fresh.layers == ["store"] * len(records)  # nothing left in the shared layer

"""Identity-assertion signing keys over SQLite and PostgreSQL: one key for every replica, rotation
with overlap, the JWKS listing over time (a settable clock), races (SPEC §11)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from gateway.assertion import (
    PUBLISH_DELAY_S,
    REFRESH_S,
    RETAIN_S,
    SKEW_S,
    Assertions,
    load_keys,
    rotate_key,
)
from gateway.errors import StoreUnavailable
from gateway.store import SqlStore, make_store

TTL = 60


@dataclass(frozen=True)
class Record:
    id: str = "tok_1"
    subject: str = "alice"
    name: str = "ci"
    scopes: tuple[str, ...] = ("read",)


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def keystore(store: SqlStore) -> SqlStore:
    async with store.driver.transaction() as tx:  # the PostgreSQL database is shared by a run
        await tx.execute("DELETE FROM signing_keys")
    return store


@pytest.fixture
async def second(keystore: SqlStore, store_url: str) -> AsyncIterator[SqlStore]:
    """Another replica's own connection(s) to the same store."""
    s = make_store(store_url)
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def clock() -> Clock:  # type: ignore[override]
    return Clock()


async def replica(store: SqlStore, clock: Callable[[], float], **kw: object) -> Assertions:
    a = Assertions(TTL, clock=clock, **kw)  # type: ignore[arg-type]
    await a.start(store, background=False)
    return a


def kid_of(token: str) -> str:
    import base64
    head = token.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))["kid"]


def listed(a: Assertions) -> list[str]:
    return [k["kid"] for k in json.loads(a.jwks())["keys"]]


async def test_first_start_creates_one_key_that_every_replica_signs_with(
        keystore: SqlStore, second: SqlStore, clock: Clock) -> None:
    a, b = await asyncio.gather(replica(keystore, clock), replica(second, clock))
    assert len(a.keys) == len(b.keys) == 1
    assert kid_of(a.sign(Record(), "r1")) == kid_of(b.sign(Record(), "r2")) == a.keys[0].kid
    assert a.jwks() == b.jwks()


async def test_replicas_starting_at_once_on_an_empty_store_agree_on_one_key(
        keystore: SqlStore, second: SqlStore, clock: Clock) -> None:
    found = await asyncio.gather(*(load_keys(s, clock) for s in [keystore, second] * 3))
    assert len({tuple(k.kid for k in keys) for keys in found}) == 1
    assert len(found[0]) == 1


async def test_the_key_survives_a_restart(keystore: SqlStore, store_url: str,
                                          clock: Clock) -> None:
    before = (await replica(keystore, clock)).keys[0].kid
    again = make_store(store_url)
    await again.open()
    try:
        assert (await replica(again, clock)).keys[0].kid == before
    finally:
        await again.close()


async def test_rotation_publishes_first_then_signs_with_the_new_key(
        keystore: SqlStore, second: SqlStore, clock: Clock) -> None:
    a, b = await replica(keystore, clock), await replica(second, clock)
    old = a.keys[0].kid
    new = (await a.rotate()).kid
    assert listed(a) == [new, old]          # published at once where it was made
    assert kid_of(a.sign(Record(), "r")) == old  # but not signing yet
    await b.refresh()
    assert listed(b) == [new, old]
    clock.now += PUBLISH_DELAY_S
    assert kid_of(a.sign(Record(), "r")) == kid_of(b.sign(Record(), "r")) == new
    # the old key stays listed until its last assertion has expired
    clock.now += TTL - 1
    assert listed(a) == listed(b) == [new, old]
    clock.now += 1 + SKEW_S
    assert listed(a) == listed(b) == [new]


async def test_a_rotation_by_the_cli_reaches_running_replicas(
        keystore: SqlStore, second: SqlStore, clock: Clock) -> None:
    a = await replica(keystore, clock)
    new = await rotate_key(second, clock=clock)  # another process, no Assertions
    assert new.active_from == clock.now + PUBLISH_DELAY_S
    await a.refresh()
    assert new.kid in listed(a)
    clock.now = new.active_from
    assert kid_of(a.sign(Record(), "r")) == new.kid


async def test_no_replica_signs_with_a_key_another_replica_does_not_list(
        keystore: SqlStore, second: SqlStore, store_url: str, clock: Clock) -> None:
    """Three replicas re-reading every REFRESH_S at different phases, clocks up to SKEW_S
    apart; rotations by the CLI; checked every 0.5 s: each signing kid is in every JWKS, and
    30 s after a rotation every replica signs with the new key."""
    third = make_store(store_url)
    await third.open()
    try:
        offsets = (0.0, SKEW_S, -SKEW_S / 2)  # each replica's clock error
        replicas = [await replica(s, lambda o=o: clock() + o)
                    for s, o in zip((keystore, second, third), offsets, strict=True)]
        phases = (0.0, 1.5, 4.5)  # when, within each REFRESH_S, each replica re-reads
        rotations = {3.0: None, 47.0: None, 52.0: None, 140.0: None}
        start, step = clock.now, 0.5
        for i in range(int(220 / step)):
            t = i * step
            clock.now = start + t
            if t in rotations:
                rotations[t] = (await rotate_key(keystore, clock=clock)).kid
            for r, phase in zip(replicas, phases, strict=True):
                if (t - phase) % REFRESH_S == 0:
                    await r.refresh()
            signing = {kid_of(r.sign(Record(), "r")) for r in replicas}
            for r in replicas:
                assert signing <= set(listed(r)), f"t={t}"
            for at, kid in rotations.items():
                later = [k for k in rotations if at < k <= t]
                if t >= at + 30 and not later:
                    assert signing == {kid}, f"t={t}: not all on the key of t={at}"
    finally:
        await third.close()


async def test_concurrent_rotations_both_land(keystore: SqlStore, second: SqlStore,
                                              clock: Clock) -> None:
    await load_keys(keystore, clock)
    made = await asyncio.gather(*(rotate_key(s, clock=clock) for s in (keystore, second) * 2))
    assert sorted(k.seq for k in made) == [2, 3, 4, 5]
    assert len({k.kid for k in made}) == 4
    keys = await load_keys(second, clock)
    assert [k.seq for k in keys] == [1, 2, 3, 4, 5]


async def test_a_rotation_never_moves_signing_back(keystore: SqlStore, clock: Clock) -> None:
    await load_keys(keystore, clock)
    late = await rotate_key(keystore, clock=clock)
    clock.now -= 10  # a CLI whose clock lags the previous rotator's
    nxt = await rotate_key(keystore, clock=clock)
    assert nxt.active_from >= late.active_from


async def test_rows_retired_long_ago_are_dropped_at_the_next_rotation(
        keystore: SqlStore, clock: Clock) -> None:
    await load_keys(keystore, clock)
    await rotate_key(keystore, clock=clock)
    clock.now += PUBLISH_DELAY_S + RETAIN_S + 1
    await rotate_key(keystore, clock=clock)
    assert [k.seq for k in await load_keys(keystore, clock)] == [2, 3]


async def test_a_replica_that_cannot_read_the_store_keeps_signing(
        keystore: SqlStore, store_url: str, clock: Clock,
        caplog: pytest.LogCaptureFixture) -> None:
    other = make_store(store_url)
    await other.open()
    a = Assertions(TTL, clock=clock, refresh_s=0.01)
    await a.start(other)
    kid = a.keys[0].kid
    await other.close()
    with caplog.at_level(logging.WARNING, "authgate.assertion"):
        await asyncio.sleep(0.1)
    assert kid_of(a.sign(Record(), "r")) == kid
    assert sum("not re-read" in r.message for r in caplog.records) == 1  # said once
    with pytest.raises(StoreUnavailable):
        await a.refresh()
    await a.close()


async def test_the_background_refresh_lists_another_process_rotation(
        keystore: SqlStore, second: SqlStore, clock: Clock) -> None:
    a = Assertions(TTL, clock=clock, refresh_s=0.02)
    await a.start(keystore)
    try:
        new = await rotate_key(second, clock=clock)
        for _ in range(100):
            if new.kid in listed(a):
                break
            await asyncio.sleep(0.02)
        assert new.kid in listed(a)
        assert kid_of(a.sign(Record(), "r")) != new.kid  # published, not yet signing
    finally:
        await a.close()

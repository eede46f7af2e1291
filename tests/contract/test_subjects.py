"""Subject suspension and the creation limit in the store and the authority (gateway/subjects.py),
on SQLite and the real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway import subjects
from gateway.authority import Actor, TokenAuthority
from gateway.config import Settings
from gateway.errors import CreationLimited, InvalidInput
from gateway.imports.sources import read_jsonl, run_import
from gateway.store import Revoked, SqlStore, make_store

CLI = Actor("cli:tester")
ADMIN = Actor("admin:tok_x", "10.0.0.7", "pytest/1")


@pytest.fixture
def invalidated() -> list[list[str] | None]:
    return []


@pytest.fixture
def authority(store, settings, clock, invalidated) -> TokenAuthority:  # type: ignore[no-untyped-def]
    async def invalidate(revoked: list[Revoked] | None) -> None:
        invalidated.append(None if revoked is None else sorted(r.token_hash for r in revoked))
    return TokenAuthority(store, settings, clock=clock, invalidate=invalidate)


async def _flag(store: SqlStore, auth: TokenAuthority, secret: str) -> bool:
    record = await store.get_by_hash(auth.hash(secret))
    assert record is not None
    return record.suspended


async def test_suspend_flags_every_token_of_the_subject_and_resume_clears_it(
        authority, store, clock, invalidated):
    a1, s1 = await authority.create(CLI, subject="alice", name="one")
    a2, s2 = await authority.create(CLI, subject="alice", name="two")
    _, sb = await authority.create(CLI, subject="bob", name="b")
    assert not await _flag(store, authority, s1)

    suspension, changed = await subjects.suspend(authority, ADMIN, "alice", "abuse")
    assert changed and suspension.reason == "abuse" and suspension.actor == "admin:tok_x"
    assert suspension.suspended_at == clock()
    assert await _flag(store, authority, s1) and await _flag(store, authority, s2)
    assert not await _flag(store, authority, sb)
    assert (await store.get_token(a1.id)).suspended  # type: ignore[union-attr]
    # every token of the subject is dropped from the caches, and nothing is revoked
    assert invalidated == [sorted([a1.token_hash, a2.token_hash])]
    assert all(r.status(clock()) == "active" for r in (await authority.list())[0])

    clock.advance(seconds=5)
    again, changed = await subjects.suspend(authority, ADMIN, "alice", "other")
    assert not changed and again == suspension  # idempotent: nothing changed
    assert len(invalidated) == 1

    assert await subjects.resume(authority, CLI, "alice", "appeal granted")
    assert not await _flag(store, authority, s1)
    assert invalidated[-1] == sorted([a1.token_hash, a2.token_hash])
    assert not await subjects.resume(authority, CLI, "alice")  # idempotent too
    assert await subjects.status(authority, "alice") is None

    events = (await authority.events(subject="alice", limit=10))[0]
    kinds = [(e.type, e.actor, e.ip, e.user_agent, dict(e.details)) for e in events
             if e.type.startswith("subject_")]
    assert kinds == [
        ("subject_resumed", "cli:tester", None, None, {"reason": "appeal granted"}),
        ("subject_suspended", "admin:tok_x", "10.0.0.7", "pytest/1", {"reason": "abuse"})]


async def test_a_subject_without_tokens_may_be_suspended_and_new_tokens_are_refused(
        authority, store):
    await subjects.suspend(authority, CLI, "carol")
    _, secret = await authority.create(CLI, subject="carol", name="later")
    assert await _flag(store, authority, secret)
    await subjects.resume(authority, CLI, "carol")
    assert not await _flag(store, authority, secret)


async def test_suspend_then_resume_then_suspend_again_records_each_change(authority, clock):
    for _ in range(2):
        await subjects.suspend(authority, CLI, "dave", "x")
        clock.advance(seconds=1)
        await subjects.resume(authority, CLI, "dave")
        clock.advance(seconds=1)
    events = (await authority.events(subject="dave"))[0]
    assert [e.type for e in events] == ["subject_resumed", "subject_suspended"] * 2


@pytest.mark.parametrize(("subject", "reason", "field"), [
    ("", None, "subject"),
    ("   ", None, "subject"),
    ("x" * 201, None, "subject"),
    ("a\x00b", None, "subject"),
    ("a\nb", None, "subject"),
    ("ok", "r" * 501, "reason"),
    ("ok", "a\x1bb", "reason"),
])
async def test_bad_subjects_and_reasons_are_refused_and_change_nothing(
        authority, store, subject, reason, field):
    with pytest.raises(InvalidInput) as e:
        await subjects.suspend(authority, CLI, subject, reason)
    assert e.value.field == field
    with pytest.raises(InvalidInput):
        await subjects.resume(authority, CLI, subject, reason)
    assert await store.list_suspended(10) == []
    assert (await authority.events())[0] == []


async def test_non_ascii_and_long_subjects_are_kept_exactly(authority, store):
    for name in ("Łukasz", "用户:42", "x" * 200):
        _, secret = await authority.create(CLI, subject=name, name="n")
        await subjects.suspend(authority, CLI, name, "ünïcode reason")
        assert await _flag(store, authority, secret)
        assert (await subjects.status(authority, name)).subject == name  # type: ignore[union-attr]
    # a subject that differs only by case or prefix is another subject
    _, other = await authority.create(CLI, subject="łukasz", name="n")
    assert not await _flag(store, authority, other)


async def test_suspended_subjects_are_listed_newest_first_in_pages(authority, clock):
    for i in range(7):
        await subjects.suspend(authority, CLI, f"s{i}", f"r{i}")
        if i % 2:
            clock.advance(seconds=1)  # some share a suspended_at: the cursor breaks the tie
    await subjects.suspend(authority, CLI, "gone")
    await subjects.resume(authority, CLI, "gone")
    seen, cursor = [], None
    while True:
        page, cursor = await subjects.suspended(authority, limit=3, cursor=cursor)
        seen += [s.subject for s in page]
        if cursor is None:
            break
    assert seen == ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]
    for bad in ("nope", "e30", "W10"):
        with pytest.raises(InvalidInput):
            await subjects.suspended(authority, cursor=bad)


# --- the creation limit ---------------------------------------------------------------------


def _limited(store: SqlStore, clock, limit: str = "5/hour") -> TokenAuthority:  # type: ignore[no-untyped-def]
    return TokenAuthority(store, Settings(pepper="test-pepper", creation_limit=limit),
                          clock=clock)


async def test_creation_limit_refuses_beyond_n_per_window_and_records_the_refusal(store, clock):
    auth = _limited(store, clock, "3/hour")
    for _ in range(3):
        await auth.create(ADMIN, subject="alice", name="n")
        clock.advance(minutes=10)
    with pytest.raises(CreationLimited) as e:
        await auth.create(ADMIN, subject="alice", name="n")
    # the first of the three leaves the window 60 - 30 minutes from now
    assert e.value.retry_after_s == 30 * 60 and e.value.limit == "3/hour"
    await auth.create(ADMIN, subject="bob", name="n")  # per subject
    refused = (await auth.events(type="rate_limited"))[0]
    assert [(r.subject, r.actor, r.ip, r.user_agent, r.token_id, dict(r.details))
            for r in refused] == [("alice", "admin:tok_x", "10.0.0.7", "pytest/1", None,
                                   {"reason": "creation_limit", "limit": "3/hour"})]
    assert len((await auth.list(subject="alice"))[0]) == 3
    clock.advance(minutes=30, seconds=1)  # the first one left the window
    await auth.create(ADMIN, subject="alice", name="n")
    with pytest.raises(CreationLimited):
        await auth.create(ADMIN, subject="alice", name="n")


async def test_deleting_tokens_does_not_give_creations_back_and_rotation_counts(
        store, clock):
    auth = _limited(store, clock, "3/day")
    first, _ = await auth.create(CLI, subject="alice", name="n")
    await auth.delete(CLI, first.id)
    second, _ = await auth.create(CLI, subject="alice", name="n")
    successor, _, _ = await auth.rotate(CLI, second.id)  # the successor is a creation
    with pytest.raises(CreationLimited):
        await auth.create(CLI, subject="alice", name="n")
    with pytest.raises(CreationLimited) as e:
        await auth.rotate(CLI, successor.id)
    assert e.value.limit == "3/day"
    # the refused rotation changed nothing: the successor is still active, not rotated out
    still = await auth.get(successor.id)
    assert still.status(clock()) == "active" and still.grace_until is None
    assert len((await auth.list(subject="alice", status="active"))[0]) == 2


async def test_rotating_with_a_grace_cannot_multiply_tokens_past_the_creation_limit(
        store, clock):
    """The attack: creation_limit 3/hour, one token rotated 20 times with a day of grace
    (every rotated-out token works on through its grace). Exactly 3 tokens work after."""
    auth = _limited(store, clock, "3/hour")
    token, _ = await auth.create(ADMIN, subject="alice", name="child")
    refused = 0
    for _ in range(20):
        try:
            token, _, _ = await auth.rotate(ADMIN, token.id, grace=86400)
        except CreationLimited as e:
            assert e.retry_after_s > 0
            refused += 1
    assert refused == 18
    working = [r for r in (await auth.list(subject="alice", limit=100))[0]
               if r.status(clock()) in ("active", "grace")]
    assert len(working) == 3, [r.status(clock()) for r in working]
    events = (await auth.events(type="rate_limited", limit=100))[0]
    assert len(events) == 18
    assert {(e.subject, e.actor, e.ip, tuple(sorted(e.details.items()))) for e in events} == {
        ("alice", "admin:tok_x", "10.0.0.7",
         (("limit", "3/hour"), ("reason", "creation_limit")))}


async def test_a_rotation_that_cannot_happen_is_refused_as_such_not_as_limited(store, clock):
    from gateway.errors import Refused
    auth = _limited(store, clock, "1/hour")
    token, _ = await auth.create(CLI, subject="alice", name="n")
    await auth.revoke(CLI, token.id)
    with pytest.raises(Refused) as e:
        await auth.rotate(CLI, token.id)
    assert not isinstance(e.value, CreationLimited) and "revoked" in str(e.value)
    assert (await auth.events(type="rate_limited"))[0] == []


async def test_rotations_under_the_creation_limit_are_exact_under_concurrency(
        store_url, store, clock):
    """10 tokens (made without a limit) rotated concurrently from two processes' stores under a
    limit of 4/hour: exactly 4 rotations happen, 6 are refused."""
    plain = TokenAuthority(store, Settings(pepper="test-pepper"), clock=clock)
    made = [(await plain.create(CLI, subject="alice", name=f"n{i}"))[0] for i in range(10)]
    clock.advance(hours=2)  # the creations left the window
    other = make_store(store_url)
    await other.open()
    try:
        auths = [_limited(store, clock, "4/hour"), _limited(other, clock, "4/hour")]
        results = await asyncio.gather(*(
            auths[i % 2].rotate(CLI, t.id) for i, t in enumerate(made)), return_exceptions=True)
    finally:
        await other.close()
    rotated = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, CreationLimited)]
    assert len(rotated) == 4 and len(refused) == 6, results
    assert len((await plain.events(type="token_rotated", limit=100))[0]) == 4


async def test_imports_do_not_count(store, clock, tmp_path):
    auth = _limited(store, clock, "1/hour")
    lines = [json.dumps({"sha256": f"{i:064x}", "subject": "alice", "name": f"n{i}",
                         "scopes": ["read"]}) for i in range(3)]
    path = tmp_path / "tokens.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert await run_import(store, "sha256", read_jsonl("sha256", str(path)), str(path),
                            "cli:t") == (3, 0)
    await auth.create(CLI, subject="alice", name="mine")  # the one creation of the hour
    # imported tokens are found by the same joined lookup: suspension reaches them too
    imported = [r for r in (await auth.list(subject="alice"))[0] if r.legacy_kind]
    assert len(imported) == 3
    await subjects.suspend(auth, CLI, "alice")
    for r in imported:
        found = await store.get_by_hash(r.token_hash)
        assert found is not None and found.suspended


async def test_the_creation_limit_is_exact_under_concurrency(store_url, store, clock):
    """20 concurrent creates for one subject from two processes' stores, limit 5: exactly 5."""
    other = make_store(store_url)
    await other.open()
    try:
        auths = [_limited(store, clock), _limited(other, clock)]
        results = await asyncio.gather(*(
            auths[i % 2].create(CLI, subject="alice", name=f"n{i}") for i in range(20)),
            return_exceptions=True)
    finally:
        await other.close()
    made = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, CreationLimited)]
    assert len(made) == 5 and len(refused) == 15, results
    assert len((await auths[0].list(subject="alice"))[0]) == 5
    assert len((await auths[0].events(type="rate_limited", limit=100))[0]) == 15


async def test_without_a_creation_limit_nothing_is_counted(authority):
    for _ in range(30):
        await authority.create(CLI, subject="alice", name="n")
    assert (await authority.events(type="rate_limited"))[0] == []


async def test_token_count_counts_working_tokens_of_exactly_the_subject(authority, clock):
    """Subjects are exact strings: the count a suspension answers with shows one that matches
    nothing (NFD vs NFC, case, a trailing space)."""
    import unicodedata
    nfc = unicodedata.normalize("NFC", "josé")
    nfd = unicodedata.normalize("NFD", "josé")
    assert nfc != nfd
    live, _ = await authority.create(CLI, subject=nfc, name="a")
    await authority.create(CLI, subject=nfc, name="b")
    gone, _ = await authority.create(CLI, subject=nfc, name="c")
    await authority.revoke(CLI, gone.id)
    await authority.create(CLI, subject=nfc, name="d", expires_in=60)
    await authority.rotate(CLI, live.id, grace=3600)  # the old one works on in its grace
    clock.advance(seconds=120)  # "d" expired
    assert await subjects.token_count(authority, nfc) == 3  # b, a's successor, a in its grace
    for other in (nfd, "José", nfc + " ", "JOSÉ"):
        assert await subjects.token_count(authority, other) == 0, other
    clock.advance(hours=2)  # the grace ended
    assert await subjects.token_count(authority, nfc) == 2
    with pytest.raises(InvalidInput):
        await subjects.token_count(authority, "x" * 201)


async def test_a_rotation_under_the_creation_limit_hands_credits_over_like_any(store, clock):
    """rotate_token_limited runs rotate_token's writes: the balance moves to the successor."""
    auth = _limited(store, clock, "5/hour")
    record, _ = await auth.create(ADMIN, subject="alice", name="n",
                                  credits={"remaining": 30, "refill": None})
    successor, _, _ = await auth.rotate(ADMIN, record.id)
    new, old = await store.get_token(successor.id), await store.get_token(record.id)
    assert new is not None and new.credits is not None and new.credits.remaining == 30
    assert old is not None and old.credits is not None and old.credits.remaining == 0

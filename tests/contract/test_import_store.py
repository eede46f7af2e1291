"""Imported tokens in the store and the legacy verifier, on SQLite and the real PostgreSQL
(SPEC §10): one-transaction idempotent imports, ordinary records afterwards, and each kind
accepted as its owner holds it while near-misses are refused."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from gateway.authority import Actor, TokenAuthority
from gateway.errors import Refused
from gateway.imports.legacy import LegacyVerifier, check_kinds
from gateway.imports.sources import SourceError, read_jsonl, run_import, sanctum_key
from gateway.store import EventFilter, LegacyImport, SqlStore, TokenFilter, TokenRecord
from gateway.tokens import hash_token

PEPPER = "test-pepper"
NOW = datetime.now(UTC).replace(microsecond=0)


def sanctum_item(sanctum_id: int, secret: str, subject: str = "7") -> LegacyImport:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return LegacyImport(TokenRecord(
        id=f"tok_s{sanctum_id}", subject=subject, name=f"sanctum {sanctum_id}", scopes=("*",),
        family=f"fam_s{sanctum_id}", token_hash=sanctum_key(str(sanctum_id), digest),
        hint=f"{sanctum_id}|", created_at=NOW, legacy_kind="sanctum", legacy_hash=digest))


def write_lines(path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


def bcrypt_hash(token: str) -> str:
    return bcrypt.hashpw(token.encode(), bcrypt.gensalt(4)).decode()


class CountingStore:
    """The store, counting the calls the verifier makes (I/O it should not make)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        async def counted(*args: Any) -> Any:
            self.calls.append(name)
            return await method(*args)
        return counted


async def test_import_is_one_idempotent_transaction_with_one_event(store: SqlStore) -> None:
    items = [sanctum_item(1, "a" * 40), sanctum_item(2, "b" * 40)]
    assert await run_import(store, "sanctum", items, "mysql://db/app", "cli:t") == (2, 0)
    again = [sanctum_item(1, "a" * 40), sanctum_item(2, "b" * 40), sanctum_item(3, "c" * 40)]
    again = [LegacyImport(i.record.__class__(**{**_fields(i.record), "id": i.record.id + "x"}))
             for i in again]
    assert await run_import(store, "sanctum", again, "mysql://db/app", "cli:t") == (1, 2)
    events = await store.list_events(EventFilter(type="tokens_imported"), 10)
    assert [e.details for e in events] == [
        {"kind": "sanctum", "source": "mysql://db/app", "imported": 1, "skipped": 2},
        {"kind": "sanctum", "source": "mysql://db/app", "imported": 2, "skipped": 0}]
    record = await store.get_token("tok_s1")
    assert record is not None
    assert (record.legacy_kind, record.legacy_hash) == ("sanctum", hashlib.sha256(
        b"a" * 40).hexdigest())
    assert record.scopes == ("*",) and record.created_at == NOW


def _fields(r: TokenRecord) -> dict[str, Any]:
    return {f: getattr(r, f) for f in TokenRecord.__dataclass_fields__}


async def test_a_failing_import_writes_nothing(store: SqlStore) -> None:
    # two records with one token_hash: the second insert fails, the first must not stay
    items = [sanctum_item(1, "a" * 40), sanctum_item(1, "a" * 40)]
    items[1] = LegacyImport(TokenRecord(**{**_fields(items[1].record), "id": "tok_other",
                                           "legacy_hash": "f" * 64}))
    with pytest.raises(Exception):
        await run_import(store, "sanctum", items, "x", "cli:t")
    assert await store.get_token("tok_s1") is None
    assert await store.list_events(EventFilter(type="tokens_imported"), 10) == []


async def test_imported_tokens_are_ordinary_records(store: SqlStore, authority: TokenAuthority,
                                                    tmp_path: Path) -> None:
    path = write_lines(tmp_path / "s.jsonl", [
        {"sha256": hashlib.sha256(b"legacy-one").hexdigest(), "subject": "alice",
         "name": "one", "scopes": ["read"], "expires_at": "2099-01-01T00:00:00Z"},
        {"sha256": hashlib.sha256(b"legacy-two").hexdigest(), "subject": "bob",
         "name": "two", "scopes": ["read", "write"], "last_used_at": "2024-05-01T10:00:00Z"}])
    assert await run_import(store, "sha256", read_jsonl("sha256", path), path, "cli:t") == (2, 0)
    page, _ = await authority.list()
    by_name = {r.name: r for r in page}
    assert by_name["one"].expires_at == datetime(2099, 1, 1, tzinfo=UTC)
    assert by_name["two"].last_used_at == datetime(2024, 5, 1, 10, tzinfo=UTC)
    actor = Actor("cli:t")
    successor, plaintext, old = await authority.rotate(actor, by_name["one"].id)
    assert plaintext.startswith("agt_") and successor.legacy_kind is None  # authgate format
    assert old.grace_until is not None and successor.family == old.family
    revoked = await authority.revoke(actor, by_name["two"].id, "moved")
    assert revoked.revoked_at is not None
    types = [e.type for e in await store.list_events(EventFilter(), 10)]
    assert {"tokens_imported", "token_rotated", "token_revoked"} <= set(types)


def verifier(store: Any, kinds: list[str], **kw: Any) -> LegacyVerifier:
    return LegacyVerifier(kinds, store, PEPPER, **kw)


async def test_sanctum_id_pipe_secret_accepted_near_misses_refused(store: SqlStore) -> None:
    secret = "x7Kq" * 10
    await run_import(store, "sanctum", [sanctum_item(42, secret)], "x", "cli:t")
    v = verifier(store, ["sanctum"])
    found = await v.verify(f"42|{secret}")
    assert found is not None and found.id == "tok_s42"
    for miss in (f"43|{secret}", f"42|{secret}x", f"42|{secret[:-1]}", secret, f"42 |{secret}",
                 f"|{secret}", f"42|{secret}\n", "42|"):
        assert await v.verify(miss) is None, miss
    assert await verifier(store, ["sha256", "bcrypt"]).verify(f"42|{secret}") is None


async def test_sha256_any_string_accepted_near_misses_refused(store: SqlStore,
                                                              tmp_path: Path) -> None:
    token = "sk-live-0123456789abcdef"
    path = write_lines(tmp_path / "s.jsonl", [{"sha256": hashlib.sha256(token.encode())
                                               .hexdigest().upper(), "subject": "carol",
                                               "name": "old", "scopes": ["*"]}])
    await run_import(store, "sha256", read_jsonl("sha256", path), path, "cli:t")
    v = verifier(store, ["sha256"])
    found = await v.verify(token)
    assert found is not None and found.subject == "carol" and found.legacy_kind == "sha256"
    for miss in (token + " ", token[:-1], token.upper(), "x" * 600, "tökén"):
        assert await v.verify(miss) is None, miss
    assert await verifier(store, ["sanctum"]).verify(token) is None


async def test_bcrypt_matched_once_then_found_by_keyed_hash(store: SqlStore,
                                                           tmp_path: Path) -> None:
    tokens = [f"mk_{c}{c}{c}secret{c}" for c in "abc"]
    path = write_lines(tmp_path / "b.jsonl", [
        {"bcrypt": bcrypt_hash(t), "subject": f"u{i}", "name": f"n{i}", "scopes": ["read"]}
        for i, t in enumerate(tokens)])
    assert await run_import(store, "bcrypt", read_jsonl("bcrypt", path, "mk_"), path,
                            "cli:t") == (3, 0)
    v = verifier(store, ["bcrypt"])
    found = await v.verify(tokens[1])
    assert found is not None and found.subject == "u1" and found.legacy_kind == "bcrypt"
    assert found.token_hash == hash_token(tokens[1], PEPPER)  # re-stored under authgate's hash
    checks = v.bcrypt_checks
    assert 1 <= checks <= 3
    again = await v.verify(tokens[1])
    assert again is not None and again.id == found.id
    assert v.bcrypt_checks == checks  # paid once
    # a fresh verifier (another replica) finds it without bcrypt too
    other = verifier(store, ["bcrypt"])
    assert (await other.verify(tokens[1])) is not None and other.bcrypt_checks == 0
    # the matched one is no longer a candidate: a miss now costs the two left
    assert await other.verify("mk_zzzsecretz") is None
    assert other.bcrypt_checks == 2
    # a second import of the same file adds nothing, the matched token included
    assert await run_import(store, "bcrypt", read_jsonl("bcrypt", path, "mk_"), path,
                            "cli:t") == (0, 3)


async def test_bcrypt_refusals_negative_cached_bounded_and_single_flight(
        store: SqlStore, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "b.jsonl", [
        {"bcrypt": bcrypt_hash(f"mk_{i}secret"), "subject": "u", "name": "n", "scopes": []}
        for i in range(8)])
    await run_import(store, "bcrypt", read_jsonl("bcrypt", path, "mk_"), path, "cli:t")
    v = verifier(store, ["bcrypt"], max_candidates=3, negative_max=2)
    assert await v.verify("mk_wrong") is None
    assert v.bcrypt_checks == 3  # capped at max_candidates
    assert await v.verify("mk_wrong") is None
    assert v.bcrypt_checks == 3  # refused candidates are cached
    results = await asyncio.gather(*(v.verify("mk_other") for _ in range(5)))
    assert results == [None] * 5 and v.bcrypt_checks == 6  # one check set for all five
    await v.verify("mk_third")  # the bounded cache forgets the oldest refusal
    assert len(v._refused) == 2
    # near-misses of a real token, and tokens without the prefix
    real = "mk_0secret"
    assert (await verifier(store, ["bcrypt"]).verify(real)) is not None
    for miss in ("mk_0secreT", "mk_0secre", "MK_0secret", "0secret", "xmk_0secret"):
        assert await verifier(store, ["bcrypt"]).verify(miss) is None, miss


async def test_bcrypt_hint_narrows_candidates(store: SqlStore, tmp_path: Path) -> None:
    tokens = [f"mk_{i:04d}rest{i}" for i in range(20)]
    path = write_lines(tmp_path / "b.jsonl", [
        {"bcrypt": bcrypt_hash(t), "subject": "u", "name": "n", "scopes": [], "hint": t[3:7]}
        for t in tokens])
    await run_import(store, "bcrypt", read_jsonl("bcrypt", path, "mk_"), path, "cli:t")
    v = verifier(store, ["bcrypt"])
    assert (await v.verify(tokens[13])) is not None
    assert v.bcrypt_checks == 1  # only the token with that hint was a candidate
    assert await v.verify("mk_9999nothing") is None
    assert v.bcrypt_checks == 1  # no candidate shares the hint: no bcrypt at all


async def test_strings_that_cannot_be_legacy_cost_no_store_call(store: SqlStore) -> None:
    counting = CountingStore(store)
    v = verifier(counting, ["sanctum", "bcrypt"])
    await v.start()
    counting.calls.clear()
    for s in ("agt_whatever", "no-pipe-here", "12|", "x" * 600, "mk_abc"):
        assert await v.verify(s) is None
    assert counting.calls == []
    assert await verifier(counting, []).verify("42|abc") is None
    assert counting.calls == []


async def test_revoked_imported_token_is_returned_for_the_pipeline_to_refuse(
        store: SqlStore, authority: TokenAuthority) -> None:
    await run_import(store, "sanctum", [sanctum_item(5, "s" * 40)], "x", "cli:t")
    await authority.revoke(Actor("cli:t"), "tok_s5", "gone")
    found = await verifier(store, ["sanctum"]).verify("5|" + "s" * 40)
    assert found is not None and found.is_revoked(datetime.now(UTC) + timedelta(seconds=1))


def test_unknown_kind_named() -> None:
    assert check_kinds(["bcrypt", "sanctum", "bcrypt"]) == ("bcrypt", "sanctum")
    with pytest.raises(ValueError, match="'argon2'"):
        check_kinds(["sanctum", "argon2"])


async def test_bcrypt_candidate_cap_holds_across_imports(store: SqlStore, tmp_path: Path) -> None:
    def batch(name: str, start: int, n: int) -> str:
        return write_lines(tmp_path / name, [
            {"bcrypt": bcrypt_hash(f"mk_{i}"), "subject": "u", "name": "n", "scopes": []}
            for i in range(start, start + n)])
    first = batch("a.jsonl", 0, 6)
    assert await run_import(store, "bcrypt", read_jsonl("bcrypt", first, "mk_"), "a",
                            "cli:t") == (6, 0)
    second = batch("b.jsonl", 6, 3)  # 9 unhinted under mk_: over the cap of 8
    with pytest.raises(Refused, match="9 bcrypt tokens with prefix 'mk_'"):
        await run_import(store, "bcrypt", read_jsonl("bcrypt", second, "mk_"), "b", "cli:t")
    page = await store.list_tokens(TokenFilter(), NOW, 100)
    assert len(page) == 6
    with pytest.raises(SourceError, match="line 9: more than 8 tokens share prefix 'mk_'"):
        read_jsonl("bcrypt", batch("c.jsonl", 20, 9), "mk_")

"""Imported tokens accepted on the proxy as their owners hold them (SPEC §10, ``legacy_tokens``),
on both backend pairs: a Sanctum ``ID|SECRET`` (read from a real SQLite Sanctum table), a raw
string imported by its SHA-256, a bcrypt-imported prefixed token (bcrypt paid once, then
re-stored under authgate's keyed hash); near-misses are the ordinary 401 and are charged to the
client's failed_auth_limit; revocation works; off by default."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from gateway.authority import Actor
from gateway.imports.sanctum import read_sanctum
from gateway.imports.sources import read_jsonl, run_import
from gateway.store import open_store

ADMIN = Actor("cli:test")
SANCTUM_SECRET = "S" * 36 + "sanc"
RAW = "legacy-api-key-0123456789"
MK = "mk_live_" + "Q" * 30


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def _import(store_url: str, tmp_path: Path) -> None:
    db = tmp_path / "laravel.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE personal_access_tokens (id INTEGER PRIMARY KEY, tokenable_type "
                  "VARCHAR NOT NULL, tokenable_id INTEGER NOT NULL, name VARCHAR NOT NULL, "
                  "token VARCHAR NOT NULL, abilities TEXT, last_used_at DATETIME, expires_at "
                  "DATETIME, created_at DATETIME, updated_at DATETIME)")
        c.execute("INSERT INTO personal_access_tokens (id, tokenable_type, tokenable_id, name, "
                  "token, abilities, created_at) VALUES (5, 'App\\Models\\User', 7, 'ci', ?, "
                  "'[\"read\"]', '2024-01-02 03:04:05')", (sha(SANCTUM_SECRET),))

    def lines(path: Path, *items: dict[str, Any]) -> str:
        path.write_text("".join(json.dumps(i) + "\n" for i in items))
        return str(path)

    shas = lines(tmp_path / "s.jsonl", {"sha256": sha(RAW), "subject": "bob", "name": "old",
                                         "scopes": ["read"]})
    hashed = bcrypt.hashpw(MK.encode(), bcrypt.gensalt(4)).decode()
    bcrypts = lines(tmp_path / "b.jsonl", {"bcrypt": hashed, "subject": "carol", "name": "mk",
                                            "scopes": ["read"]})
    store = await open_store(store_url)
    try:
        for kind, items in (("sanctum", await read_sanctum(f"sqlite:///{db}")),
                            ("sha256", read_jsonl("sha256", shas)),
                            ("bcrypt", read_jsonl("bcrypt", bcrypts, prefix="mk_live_"))):
            assert (await run_import(store, kind, items, "test", "cli:test"))[0] == 1
    finally:
        await store.close()


async def test_imported_tokens_are_accepted_as_held(start_gateway, backend_pair, http, tmp_path):
    await _import(backend_pair[0], tmp_path)
    rg = await start_gateway(legacy_tokens=["sanctum", "sha256", "bcrypt"])
    legacy = rg.gateway.services.legacy
    assert legacy is not None

    async def ask(token: str) -> Any:
        return await http.get(f"{rg.proxy}/echo", headers={"Authorization": f"Bearer {token}"})

    for token, subject in ((f"5|{SANCTUM_SECRET}", "7"), (RAW, "bob"), (MK, "carol")):
        r = await ask(token)
        assert r.status_code == 200, (token, r.text)
        got = {k.lower(): v for k, v in r.json()["headers"]}
        assert got["x-auth-subject"].endswith(subject), got
    checks = legacy.bcrypt_checks
    assert checks == 1
    for _ in range(3):  # paid once: re-stored under authgate's keyed hash
        assert (await ask(MK)).status_code == 200
    assert legacy.bcrypt_checks == checks
    # near-misses: the ordinary 401, nothing else
    for near in (f"6|{SANCTUM_SECRET}", f"5|{SANCTUM_SECRET}x", RAW + "x", MK + "x", MK[:-1],
                 "mk_live_", "agt_nope"):
        r = await ask(near)
        assert r.status_code == 401 and r.json()["error"] == "invalid_token", (near, r.text)
        assert "bearer" in r.headers["www-authenticate"].lower()
    # revocation applies to an imported token like any other
    bob = await rg.gateway.store.get_by_hash(f"sha256:{sha(RAW)}")
    assert bob is not None
    await rg.gateway.authority.revoke(ADMIN, bob.id)
    r = await ask(RAW)
    assert r.status_code == 401 and "revoked" in r.json()["error_description"]


async def test_refused_legacy_strings_count_against_the_failed_auth_limit(
        start_gateway, backend_pair, http, tmp_path):
    await _import(backend_pair[0], tmp_path)
    rg = await start_gateway(legacy_tokens=["bcrypt", "sha256"], failed_auth_limit="3/minute")
    statuses = []
    for n in range(5):
        r = await http.get(f"{rg.proxy}/echo", headers={"Authorization": f"Bearer {MK}{n}"})
        statuses.append(r.status_code)
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429]
    # the 4th is checked, then its charge is refused (429); from then on the address is braked
    # before any work: failed_auth_limit + 1 checks per window (the pipeline's brake)
    assert rg.gateway.services.legacy.bcrypt_checks == 4


@pytest.mark.parametrize("configured", [None, ["sha256"]])
async def test_off_by_default_and_only_the_kinds_configured(start_gateway, backend_pair, http,
                                                            tmp_path, configured):
    await _import(backend_pair[0], tmp_path)
    rg = await start_gateway(**({"legacy_tokens": configured} if configured else {}))
    assert (rg.gateway.services.legacy is None) == (configured is None)
    for token in (f"5|{SANCTUM_SECRET}", MK) + (() if configured else (RAW,)):
        r = await http.get(f"{rg.proxy}/echo", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_token"

"""The CLI end to end, in a subprocess, against SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def authgate(*args: str, store: str, env: dict[str, str] | None = None,
             check: int | None = 0) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
    full_env.update({"AUTHGATE_STORE": store, "AUTHGATE_PEPPER": "cli-test"} | (env or {}))
    proc = subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, env=full_env, timeout=60)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def cli_store(store_url, store):  # `store` migrates and empties the database first
    return store_url


def test_create_list_show_rotate_revoke(cli_store):
    created = json.loads(authgate("tokens", "create", "--subject", "alice", "--name", "ci",
                                  "--scope", "read", "--json", store=cli_store).stdout)
    assert created["token"].startswith("agt_") and created["status"] == "active"
    assert created["scopes"] == ["read"] and created["subject"] == "alice"

    listed = json.loads(authgate("tokens", "list", "--json", store=cli_store).stdout)
    assert [r["id"] for r in listed] == [created["id"]] and "token" not in listed[0]

    shown = json.loads(authgate("tokens", "show", created["id"], "--json",
                                store=cli_store).stdout)
    assert shown["id"] == created["id"] and shown["hint"] == created["token"][:8]

    rotated = json.loads(authgate("tokens", "rotate", created["id"], "--grace", "1h", "--json",
                                  store=cli_store).stdout)
    assert rotated["family"] == created["family"] and rotated["rotated_from"] == created["id"]
    assert rotated["token"] != created["token"]

    out = authgate("tokens", "revoke", rotated["id"], "--reason", "done", store=cli_store).stdout
    assert out.startswith(f"revoked {rotated['id']}")
    revoked = json.loads(authgate("tokens", "show", rotated["id"], "--json",
                                  store=cli_store).stdout)
    assert revoked["status"] == "revoked" and revoked["revoked_reason"] == "done"
    active = json.loads(authgate("tokens", "list", "--status", "active", "--json",
                                 store=cli_store).stdout)
    assert [r["id"] for r in active] == [created["id"]]  # still in its grace period
    assert created["token"] not in authgate("tokens", "list", store=cli_store).stdout

    events = json.loads(authgate("events", "--json", store=cli_store).stdout)
    assert [e["type"] for e in events] == ["token_revoked", "token_rotated", "token_created"]
    assert all(e["actor"].startswith("cli:") for e in events)

    stats = json.loads(authgate("stats", "--json", store=cli_store).stdout)
    assert (stats["active"], stats["revoked"], stats["total"]) == (1, 1, 2)


def test_bulk_revoke_and_cleanup(cli_store):
    for name in ("a", "b"):
        authgate("tokens", "create", "--subject", "bob", "--name", name, store=cli_store)
    out = authgate("tokens", "revoke", "--subject", "bob", "--json", store=cli_store).stdout
    assert json.loads(out) == {"revoked": 2}
    authgate("tokens", "create", "--subject", "carol", "--name", "c", store=cli_store)
    out = authgate("tokens", "revoke-all", "--yes", "--reason", "drill", "--json",
                   store=cli_store).stdout
    assert json.loads(out) == {"revoked": 1}
    out = authgate("tokens", "cleanup", "--older-than", "0s", "--json", store=cli_store).stdout
    assert json.loads(out) == {"deleted": 3}


@pytest.mark.parametrize(("args", "option"), [
    (["tokens", "create", "--subject", "a", "--name", "b", "--expires-in", "banana"],
     "--expires-in"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--rate-limit", "5/fortnight"],
     "--rate-limit"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--scope", "bad scope"], "--scope"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--role", "nope"], "--role"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--metadata", "novalue"],
     "--metadata"),
    (["tokens", "create", "--name", "b"], "--subject"),
    (["tokens", "list", "--limit", "-5"], "--limit"),
    (["tokens", "list", "--status", "zombie"], "--status"),
    (["tokens", "revoke-all", "--reason", "x"], "--yes"),
    (["tokens", "revoke"], "ID"),
    (["tokens", "rotate", "tok_x", "--grace", "forever"], "--grace"),
    (["tokens", "frobnicate"], "frobnicate"),
])
def test_bad_usage_exits_2_naming_the_option(cli_store, args, option):
    proc = authgate(*args, store=cli_store, check=2)
    assert option in proc.stderr.strip().splitlines()[-1]
    assert json.loads(authgate("tokens", "list", "--json", store=cli_store).stdout) == []


def test_operation_failures_exit_1_with_one_line(cli_store):
    for args in (["tokens", "show", "tok_missing"], ["tokens", "revoke", "tok_missing"],
                 ["tokens", "rotate", "tok_missing"]):
        proc = authgate(*args, store=cli_store, check=1)
        assert proc.stderr.strip() == "Error: token tok_missing not found"
    created = json.loads(authgate("tokens", "create", "--subject", "a", "--name", "b", "--json",
                                  store=cli_store).stdout)
    authgate("tokens", "revoke", created["id"], store=cli_store)
    proc = authgate("tokens", "rotate", created["id"], store=cli_store, check=1)
    assert "revoked" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bad_config_exits_1_naming_the_key(tmp_path):
    store = f"sqlite:///{tmp_path}/x.db"
    proc = authgate("tokens", "list", store=store, env={"AUTHGATE_CACHE": "memcached://x"},
                    check=1)
    assert proc.stderr.strip().startswith("Error: config: cache:")


def test_unreachable_store_exits_1():
    proc = authgate("tokens", "list", store="postgresql://postgres@127.0.0.1:1/x", check=1)
    assert "unavailable" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_migrate_is_idempotent(cli_store):
    assert authgate("migrate", store=cli_store).stdout.strip() == "schema is up to date"


def test_store_flag_overrides_environment(tmp_path):
    flag_store = f"sqlite:///{tmp_path}/flag.db"
    authgate("tokens", "create", "--subject", "a", "--name", "b", "--store", flag_store,
             store=f"sqlite:///{tmp_path}/env.db")
    listed = authgate("tokens", "list", "--json", store=flag_store).stdout
    assert len(json.loads(listed)) == 1
    assert json.loads(authgate("tokens", "list", "--json",
                               store=f"sqlite:///{tmp_path}/env.db").stdout) == []

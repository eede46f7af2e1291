"""The commands for the admin API's other operations (SPEC §5), on SQLite and PostgreSQL:
``tokens update`` (PATCH), ``tokens usage``, CSV of the token list and the audit log, ``events``
filters, ``tokens delete --json``. Where the API answers the same question, the command's output
is compared with the API's own answer (the admin app in process, on the same store).

The commands run in process through click's runner; a thread where the test itself is async (the
CLI runs its own event loop, as the console script does).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from gateway.admin import build_admin_app
from gateway.admin.export import EVENT_COLUMNS, TOKEN_COLUMNS
from gateway.cli import main
from gateway.config import Settings
from gateway.services import Services
from gateway.store import SqlStore, Usage

PEPPER = "cli-test"
BOOT = "bootstrap-admin-secret-0123456789"


def run(*args: str, store: str, env: dict[str, str] | None = None) -> Result:
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}
    clean |= {"AUTHGATE_STORE": store, "AUTHGATE_PEPPER": PEPPER} | (env or {})
    # catch_exceptions=False: an exception the CLI did not handle fails the test
    return CliRunner().invoke(main, list(args), env=clean, catch_exceptions=False)


def ok(*args: str, store: str) -> str:
    result = run(*args, store=store)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result.stdout


def as_json(*args: str, store: str) -> Any:
    """--json: stdout is one JSON value and nothing else."""
    return json.loads(ok(*args, "--json", store=store))


def usage_error(*args: str, store: str) -> str:
    result = run(*args, store=store)
    assert result.exit_code == 2, (args, result.stdout, result.stderr)
    assert result.stdout == ""
    return result.stderr.strip().splitlines()[-1]


def failure(*args: str, store: str) -> str:
    result = run(*args, store=store)
    assert result.exit_code == 1, (args, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def cli_store(store_url: str, store: SqlStore) -> str:  # `store` migrates and empties it first
    return store_url


@asynccontextmanager
async def admin_api(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """The admin API on the same store, in process."""
    settings = Settings(store=store_url, pepper=PEPPER, admin_token=BOOT)
    async with Services.opened(settings) as services:
        transport = httpx.ASGITransport(app=build_admin_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin",
                                     headers={"Authorization": f"Bearer {BOOT}"}) as client:
            yield client


def _create(store: str, *extra: str, subject: str = "alice", name: str = "ci") -> dict[str, Any]:
    created: dict[str, Any] = as_json("tokens", "create", "--subject", subject, "--name", name,
                                      *extra, store=store)
    return created


# --- tokens update ---------------------------------------------------------------------------


def test_update_changes_only_the_fields_given(cli_store: str) -> None:
    created = _create(cli_store, "--scope", "read", "--rate-limit", "100/minute",
                      "--expires-in", "30d", "--metadata", "team=ops")
    tid = created["id"]
    before = {k: v for k, v in created.items() if k != "token"}

    renamed = as_json("tokens", "update", tid, "--name", "renamed", store=cli_store)
    assert renamed == {**before, "name": "renamed"}

    limited = as_json("tokens", "update", tid, "--rate-limit", "5/second", store=cli_store)
    assert limited == {**renamed, "rate_limit": {"limit": 5, "window_s": 1}}
    cleared = as_json("tokens", "update", tid, "--rate-limit", "default", store=cli_store)
    assert cleared == {**renamed, "rate_limit": None}

    scoped = as_json("tokens", "update", tid, "--scope", "write", "--scope", "reports:*",
                     store=cli_store)
    assert sorted(scoped["scopes"]) == ["reports:*", "write"]
    assert {k: v for k, v in scoped.items() if k != "scopes"} == {
        k: v for k, v in cleared.items() if k != "scopes"}

    later = as_json("tokens", "update", tid, "--expires-in", "2d", store=cli_store)
    expires = datetime.fromisoformat(later["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=2))) < timedelta(minutes=1)
    assert as_json("tokens", "update", tid, "--no-expiry", store=cli_store)["expires_at"] is None

    meta = as_json("tokens", "update", tid, "--metadata", "a=1", "--metadata", "b=x=y",
                   store=cli_store)
    assert meta["metadata"] == {"a": "1", "b": "x=y"}  # replaces the object, as PATCH does
    emptied = as_json("tokens", "update", tid, "--no-metadata", store=cli_store)
    assert emptied["metadata"] == {} and emptied["name"] == "renamed"

    text = ok("tokens", "update", tid, "--name", "plain", store=cli_store)
    assert "plain" in text and tid in text
    updates = as_json("events", "--type", "token_updated", store=cli_store)
    assert len(updates) == 9 and all(e["token_id"] == tid for e in updates)
    assert updates[0]["details"]["changes"] == ["name"]


@pytest.mark.parametrize(("args", "option"), [
    (["--rate-limit", "5/fortnight"], "--rate-limit"),
    (["--rate-limit", "0/minute"], "--rate-limit"),
    (["--rate-limit", "999999999999/second"], "--rate-limit"),
    (["--expires-in", "banana"], "--expires-in"),
    (["--expires-in", "0"], "--expires-in"),
    (["--expires-in", "999999999d"], "--expires-in"),
    (["--expires-in", "1d", "--no-expiry"], "--no-expiry"),
    (["--metadata", "novalue"], "--metadata"),
    (["--metadata", "k=v", "--no-metadata"], "--no-metadata"),
    (["--scope", "bad scope"], "--scope"),
    (["--name", ""], "--name"),
    (["--name", "a\u2028b"], "--name"),
    ([], "--name"),  # nothing to change
    (["--frobnicate"], "--frobnicate"),
])
def test_update_bad_usage_exits_2_naming_the_option_and_changes_nothing(
        cli_store: str, args: list[str], option: str) -> None:
    created = _create(cli_store, "--scope", "read")
    assert option in usage_error("tokens", "update", created["id"], *args, store=cli_store)
    shown = as_json("tokens", "show", created["id"], store=cli_store)
    assert shown == {k: v for k, v in created.items() if k != "token"}


def test_update_unknown_id_exits_1(cli_store: str) -> None:
    line = failure("tokens", "update", "tok_missing", "--name", "x", store=cli_store)
    assert line == "Error: token tok_missing not found"
    assert usage_error("tokens", "update", "--name", "x", store=cli_store).endswith(
        "Missing argument 'ID'.")


async def test_update_matches_the_api_patch(cli_store: str) -> None:
    created = await asyncio.to_thread(_create, cli_store, "--rate-limit", "10/minute")
    got = await asyncio.to_thread(as_json, "tokens", "update", created["id"], "--name", "n2",
                                  "--rate-limit", "default", "--no-expiry", store=cli_store)
    async with admin_api(cli_store) as api:
        r = await api.get(f"/v1/tokens/{created['id']}")
        assert r.status_code == 200 and r.json() == got
        r = await api.patch(f"/v1/tokens/{created['id']}", json={"name": "n3"})
        assert r.status_code == 200
    shown = await asyncio.to_thread(as_json, "tokens", "show", created["id"], store=cli_store)
    assert shown == {**got, "name": "n3"}


# --- tokens usage ----------------------------------------------------------------------------


async def test_usage_per_day_and_last_ips_as_the_api(cli_store: str, store: SqlStore) -> None:
    created = await asyncio.to_thread(_create, cli_store)
    tid = created["id"]
    now = datetime.now(UTC).replace(microsecond=0)
    yesterday = now - timedelta(days=1)
    await store.record_usage([Usage(tid, 3, yesterday, "10.0.0.1", {yesterday.date(): 3},
                                    {"10.0.0.1": [yesterday, 2], "10.0.0.2": [yesterday, 1]})])
    await store.record_usage([Usage(tid, 2, now, "2001:db8::7", {now.date(): 2},
                                    {"2001:db8::7": [now, 2]})])

    got = await asyncio.to_thread(as_json, "tokens", "usage", tid, "--days", "3",
                                  store=cli_store)
    assert got["token_id"] == tid
    assert [d["requests"] for d in got["days"]] == [0, 3, 2]
    assert got["days"][-1]["day"] == now.date().isoformat()
    assert [ip["ip"] for ip in got["last_ips"]] == ["2001:db8::7", "10.0.0.1", "10.0.0.2"]
    async with admin_api(cli_store) as api:
        r = await api.get(f"/v1/tokens/{tid}/usage", params={"days": 3})
        assert r.status_code == 200 and r.json() == got
        r = await api.get(f"/v1/tokens/{tid}/usage")
    default = await asyncio.to_thread(as_json, "tokens", "usage", tid, store=cli_store)
    assert default == r.json() and len(default["days"]) == 30

    text = await asyncio.to_thread(ok, "tokens", "usage", tid, "--days", "2", store=cli_store)
    assert "5 in 2 days" in text and "2001:db8::7" in text and "10.0.0.2" in text


def test_usage_bad_input(cli_store: str) -> None:
    assert failure("tokens", "usage", "tok_missing", store=cli_store) == (
        "Error: token tok_missing not found")
    tid = _create(cli_store)["id"]
    for days in ("0", "367", "x"):
        assert "--days" in usage_error("tokens", "usage", tid, "--days", days, store=cli_store)
    fresh = as_json("tokens", "usage", tid, "--days", "1", store=cli_store)
    assert fresh["last_ips"] == [] and [d["requests"] for d in fresh["days"]] == [0]
    assert "none yet" in ok("tokens", "usage", tid, store=cli_store)


# --- CSV -------------------------------------------------------------------------------------


HOSTILE_NAME = '=HYPERLINK("http://evil.example","x")'


async def test_csv_is_the_apis_csv_byte_for_byte(cli_store: str) -> None:
    await asyncio.to_thread(_create, cli_store, "--scope", "read", "--rate-limit", "5/second",
                            "--metadata", "team=-ops", subject="+alice", name=HOSTILE_NAME)
    second = await asyncio.to_thread(_create, cli_store, subject="@bob", name="plain, \"quoted\"")
    await asyncio.to_thread(ok, "tokens", "revoke", second["id"], "--reason", "-1+1",
                            store=cli_store)

    def cli_csv(*args: str) -> str:
        result = run(*args, store=cli_store)
        assert result.exit_code == 0, result.stderr
        return result.stdout_bytes.decode()

    tokens_csv = await asyncio.to_thread(cli_csv, "tokens", "list", "--csv")
    events_csv = await asyncio.to_thread(cli_csv, "events", "--csv")
    async with admin_api(cli_store) as api:
        api_tokens = (await api.get("/v1/tokens", params={"format": "csv"})).text
        api_events = (await api.get("/v1/events", params={"format": "csv"})).text
    assert tokens_csv == api_tokens and events_csv == api_events

    rows = list(csv.reader(io.StringIO(tokens_csv)))
    assert tuple(rows[0]) == TOKEN_COLUMNS and len(rows) == 3
    first = dict(zip(TOKEN_COLUMNS, rows[2], strict=True))  # oldest last
    assert first["name"] == "'" + HOSTILE_NAME and first["subject"] == "'+alice"
    assert first["rate_limit"] == "5/second" and first["metadata"] == '{"team": "-ops"}'
    revoked = dict(zip(TOKEN_COLUMNS, rows[1], strict=True))
    assert revoked["subject"] == "'@bob" and revoked["revoked_reason"] == "'-1+1"
    assert revoked["name"] == 'plain, "quoted"'
    ev = list(csv.reader(io.StringIO(events_csv)))
    assert tuple(ev[0]) == EVENT_COLUMNS
    assert [r[2] for r in ev[1:]] == ["token_revoked", "token_created", "token_created"]


def test_csv_filters_limit_and_bad_usage(cli_store: str) -> None:
    for i in range(3):
        _create(cli_store, subject="carol" if i else "dave", name=f"t{i}")
    rows = list(csv.reader(io.StringIO(ok("tokens", "list", "--csv", store=cli_store))))
    assert [r[2] for r in rows[1:]] == ["t2", "t1", "t0"]  # every match, newest first
    rows = list(csv.reader(io.StringIO(ok("tokens", "list", "--csv", "--limit", "2",
                                          store=cli_store))))
    assert [r[2] for r in rows[1:]] == ["t2", "t1"]
    rows = list(csv.reader(io.StringIO(ok("tokens", "list", "--csv", "--subject", "dave",
                                          store=cli_store))))
    assert [r[2] for r in rows[1:]] == ["t0"]
    empty = ok("tokens", "list", "--csv", "--status", "revoked", store=cli_store)
    assert empty == ",".join(TOKEN_COLUMNS) + "\n"
    assert "--csv" in usage_error("tokens", "list", "--json", "--csv", store=cli_store)
    assert "--csv" in usage_error("events", "--json", "--csv", store=cli_store)


def test_list_by_family(cli_store: str) -> None:
    created = _create(cli_store)
    _create(cli_store, name="other")
    rotated = as_json("tokens", "rotate", created["id"], store=cli_store)
    family = as_json("tokens", "list", "--family", created["family"], store=cli_store)
    assert [r["id"] for r in family] == [rotated["id"], created["id"]]


# --- events ----------------------------------------------------------------------------------


def test_events_filters(cli_store: str) -> None:
    created = _create(cli_store)
    ok("tokens", "revoke", created["id"], store=cli_store)
    assert [e["type"] for e in as_json("events", "--type", "token_revoked",
                                       store=cli_store)] == ["token_revoked"]
    assert len(as_json("events", "--since", "1h", store=cli_store)) == 2
    today = datetime.now(UTC).date().isoformat()
    assert len(as_json("events", "--since", today, store=cli_store)) == 2
    assert as_json("events", "--since", "2099-01-01T00:00:00Z", store=cli_store) == []
    assert as_json("events", "--since", "2099-01-01T00:00:00+02:00", store=cli_store) == []
    assert len(as_json("events", "--limit", "1", store=cli_store)) == 1
    assert len(as_json("events", "--token-id", created["id"], store=cli_store)) == 2
    for bad in ("banana", "2026-13-01", "-5m"):
        assert "--since" in usage_error("events", "--since", bad, store=cli_store)
    text = ok("events", store=cli_store)
    assert "token_revoked" in text and created["id"] in text


# --- delete ----------------------------------------------------------------------------------


def test_delete_json_and_unknown(cli_store: str) -> None:
    tid = _create(cli_store)["id"]
    assert as_json("tokens", "delete", tid, store=cli_store) == {"id": tid, "deleted": True}
    assert failure("tokens", "delete", tid, store=cli_store) == f"Error: token {tid} not found"
    assert as_json("tokens", "list", store=cli_store) == []

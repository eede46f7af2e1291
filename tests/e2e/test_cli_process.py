"""The new commands through the real console entry (``python -m gateway``), on SQLite and
PostgreSQL: stdout holds only what was asked for, exit 0/1/2 as SPEC §5, never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest


def authgate(*args: str, store: str, check: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
    env["AUTHGATE_PEPPER"] = "cli-test"
    # --store on the group: the spelling every command accepts
    proc = subprocess.run([sys.executable, "-m", "gateway", "--store", store, *args],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == check, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc


@pytest.fixture
def cli_store(store_url, store):  # `store` migrates and empties the database first
    return store_url


def test_update_usage_and_csv_end_to_end(cli_store):
    created = json.loads(authgate("tokens", "create", "--subject", "alice", "--name", "=1+1",
                                  "--rate-limit", "10/minute", "--json", store=cli_store).stdout)
    tid = created["id"]

    proc = authgate("tokens", "update", tid, "--rate-limit", "5/fortnight", store=cli_store,
                    check=2)
    assert "--rate-limit" in proc.stderr.strip().splitlines()[-1] and proc.stdout == ""
    proc = authgate("tokens", "update", "tok_missing", "--name", "x", store=cli_store, check=1)
    assert proc.stderr.strip() == "Error: token tok_missing not found"

    updated = json.loads(authgate("tokens", "update", tid, "--rate-limit", "default",
                                  "--json", store=cli_store).stdout)
    assert updated["rate_limit"] is None and updated["name"] == "=1+1"

    usage = json.loads(authgate("tokens", "usage", tid, "--days", "7", "--json",
                                store=cli_store).stdout)
    assert usage["token_id"] == tid and len(usage["days"]) == 7 and usage["last_ips"] == []
    authgate("tokens", "usage", "tok_missing", store=cli_store, check=1)

    out = authgate("tokens", "list", "--csv", store=cli_store).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["id"], r["name"], r["rate_limit"]) for r in rows] == [(tid, "'=1+1", "")]
    out = authgate("events", "--type", "token_updated", "--since", "1h", "--csv",
                   store=cli_store).stdout
    assert [r["type"] for r in csv.DictReader(io.StringIO(out))] == ["token_updated"]

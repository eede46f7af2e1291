"""``authgate keys rotate`` (SPEC §11) on SQLite and PostgreSQL: the new key is in the store's
key set, listed at once, signing after the publish delay while the previous key still signs and
stays listed; ``--json`` is one object; a store that is down is exit 1 with one line. One run of
the real console script (a subprocess) on each store.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import datetime

import pytest
from click.testing import CliRunner, Result

from gateway.assertion import PUBLISH_DELAY_S, listed_at, load_keys, signer_at
from gateway.cli import main
from gateway.store import SqlStore


def run(*args: str, store: str) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}
    env["AUTHGATE_STORE"] = store
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture
async def keystore(store: SqlStore) -> SqlStore:
    async with store.driver.transaction() as tx:  # one PostgreSQL database per run
        await tx.execute("DELETE FROM signing_keys")
    return store


async def test_rotate_publishes_then_signs(store_url: str, keystore: SqlStore) -> None:
    first = (await load_keys(keystore))[0]  # what a replica's start creates
    result = await asyncio.to_thread(run, "keys", "rotate", "--json", store=store_url)
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert set(made) == {"kid", "created_at", "active_from"}
    assert _epoch(made["active_from"]) - _epoch(made["created_at"]) == pytest.approx(
        PUBLISH_DELAY_S, abs=1)

    keys = await load_keys(keystore)
    assert [k.kid for k in keys] == [first.kid, made["kid"]]
    now = time.time()
    assert {k.kid for k in listed_at(keys, now, 60)[0]} == {first.kid, made["kid"]}
    assert signer_at(keys, now)[0].kid == first.kid  # the old key signs until the new is listed
    later = keys[1].active_from + 1
    assert signer_at(keys, later)[0].kid == made["kid"]
    assert {k.kid for k in listed_at(keys, later, 60)[0]} == {first.kid, made["kid"]}

    text = await asyncio.to_thread(run, "keys", "rotate", store=store_url)
    assert text.exit_code == 0 and text.stderr == ""
    newest = (await load_keys(keystore))[-1]
    assert newest.kid in text.stdout and "signs with it from" in text.stdout


def test_rotate_on_a_store_that_is_down_exits_1() -> None:
    result = run("keys", "rotate", store="postgresql://postgres@127.0.0.1:1/x")
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    bad = run("keys", "rotate", "--frobnicate", store="sqlite:///unused.db")
    assert bad.exit_code == 2 and "--frobnicate" in bad.stderr.strip().splitlines()[-1]


def test_console_script_rotates(store_url: str, keystore: SqlStore) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHGATE_")}
    proc = subprocess.run([sys.executable, "-m", "gateway", "--store", store_url, "keys",
                           "rotate", "--json"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and json.loads(proc.stdout)["kid"]

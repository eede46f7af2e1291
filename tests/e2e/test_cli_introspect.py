"""``authgate tokens introspect`` on SQLite and PostgreSQL: the token from standard input, the
same answer as the admin API's POST /v1/introspect; bad input exit 2, a store that is down 1."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.store import SqlStore
from tests.e2e.test_cli_admin_ops import admin_api, as_json, ok

PEPPER = "cli-test"


@pytest.fixture
def cli_store(store_url: str, store: SqlStore) -> str:  # `store` migrates and empties it first
    return store_url


def introspect(token: str, *args: str, store: str) -> Result:
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}
    env |= {"AUTHGATE_STORE": store, "AUTHGATE_PEPPER": PEPPER}
    return CliRunner().invoke(main, ["tokens", "introspect", *args], input=token, env=env,
                              catch_exceptions=False)


def answer(token: str, store: str) -> object:
    result = introspect(token + "\n", "--json", store=store)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_introspect_answers_as_the_api(cli_store: str) -> None:
    created = await asyncio.to_thread(as_json, "tokens", "create", "--subject", "alice",
                                      "--name", "ci", "--scope", "read", "--expires-in", "1d",
                                      store=cli_store)
    other = await asyncio.to_thread(as_json, "tokens", "create", "--subject", "bob",
                                    "--name", "gone", store=cli_store)
    await asyncio.to_thread(ok, "tokens", "revoke", other["id"], store=cli_store)
    cases = [created["token"], other["token"], "agt_nonsense", "not a token at all"]
    got = [await asyncio.to_thread(answer, t, cli_store) for t in cases]
    async with admin_api(cli_store) as api:
        for token, mine in zip(cases, got, strict=True):
            r = await api.post("/v1/introspect", data={"token": token})
            assert r.status_code == 200 and r.json() == mine
    assert got[0]["active"] is True and got[0]["sub"] == "alice"  # type: ignore[index]
    assert got[0]["jti"] == created["id"] and got[0]["scope"] == "read"  # type: ignore[index]
    assert got[1:] == [{"active": False}] * 3

    text = await asyncio.to_thread(introspect, created["token"], store=cli_store)
    assert text.exit_code == 0 and "active      true" in text.stdout and "alice" in text.stdout
    # the secret is never echoed back
    assert created["token"] not in text.stdout + text.stderr


def test_introspect_bad_input(cli_store: str) -> None:
    for stdin in ("", "\n", "x" * 513):
        result = introspect(stdin, store=cli_store)
        assert result.exit_code == 2 and "standard input" in result.stderr.strip().splitlines()[-1]
    down = introspect("agt_x\n", store="postgresql://postgres@127.0.0.1:1/x")
    assert down.exit_code == 1 and len(down.stderr.strip().splitlines()) == 1
    assert "Traceback" not in down.stderr

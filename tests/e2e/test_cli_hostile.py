"""Hostile values on the command line (issue 9, finding 8), on SQLite and PostgreSQL: exit 2
naming the option, or exit 1 with one line; never a traceback, and nothing stored.

The commands run in-process through click's runner (the same ``main`` as the console script,
without an interpreter start per case); tests/e2e/test_cli.py and test_hostile_input.py run the
real process.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner, Result

from gateway.cli import main


def run(*args: str, store: str) -> Result:
    env = {k: None for k in os.environ if k.startswith("AUTHGATE_")}  # type: ignore[misc]
    env |= {"AUTHGATE_STORE": store, "AUTHGATE_PEPPER": "cli-test"}
    # catch_exceptions=False: an exception the CLI did not handle fails the test, as the
    # traceback it would print would
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def cli_store(store_url, store):  # `store` migrates and empties the database first
    return store_url


HOSTILE = [
    (["tokens", "create", "--subject", "a", "--name", "b", "--rate-limit", "999999999999/second"],
     "--rate-limit"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--rate-limit", "9999999999/day"],
     "--rate-limit"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--expires-in", "999999999d"],
     "--expires-in"),
    (["tokens", "create", "--subject", "a\x85", "--name", "b"], "--subject"),
    (["tokens", "create", "--subject", "a\udcff", "--name", "b"], "--subject"),  # not UTF-8
    (["tokens", "create", "--subject", "a", "--name", "b\u2028"], "--name"),
    (["tokens", "create", "--subject", "a", "--name", "b", "--metadata", "k=\udcff"],
     "--metadata"),
    (["tokens", "list", "--subject", "\udcff"], "--subject"),
    (["tokens", "list", "--limit", "9" * 40], "--limit"),
    (["tokens", "rotate", "tok_x", "--grace", "999999999d"], "--grace"),
    (["tokens", "cleanup", "--older-than", "999999999d"], "--older-than"),
    (["tokens", "revoke", "--subject", "a\x01"], "--subject"),
    (["tokens", "revoke", "--family", "\udcff"], "--family"),
    (["events", "--subject", "\x00x"], "--subject"),
]


def test_hostile_values_exit_2_naming_the_option_and_store_nothing(cli_store):
    for args, option in HOSTILE:
        result = run(*args, store=cli_store)
        assert result.exit_code == 2, (args, result.output, result.stderr)
        assert option in result.stderr.strip().splitlines()[-1], (args, result.stderr)
    assert json.loads(run("tokens", "list", "--json", store=cli_store).stdout) == []
    assert json.loads(run("events", "--json", store=cli_store).stdout) == []


def test_odd_ids_are_unknown_exit_1_with_one_line(cli_store):
    for command in ("show", "revoke", "rotate", "delete"):
        for token_id in ("\udcff", "tok_\x7f", "x" * 10_000):
            result = run("tokens", command, token_id, store=cli_store)
            assert result.exit_code == 1, (command, token_id[:10], result.output)
            assert len(result.stderr.strip().splitlines()) == 1
            assert "not found" in result.stderr

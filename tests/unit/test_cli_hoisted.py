"""``--config`` / ``--store`` on the ``authgate`` group (SPEC §5: every command takes them once),
in process: they reach every command's settings, the command's own spelling keeps working and
wins when both are given; the command tree lists every command.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gateway import cli_base
from gateway.cli import main
from gateway.config import Settings

CLEAN_ENV: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**CLEAN_ENV, **(env or {})},
                              catch_exceptions=False)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings a store command would have opened its services with."""
    seen: list[Settings] = []

    async def with_store(settings: Settings, fn: Any, *args: Any, **kwargs: Any) -> None:
        seen.append(settings)

    monkeypatch.setattr(cli_base, "_with_store", with_store)
    return seen


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "authgate.yaml"
    path.write_text(f"store: sqlite:///{tmp_path}/from-file.db\n"
                    "cache: redis://127.0.0.1:6379/14\nlisten: 127.0.0.1:7002\n")
    return path


COMMANDS = [["stats"], ["tokens", "list"], ["tokens", "list", "--csv"], ["tokens", "show", "x"],
            ["tokens", "create", "--subject", "a", "--name", "b"],
            ["tokens", "update", "x", "--name", "n"], ["tokens", "usage", "x"],
            ["tokens", "revoke", "x"], ["tokens", "rotate", "x"], ["tokens", "delete", "x"],
            ["tokens", "cleanup"], ["tokens", "revoke-all", "--yes", "--reason", "r"],
            ["events"], ["events", "--csv"],
            ["subjects", "suspend", "s"], ["subjects", "resume", "s"], ["subjects", "list"]]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_group_options_reach_every_store_command(opened: list[Settings], config_file: Path,
                                                 tmp_path: Path, command: list[str]) -> None:
    group, own = f"sqlite:///{tmp_path}/group.db", f"sqlite:///{tmp_path}/own.db"
    runs = [["--store", group, *command],
            ["--config", str(config_file), *command],
            ["--store", group, *command, "--store", own],  # the command's own wins
            ["--config", str(config_file), *command, "--store", own],
            [*command, "--store", own]]  # the per-command spelling as before
    for args in runs:
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
    assert [s.store for s in opened] == [group, f"sqlite:///{tmp_path}/from-file.db", own, own,
                                         own]
    assert opened[1].cache == opened[3].cache == "redis://127.0.0.1:6379/14"


def test_group_options_reach_serve(monkeypatch: pytest.MonkeyPatch, config_file: Path,
                                   tmp_path: Path) -> None:
    import gateway.server

    seen: list[Settings] = []
    monkeypatch.setattr(gateway.server, "run", lambda settings, **_: seen.append(settings))
    group = f"sqlite:///{tmp_path}/group.db"
    assert invoke("--config", str(config_file), "--store", group, "serve").exit_code == 0
    assert invoke("--store", group, "serve", "--store", "sqlite:///own.db",
                  "--listen", "127.0.0.1:7777").exit_code == 0
    assert (seen[0].store, seen[0].listen, seen[0].cache) == (
        group, "127.0.0.1:7002", "redis://127.0.0.1:6379/14")
    assert (seen[1].store, seen[1].listen) == ("sqlite:///own.db", "127.0.0.1:7777")


def test_demo_refuses_group_options(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.demo

    monkeypatch.setattr(gateway.demo, "run_demo", lambda port: None)
    result = invoke("--store", "sqlite:///x.db", "demo")
    assert result.exit_code == 2 and "--store" in result.stderr.strip().splitlines()[-1]


def test_group_options_reach_migrate_keys_and_import(tmp_path: Path, config_file: Path) -> None:
    store = f"sqlite:///{tmp_path}/real.db"
    assert invoke("--store", store, "migrate").exit_code == 0
    assert (tmp_path / "real.db").exists()
    assert invoke("--config", str(config_file), "migrate").exit_code == 0
    assert (tmp_path / "from-file.db").exists()

    rotated = invoke("--store", store, "keys", "rotate", "--json")
    assert rotated.exit_code == 0, rotated.output
    assert set(json.loads(rotated.stdout)) == {"kid", "created_at", "active_from"}

    lines = tmp_path / "tokens.jsonl"
    lines.write_text(json.dumps({"sha256": hashlib.sha256(b"legacy-secret").hexdigest(),
                                 "subject": "s", "name": "n", "scopes": ["read"]}) + "\n")
    env = {"AUTHGATE_PEPPER": "p"}
    imported = invoke("--store", store, "import", "sha256", "--from", str(lines), "--json",
                      env=env)
    assert imported.exit_code == 0, imported.output
    assert json.loads(imported.stdout) == {"imported": 1, "skipped": 0}
    listed = invoke("--store", store, "tokens", "list", "--json", env=env)
    assert [t["subject"] for t in json.loads(listed.stdout)] == ["s"]


def test_the_tree_lists_every_command() -> None:
    def names(*path: str) -> set[str]:
        out = invoke(*path, "--help").stdout
        block = out.split("Commands:", 1)[1]
        return {line.split()[0] for line in block.splitlines() if line.startswith("  ")}

    assert names() == {"demo", "events", "import", "keys", "migrate", "serve", "stats",
                       "tokens", "alerts", "watch", "subjects"}
    assert names("subjects") == {"list", "resume", "suspend"}
    assert names("tokens") == {"cleanup", "create", "delete", "introspect", "list", "revoke",
                               "revoke-all", "rotate", "show", "update", "usage"}
    assert names("keys") == {"rotate"}
    assert names("alerts") == {"list", "test"}
    assert names("import") == {"bcrypt", "sanctum", "sha256"}

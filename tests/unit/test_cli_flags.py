"""CLI plumbing, in process (click's CliRunner): every flag of ``serve`` and ``demo``, and
``--config`` / ``--store`` of the store commands, reach ``Settings``; flag > environment > file.

The servers are not started (``gateway.server.run`` is replaced); one test runs token commands
for real on an SQLite file, through the same ``Services`` that ``serve`` builds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway import cli, cli_base
from gateway.config import Settings

CLEAN_ENV: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.main, list(args), env={**CLEAN_ENV, **(env or {})},
                              catch_exceptions=False)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """The settings ``serve`` would have run with."""
    import gateway.server

    seen: list[Settings] = []
    monkeypatch.setattr(gateway.server, "run", lambda settings, **_: seen.append(settings))
    return seen


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
                    "upstream: http://127.0.0.1:7001\nlisten: 127.0.0.1:7002\n"
                    "admin_listen: 127.0.0.1:7003\ncache: redis://127.0.0.1:6379/14\n")
    return path


SERVE_FLAGS = {
    "--upstream": ("upstream", "http://10.1.2.3:9999"),
    "--listen": ("listen", "0.0.0.0:18080"),
    "--admin-listen": ("admin_listen", "127.0.0.1:18081"),
    "--store": ("store", "postgresql://u:p@db.example/authgate"),
    "--cache": ("cache", "redis://cache.example:6379/3"),
}


@pytest.mark.parametrize("flag", list(SERVE_FLAGS))
def test_each_serve_flag_reaches_settings(served: list[Settings], flag: str) -> None:
    key, value = SERVE_FLAGS[flag]
    result = invoke("serve", flag, value)
    assert result.exit_code == 0, result.output
    assert getattr(served[0], key) == value
    defaults = Settings()
    for other, _ in SERVE_FLAGS.values():
        if other != key:
            assert getattr(served[0], other) == getattr(defaults, other)


def test_serve_reads_its_config_file_and_flags_win(served: list[Settings],
                                                   config_file: Path) -> None:
    assert invoke("serve", "--config", str(config_file), "--listen", "127.0.0.1:7777",
                  ).exit_code == 0
    s = served[0]
    assert (s.upstream, s.listen, s.admin_listen, s.cache) == (
        "http://127.0.0.1:7001", "127.0.0.1:7777", "127.0.0.1:7003",
        "redis://127.0.0.1:6379/14")
    assert s.store.endswith("/from-file.db")


def test_serve_precedence_flag_over_environment_over_file(served: list[Settings],
                                                          config_file: Path) -> None:
    env = {"AUTHGATE_CONFIG": str(config_file), "AUTHGATE_UPSTREAM": "http://127.0.0.1:7101",
           "AUTHGATE_LISTEN": "127.0.0.1:7102"}
    assert invoke("serve", "--listen", "127.0.0.1:7202", env=env).exit_code == 0
    s = served[0]
    assert (s.upstream, s.listen, s.admin_listen) == (
        "http://127.0.0.1:7101", "127.0.0.1:7202", "127.0.0.1:7003")


def test_a_bad_serve_flag_is_one_line_and_exit_1(served: list[Settings]) -> None:
    result = invoke("serve", "--cache", "memcached://x")
    assert result.exit_code == 1
    assert result.output.startswith("Error: config: cache:")
    assert served == []


def test_demo_port_reaches_the_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.demo

    ports: list[int] = []
    monkeypatch.setattr(gateway.demo, "run_demo", ports.append)
    assert invoke("demo").exit_code == 0
    assert invoke("demo", "--port", "9100").exit_code == 0
    assert ports == [8080, 9100]


STORE_COMMANDS = [["stats"], ["tokens", "list"], ["tokens", "show", "tok_x"],
                  ["tokens", "create", "--subject", "a", "--name", "b"],
                  ["tokens", "revoke", "tok_x"], ["tokens", "rotate", "tok_x"],
                  ["tokens", "delete", "tok_x"], ["tokens", "cleanup"],
                  ["tokens", "revoke-all", "--yes", "--reason", "drill"], ["events"]]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_store_and_config_reach_every_store_command(opened: list[Settings], config_file: Path,
                                                    tmp_path: Path, command: list[str]) -> None:
    by_flag = f"sqlite:///{tmp_path}/by-flag.db"
    assert invoke(*command, "--store", by_flag).exit_code == 0
    assert invoke(*command, "--config", str(config_file)).exit_code == 0
    assert invoke(*command, "--config", str(config_file), "--store", by_flag).exit_code == 0
    assert invoke(*command, env={"AUTHGATE_STORE": by_flag}).exit_code == 0
    assert [s.store for s in opened] == [by_flag, f"sqlite:///{tmp_path}/from-file.db",
                                         by_flag, by_flag]
    assert opened[1].cache == "redis://127.0.0.1:6379/14"  # the whole file, not just the store


def test_migrate_takes_store_and_config(tmp_path: Path, config_file: Path) -> None:
    result = invoke("migrate", "--store", f"sqlite:///{tmp_path}/m.db")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.db").exists()
    config_file.write_text(f"store: sqlite:///{tmp_path}/n.db\n")
    assert invoke("migrate", "--config", str(config_file)).exit_code == 0
    assert (tmp_path / "n.db").exists()


def test_token_commands_run_on_the_services_serve_builds(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/real.db"
    created = invoke("tokens", "create", "--subject", "alice", "--name", "ci", "--scope",
                     "read", "--json", "--store", store)
    assert created.exit_code == 0, created.output
    token = json.loads(created.output)
    listed = json.loads(invoke("tokens", "list", "--json", "--store", store).output)
    assert [t["id"] for t in listed] == [token["id"]]
    revoked = invoke("tokens", "revoke", token["id"], "--store", store)
    assert revoked.exit_code == 0, revoked.output
    shown = json.loads(invoke("tokens", "show", token["id"], "--json", "--store", store).output)
    assert shown["status"] == "revoked"

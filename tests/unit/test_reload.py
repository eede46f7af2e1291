"""Reload (gateway.reload, Services.reload) in process; the signals, processes and connections
are tested end to end in tests/e2e/test_serve_process.py. Also the ``workers`` and
``access_log`` keys through the CLI."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway import cli, reload
from gateway.access_log import AccessLog
from gateway.config import RateLimit, Settings, load_settings
from gateway.services import Services

CLEAN_ENV: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}


def _settings(**over: Any) -> Settings:
    return Settings(**{"pepper": "p", "store": "sqlite:///./x.db", **over})


def test_merged_takes_only_the_reloadable_keys() -> None:
    running = _settings(listen="127.0.0.1:1001")
    new = _settings(listen="127.0.0.1:2002", store="sqlite:///./other.db", pepper="changed",
                    routes=[{"path": "/a/*", "auth": "none"}], roles={"ops": ["x"]},
                    default_rate_limit="5/second", failed_auth_limit=None,
                    trusted_proxies=["10.0.0.0/8"], access_log=False)
    out = reload.merged(running, new)
    assert (out.listen, out.store, out.pepper) == (running.listen, running.store, "p")
    assert [r.path for r in out.routes] == ["/a/*"] and out.roles == {"ops": ("x",)}
    assert out.default_rate_limit == RateLimit(5, 1) and out.failed_auth_limit is None
    assert out.trusted_proxies == ("10.0.0.0/8",) and out.access_log is False


def test_ignored_names_the_keys_never_their_values() -> None:
    running = _settings()
    new = _settings(store="postgresql://u:secretpw@db/x", pepper="hunter2",
                    routes=[{"path": "/b"}])
    assert reload.ignored(running, new) == ["store", "pepper"]


def test_read_refuses_an_invalid_file_in_one_line_naming_the_key(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("routes:\n  - path: no-slash\n")
    running = _settings()
    with caplog.at_level(logging.WARNING, logger="authgate"):
        assert reload.read(lambda: load_settings(str(path), env={}), running) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "routes.0.path" in lines[0] and "running config stays" in lines[0]


def test_read_logs_ignored_keys_by_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("store: postgresql://u:pw-in-url@db/x\nlisten: 0.0.0.0:9\n")
    with caplog.at_level(logging.WARNING, logger="authgate"):
        new = reload.read(lambda: load_settings(str(path), env={}), _settings())
    assert new is not None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "store" in text and "listen" in text and "pw-in-url" not in text


async def test_services_reload_swaps_routes_limits_addresses_roles_and_calls_hooks(
        tmp_path: Path) -> None:
    settings = _settings(store=f"sqlite:///{tmp_path}/s.db",
                         routes=[{"path": "/old/*", "auth": "none"}])
    async with Services.opened(settings) as services:
        seen: list[Settings] = []
        services.on_reload.append(seen.append)
        services.access_log = AccessLog()
        services.apply_access_log()
        assert services.pipeline.access_log is services.access_log
        assert services.pipeline.client_address("10.1.1.1", [(b"x-forwarded-for",
                                                             b"1.2.3.4")]) == "10.1.1.1"
        new = _settings(routes=[{"path": "/new/*", "auth": "none"}], roles={"ops": ["x"]},
                        trusted_proxies=["10.0.0.0/8"], failed_auth_limit="3/minute",
                        access_log=False, store="sqlite:///./ignored.db")
        out = services.reload(new)
        assert seen == [out] and out.store == settings.store
        assert services.settings is out and services.pipeline.settings is out
        assert services.pipeline.router is services.router
        assert services.router.match("/new/x", "GET").pattern == "/new/*"
        assert services.router.match("/old/x", "GET").pattern == "default"
        assert services.pipeline.client_address("10.1.1.1", [(b"x-forwarded-for",
                                                             b"1.2.3.4")]) == "1.2.3.4"
        assert services.authority.scopes_for(role="ops") == ("x",)
        assert services.pipeline.access_log is None  # access_log: false
        services.reload(_settings(access_log=True))
        assert services.pipeline.access_log is services.access_log
        services.access_log.close()


def _invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(cli.main, list(args), env={**CLEAN_ENV, **(env or {})},
                              catch_exceptions=False)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Settings, Any]]:
    import gateway.server

    seen: list[tuple[Settings, Any]] = []
    monkeypatch.setattr(gateway.server, "run",
                        lambda settings, reload=None: seen.append((settings, reload)))
    return seen


def test_workers_flag_environment_and_file(served: list[tuple[Settings, Any]],
                                           tmp_path: Path) -> None:
    assert _invoke("serve").exit_code == 0
    assert served[-1][0].workers == 1 and served[-1][0].access_log is True
    assert _invoke("serve", "--workers", "3").exit_code == 0
    assert served[-1][0].workers == 3
    env = {"AUTHGATE_WORKERS": "4", "AUTHGATE_ACCESS_LOG": "false"}
    assert _invoke("serve", env=env).exit_code == 0
    assert served[-1][0].workers == 4 and served[-1][0].access_log is False
    path = tmp_path / "c.yaml"
    path.write_text("workers: 2\naccess_log: false\n")
    assert _invoke("serve", "--config", str(path), "--workers", "5").exit_code == 0
    assert served[-1][0].workers == 5 and served[-1][0].access_log is False


def test_serve_hands_a_reload_that_reads_the_same_file_and_flags(
        served: list[tuple[Settings, Any]], tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("routes: [{path: /a}]\n")
    assert _invoke("serve", "--config", str(path), "--listen", "127.0.0.1:4444").exit_code == 0
    _, load = served[-1]
    path.write_text("routes: [{path: /b}]\nlisten: 127.0.0.1:5555\n")
    again = load()
    assert [r.path for r in again.routes] == ["/b"] and again.listen == "127.0.0.1:4444"


@pytest.mark.parametrize("value", ["0", "-1", "65", "two"])
def test_a_bad_workers_flag_is_bad_usage(served: list[tuple[Settings, Any]], value: str) -> None:
    result = _invoke("serve", "--workers", value)
    assert result.exit_code == 2 and "--workers" in result.output.strip().splitlines()[-1]
    assert served == []


@pytest.mark.parametrize(("key", "value"), [("workers", "0"), ("access_log", "sometimes")])
def test_a_bad_key_stops_the_start_naming_it(served: list[tuple[Settings, Any]], key: str,
                                             value: str) -> None:
    result = _invoke("serve", env={f"AUTHGATE_{key.upper()}": value})
    assert result.exit_code == 1 and result.output.startswith(f"Error: config: {key}:")
    assert served == []


async def test_a_failing_hook_does_not_keep_the_others_from_the_news(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Services.opened(_settings(store=f"sqlite:///{tmp_path}/s.db")) as services:
        seen: list[Settings] = []

        def broken(settings: Settings) -> None:
            raise RuntimeError("secret-ish detail")

        services.on_reload.extend([broken, seen.append])
        with caplog.at_level(logging.ERROR, logger="authgate"):
            out = services.reload(_settings(routes=[{"path": "/z"}]))
        assert seen == [out] and [r.path for r in services.settings.routes] == ["/z"]
        text = caplog.text
        assert "broken" in text and "RuntimeError" in text and "secret-ish" not in text


class _SlowGateway:
    """What ``Reloads`` needs of a Gateway: settings and an async reload (held by a gate)."""

    def __init__(self) -> None:
        self.settings = _settings()
        self.gate = asyncio.Event()
        self.applied: list[Settings] = []

    async def reload(self, settings: Settings) -> Settings:
        await self.gate.wait()
        self.applied.append(settings)
        return settings


async def test_a_sighup_during_a_reload_is_not_lost_and_bad_files_change_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("routes: [{path: /one}]\n")
    gw = _SlowGateway()
    reloads = reload.Reloads(gw, lambda: load_settings(str(path), env={}))  # type: ignore[arg-type]
    reloads.request()
    while reloads._task is not None and not gw.applied and reloads._wanted:
        await asyncio.sleep(0.01)  # the first reload is under way (reading, then held)
    path.write_text("routes: [{path: /two}]\n")
    reloads.request()  # arrives during the first: one more reload follows it
    gw.gate.set()
    for _ in range(500):
        if reloads.done == 2:
            break
        await asyncio.sleep(0.01)
    assert [[r.path for r in s.routes] for s in gw.applied][-1] == ["/two"]
    assert reloads.done == 2
    path.write_text("routes: [{path: broken}]\n")
    with caplog.at_level(logging.ERROR, logger="authgate"):
        reloads.request()
        for _ in range(200):
            if "reload refused" in caplog.text:
                break
            await asyncio.sleep(0.01)
    assert reloads.done == 2 and len(gw.applied) == 2
    await reloads.close()


async def test_alerts_follow_a_reload_changed_turned_on_and_turned_off(tmp_path: Path) -> None:
    """SPEC §3: ``alerts`` changes on reload: the running watcher takes a changed config; a
    config that turns alerts on starts a watcher in a serving process; null stops it."""
    log_only = {"check_interval_s": 60, "channels": [{"type": "log"}]}
    async with Services.opened(_settings(store=f"sqlite:///{tmp_path}/s.db"),
                               background=True) as services:
        assert services.monitor is None and services.authority.on_replay is None
        services.reload(_settings(alerts=log_only))
        watcher = services.monitor
        assert watcher is not None and services.authority.on_replay == watcher.replayed
        assert watcher.config.check_interval_s == 60
        services.reload(_settings(alerts={**log_only, "check_interval_s": 120,
                                          "expiry_days": [3]}))
        assert services.monitor is watcher  # the same watcher, reconfigured
        assert watcher.config.check_interval_s == 120 and watcher.config.expiry_days == (3,)
        services.reload(_settings(alerts=None))
        assert services.monitor is None and services.authority.on_replay is None
        await asyncio.sleep(0.1)
        assert not services._stopping  # the old watcher stopped (lease handed over)

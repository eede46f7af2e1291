"""``authgate watch --once`` and ``authgate alerts list|test`` (SPEC §5, §12) on SQLite and
PostgreSQL, through the console entry: exit codes, --json, a receiver that gets the alerts."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from click.testing import CliRunner, Result
from standardwebhooks import Webhook

from gateway.cli import main
from tests.alert_receiver import receiver
from tests.conftest import open_empty_store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CLEAN_ENV: dict[str, str | None] = {k: None for k in os.environ if k.startswith("AUTHGATE_")}


@pytest.fixture
async def store(store_url: str) -> str:
    await (await open_empty_store(store_url)).close()
    return store_url


def invoke(store: str, *args: str, alerts: dict[str, Any] | None = None) -> Result:
    env = {**CLEAN_ENV, "AUTHGATE_STORE": store, "AUTHGATE_PEPPER": "cli"}
    if alerts is not None:
        env["AUTHGATE_ALERTS"] = json.dumps(alerts)
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


async def run(store: str, *args: str, alerts: dict[str, Any] | None = None) -> Result:
    # the CLI runs its own event loop: off this test's loop
    return await asyncio.to_thread(invoke, store, *args, alerts=alerts)


async def test_watch_once_raises_delivers_and_lists(store: str) -> None:
    async with receiver() as hook:
        alerts = {"channels": [{"type": "webhook", "url": hook.url, "secret": SECRET}]}
        made = await run(store, "tokens", "create", "--subject", "alice", "--name", "ci",
                         "--expires-in", "2d", "--json")
        token = json.loads(made.stdout)
        first = await run(store, "watch", "--once", "--json", alerts=alerts)
        assert first.exit_code == 0, first.output
        out = json.loads(first.stdout)
        assert out["delivered"] == 1
        assert [(a["kind"], a["token_id"], a["threshold"]) for a in out["raised"]] == [
            ("token_expiring", token["id"], "7d")]
        [req] = hook.requests
        assert Webhook(SECRET).verify(req.body, req.headers)["alert"] == out["raised"][0]
        again = await run(store, "watch", "--once", "--json", alerts=alerts)
        assert json.loads(again.stdout) == {"raised": [], "delivered": 0}
        listed = await run(store, "alerts", "list", "--json", "--kind", "token_expiring")
        assert listed.exit_code == 0  # listing needs no alerts config
        assert [a["id"] for a in json.loads(listed.stdout)] == [out["raised"][0]["id"]]
        assert json.loads((await run(store, "alerts", "list", "--json", "--kind",
                                     "multi_ip")).stdout) == []
        text = await run(store, "alerts", "list")
        assert "token_expiring" in text.stdout and token["token"] not in text.stdout


async def test_alerts_test_exit_status_per_channel(store: str) -> None:
    async with receiver() as good, receiver(status=502) as bad:
        ok = await run(store, "alerts", "test", "--json", alerts={"channels": [
            {"type": "slack", "url": good.url}, {"type": "log"}]})
        assert ok.exit_code == 0, ok.output
        assert [c["result"] for c in json.loads(ok.stdout)["channels"]] == ["ok", "ok"]
        failed = await run(store, "alerts", "test", alerts={"channels": [
            {"type": "slack", "url": good.url}, {"type": "discord", "url": bad.url}]})
        assert failed.exit_code == 1
        assert "HTTP 502" in failed.stdout and bad.url not in failed.output


async def test_bad_usage_and_missing_config(store: str) -> None:
    no_once = await run(store, "watch")
    assert no_once.exit_code == 2 and "--once" in no_once.output
    unset = await run(store, "watch", "--once")
    assert unset.exit_code == 1
    assert unset.output.strip().splitlines()[-1].startswith("Error: alerts is not configured")
    assert (await run(store, "alerts", "test")).exit_code == 1
    bad_kind = await run(store, "alerts", "list", "--kind", "banana")
    assert bad_kind.exit_code == 2 and "--kind" in bad_kind.output
    bad_config = await run(store, "watch", "--once", alerts={"channels": [{"type": "pager"}]})
    assert bad_config.exit_code == 1
    assert bad_config.output.strip() .startswith("Error: config: alerts.channels.0.type:")
    assert "Traceback" not in bad_config.output


async def test_store_down_is_exit_1_one_line(tmp_path: Any) -> None:
    result = await run("postgresql://nobody@127.0.0.1:1/none", "watch", "--once",
                       alerts={"channels": [{"type": "log"}]})
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1

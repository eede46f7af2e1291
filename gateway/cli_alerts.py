"""``authgate watch --once`` and ``authgate alerts list|test`` (SPEC §5, §12).

``watch --once`` runs every check once (for cron or a Kubernetes CronJob), then makes one pass
over the outbox, so a deployment without a serving replica still delivers; it takes no lease
(an alert already raised by a running gateway is not raised again: its key is in the store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway.cli_base import (
    COUNT,
    _print_json,
    _settings,
    exit_codes,
    json_option,
    store_options,
)
from gateway.errors import AuthgateError
from gateway.monitor.model import KINDS
from gateway.monitor.repo import AlertFilter, AlertStore

if TYPE_CHECKING:
    from gateway.monitor.watcher import Watcher

T = TypeVar("T")


class NotConfigured(AuthgateError):
    pass


def _with_services(fn: Callable[..., Awaitable[T]]) -> T:
    from gateway.services import Services

    ctx = click.get_current_context()

    async def go() -> T:
        async with Services.opened(_settings(ctx)) as services:
            return await fn(services)

    with exit_codes():
        return asyncio.run(go())


def _watcher(services: Any) -> Watcher:
    if services.monitor is None:
        raise NotConfigured("alerts is not configured: set the alerts key (config file or "
                            "AUTHGATE_ALERTS)")
    watcher: Watcher = services.monitor
    return watcher


@click.command()
@click.option("--once", is_flag=True, help="Run every check once and exit (for cron).")
@json_option
@store_options
def watch(once: bool, as_json: bool, config: str | None, store: str | None) -> None:
    """Run the monitoring checks once (serve runs them continuously on one replica)."""
    if not once:
        raise click.UsageError("give --once: serve runs the watcher itself")

    async def body(services: Any) -> tuple[list[dict[str, Any]], int]:
        watcher = _watcher(services)
        raised = await watcher.run_checks()
        delivered = await watcher.outbox.deliver_due()
        await watcher.stop()
        return [a.public() for a in raised], delivered

    raised, delivered = _with_services(body)
    if as_json:
        _print_json({"raised": raised, "delivered": delivered})
        return
    for a in raised:
        click.echo(f"{a['raised_at']}  {a['severity']:<8} {a['kind']:<22} {a['message']}")
    click.echo(f"raised {len(raised)}, delivered {delivered}")


@click.group()
def alerts() -> None:
    """Raised alerts and the notification channels."""


@alerts.command("list")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@click.option("--subject")
@click.option("--token-id")
@click.option("--limit", type=COUNT, default=50, show_default=True)
@json_option
@store_options
def list_alerts(kind: str | None, subject: str | None, token_id: str | None, limit: int,
                as_json: bool, config: str | None, store: str | None) -> None:
    """Raised alerts, newest first."""
    async def body(services: Any) -> list[dict[str, Any]]:
        found = await AlertStore(services.store).list_alerts(
            AlertFilter(kind=kind, subject=subject, token_id=token_id), limit)
        return [a.public() for a in found]

    rows = _with_services(body)
    if as_json:
        _print_json(rows)
        return
    for a in rows:
        target = a["token_id"] or a["subject"] or a["ip"] or "-"
        click.echo(f"{a['raised_at']}  {a['severity']:<8} {a['kind']:<22} {target:<21} "
                   f"{a['message']}")


@alerts.command("test")
@json_option
@store_options
def test_alerts(as_json: bool, config: str | None, store: str | None) -> None:
    """Send a test notification to every configured channel; exit 1 if one failed."""
    async def body(services: Any) -> list[dict[str, Any]]:
        watcher = _watcher(services)
        try:
            return await watcher.test_channels()
        finally:
            await watcher.stop()

    results = _with_services(body)
    if as_json:
        _print_json({"channels": results})
    else:
        for r in results:
            click.echo(f"{r['channel']:<22} {r['result']}")
    if any(r["result"] != "ok" for r in results):
        raise SystemExit(1)

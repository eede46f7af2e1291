"""The ``authgate`` command: a thin click layer over the same functions the tests call.

    gateway/cli.py          the group (with --config/--store for every command), serve, demo,
                            migrate, stats; registers the groups below
    gateway/cli_base.py     shared options, value types, exit-status mapping, the store runner
    gateway/cli_tokens.py   authgate tokens ... (introspect: gateway/cli_introspect.py)
    gateway/cli_events.py   authgate events
    gateway/cli_keys.py     authgate keys rotate
    gateway/cli_subjects.py authgate subjects suspend|resume|list
    gateway/cli_alerts.py   authgate watch --once, authgate alerts list|test
    gateway/cli_import.py   authgate import ... (loaded when named: it imports from this module)

Exit status: 0 success; 1 the operation failed (unknown id, refused, store unreachable, bad
configuration); 2 bad usage (click's own, and malformed values). Never a traceback.
"""

from __future__ import annotations

import asyncio
import importlib

import click

from gateway.authority import TokenAuthority, stats_dict

# Re-exported: gateway/cli_import.py takes these from here.
from gateway.cli_base import (
    _actor,
    _print_json,
    _settings,
    exit_codes,
    json_option,
    option_value,
    run,
    store_options,
)
from gateway.cli_events import events
from gateway.cli_keys import keys
from gateway.cli_subjects import subjects
from gateway.cli_tokens import tokens
from gateway.config import MAX_WORKERS, load_settings
from gateway.store import SqlStore, make_store

__all__ = ["_actor", "_print_json", "_settings", "exit_codes", "json_option", "main",
           "store_options"]

# Groups whose module imports this one: loaded on first use, so there is no import circle.
_LAZY = {"import": "gateway.cli_import:import_command"}
_LAZY.update(watch="gateway.cli_alerts:watch", alerts="gateway.cli_alerts:alerts")


class _Main(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            module, _, attr = _LAZY[cmd_name].partition(":")
            self.add_command(getattr(importlib.import_module(module), attr), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="authgate")
@store_options
def main(config: str | None, store: str | None) -> None:
    """authgate: bearer-token authentication gateway and token authority.

    --config and --store apply to every command; the same option after the command wins.
    """


@main.command()
@click.option("--config", metavar="FILE", help="YAML config (AUTHGATE_CONFIG).")
@click.option("--upstream", metavar="URL", help="Default upstream (AUTHGATE_UPSTREAM).")
@click.option("--listen", metavar="HOST:PORT", help="Proxy listener (AUTHGATE_LISTEN).")
@click.option("--admin-listen", metavar="HOST:PORT", help="Admin listener.")
@click.option("--store", metavar="URL", help="Token store URL (AUTHGATE_STORE).")
@click.option("--cache", metavar="URL", help="memory:// or redis://... (AUTHGATE_CACHE).")
@click.option("--workers", metavar="N", type=click.IntRange(1, MAX_WORKERS),
              help="Processes on the same listeners (AUTHGATE_WORKERS; default 1).")
def serve(config: str | None, **flags: str | int | None) -> None:
    """Run the proxy and admin listeners (SIGHUP reloads the config file)."""
    from gateway.server import run as run_server

    ctx = click.get_current_context()
    flags["store"] = option_value(ctx, "store")
    config_file = option_value(ctx, "config")
    with exit_codes():
        # SIGHUP reads the same file, environment and flags again (gateway.reload)
        run_server(load_settings(config_file, flags=flags),
                   reload=lambda: load_settings(config_file, flags=flags))


@main.command()
@click.option("--port", type=int, default=8080, show_default=True, help="Proxy port.")
def demo(port: int) -> None:
    """An echo upstream + the gateway on the embedded defaults + a token + a curl line."""
    from gateway.demo import run_demo

    ctx = click.get_current_context()
    if option_value(ctx, "store") is not None or option_value(ctx, "config") is not None:
        raise click.UsageError("demo runs on a fresh embedded store: --config and --store do "
                               "not apply to it")
    with exit_codes():
        run_demo(port)


@main.command()
@store_options
def migrate(config: str | None, store: str | None) -> None:
    """Apply pending schema migrations (idempotent)."""
    with exit_codes():
        applied = asyncio.run(_migrate(_settings(click.get_current_context()).store))
    click.echo("applied: " + ", ".join(applied) if applied else "schema is up to date")


async def _migrate(url: str) -> list[str]:
    store: SqlStore = make_store(url)
    await store.open()
    try:
        return await store.migrate()
    finally:
        await store.close()


@main.command()
@store_options
@json_option
@run
async def stats(auth: TokenAuthority, config: str | None, store: str | None,
                as_json: bool) -> None:
    """Token totals by status, activity in the last 24 h and top subjects."""
    data = stats_dict(await auth.stats())
    if as_json:
        _print_json(data)
        return
    for key in ("total", "active", "revoked", "expired", "created_24h", "used_24h"):
        click.echo(f"{key:<12} {data[key]}")
    click.echo("top subjects by active tokens:")
    for row in data["top_subjects"]:
        click.echo(f"  {row['subject']:<30} {row['active']}")


main.add_command(tokens)
main.add_command(events)
main.add_command(keys)
main.add_command(subjects)

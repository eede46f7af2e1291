"""``authgate import sanctum|sha256|bcrypt``: existing tokens without reissue (SPEC §10).

The source is read and checked whole before the store is opened, then imported in one
transaction: a bad source changes nothing. Registered in gateway/cli.py with
``main.add_command(import_command)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import click

from gateway.cli import _actor, _print_json, _settings, exit_codes, json_option, store_options
from gateway.imports.sources import BCRYPT_PREFIX, read_jsonl, run_import
from gateway.store import LegacyImport, open_store


async def _import(store_url: str, kind: str, read: Callable[[], Awaitable[list[LegacyImport]]],
                  source: str) -> tuple[int, int]:
    items = await read()
    store = await open_store(store_url)
    try:
        return await run_import(store, kind, items, source, _actor().name)
    finally:
        await store.close()


def _run(kind: str, read: Callable[[], Awaitable[list[LegacyImport]]], source: str,
         as_json: bool) -> None:
    with exit_codes():
        settings = _settings(click.get_current_context())
        imported, skipped = asyncio.run(_import(settings.store, kind, read, source))
    if as_json:
        _print_json({"imported": imported, "skipped": skipped})
    else:
        click.echo(f"imported {imported} {kind} token{'s' * (imported != 1)}, "
                   f"skipped {skipped} already imported")


def _source_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from gateway.imports.sanctum import SCHEMES

    if value.split("://", 1)[0] not in SCHEMES or "://" not in value:
        raise click.BadParameter("expected mysql://user:pw@host/db, postgresql://... or "
                                 "sqlite:///path", ctx, param)
    return value


def _table(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from gateway.imports.sanctum import TABLE_RE

    if not TABLE_RE.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a table name", ctx, param)
    return value


def _prefix(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not BCRYPT_PREFIX.fullmatch(value):
        raise click.BadParameter("expected 1-32 of A-Z a-z 0-9 _ - (e.g. mk_)", ctx, param)
    return value


@click.group("import")
def import_command() -> None:
    """Import existing tokens; their owners keep using them as they are."""


@import_command.command("sanctum")
@click.option("--from", "source", required=True, metavar="URL", callback=_source_url,
              help="mysql://user:pw@host/db, postgresql://... or sqlite:///path")
@click.option("--table", default="personal_access_tokens", show_default=True, callback=_table)
@click.option("--qualified-subject", is_flag=True,
              help="Subject tokenable_type:tokenable_id instead of tokenable_id.")
@json_option
@store_options
def sanctum(source: str, table: str, qualified_subject: bool, as_json: bool,
            **_: Any) -> None:
    """Laravel Sanctum's personal_access_tokens (accepted as ID|SECRET)."""
    from gateway.imports.sanctum import describe, read_sanctum

    _run("sanctum", lambda: read_sanctum(source, table, qualified_subject), describe(source),
         as_json)


@import_command.command("sha256")
@click.option("--from", "source", required=True, metavar="FILE",
              help='JSON lines: {"sha256": hex, "subject", "name", "scopes", ...}')
@json_option
@store_options
def sha256(source: str, as_json: bool, **_: Any) -> None:
    """Tokens stored as SHA-256 hex of the whole token string."""

    async def read() -> list[LegacyImport]:
        return read_jsonl("sha256", source)

    _run("sha256", read, source, as_json)


@import_command.command("bcrypt")
@click.option("--from", "source", required=True, metavar="FILE",
              help='JSON lines: {"bcrypt": hash, "subject", "name", "scopes", "hint"?, ...}')
@click.option("--prefix", required=True, callback=_prefix,
              help="The prefix these tokens carry, e.g. mk_ (only such tokens are tried).")
@json_option
@store_options
def bcrypt_(source: str, prefix: str, as_json: bool, **_: Any) -> None:
    """Tokens stored as bcrypt of the whole token string (prefix included)."""

    async def read() -> list[LegacyImport]:
        return read_jsonl("bcrypt", source, prefix)

    _run("bcrypt", read, source, as_json)

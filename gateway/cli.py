"""The ``authgate`` command: a thin click layer over the same functions the tests call.

Exit status: 0 success; 1 the operation failed (unknown id, refused, store unreachable, bad
configuration); 2 bad usage (click's own, and malformed values). Never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click

from gateway.authority import (
    Actor,
    TokenAuthority,
    public_event,
    public_record,
    rfc3339,
    stats_dict,
)
from gateway.config import Settings, load_settings, parse_duration, parse_rate_limit
from gateway.errors import AuthgateError, ConfigError, InvalidInput
from gateway.store import SqlStore, make_store

T = TypeVar("T")

# authority field -> the option that carries it, to name it in a usage error
_OPTION_FOR = {"scopes": "--scope", "expires_in": "--expires-in", "rate_limit": "--rate-limit",
               "older_than": "--older-than", "limit": "--limit"}


class _ValueType(click.ParamType[Any]):
    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self._parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _metadata_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return key, value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number >= 1")
    return int(text)


DURATION = _ValueType("duration", parse_duration)
RATE = _ValueType("rate", parse_rate_limit)
PAIR = _ValueType("key=value", _metadata_pair)
COUNT = _ValueType("count", _positive)


def _actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Actor(f"cli:{user}")


def _settings(ctx: click.Context) -> Settings:
    params = ctx.find_root().params | ctx.params
    flags = {"store": params.get("store")}
    return load_settings(params.get("config"), flags=flags)


@contextmanager
def exit_codes() -> Iterator[None]:
    """Our errors -> one line on stderr and exit 1; a bad value -> click's usage error (exit 2)."""
    try:
        yield
    except ConfigError as e:
        for problem in e.problems:
            click.echo(f"Error: config: {problem}", err=True)
        sys.exit(1)
    except InvalidInput as e:
        option = _OPTION_FOR.get(e.field, "--" + e.field.replace("_", "-"))
        raise click.BadParameter(e.message, param_hint=f"'{option}'") from None
    except AuthgateError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except click.ClickException:
        raise
    except Exception as e:  # never a traceback (SPEC §5): one line naming what went wrong
        detail = " ".join(str(e).split())[:200]
        click.echo(f"Error: unexpected {type(e).__name__}{': ' + detail if detail else ''}",
                   err=True)
        sys.exit(1)


def run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command body with an opened store, under ``exit_codes``."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with exit_codes():
            settings = _settings(click.get_current_context())
            return asyncio.run(_with_store(settings, fn, *args, **kwargs))

    return wrapper


async def _with_store(settings: Settings, fn: Callable[..., Awaitable[T]], *args: Any,
                      **kwargs: Any) -> T:
    """Run ``fn`` on the authority of the same services ``serve`` builds (no background work):
    with a Redis cache, a revoke or rotate from the CLI is broadcast, so it reaches every
    running gateway at once, not after its cache TTL."""
    from gateway.services import Services

    async with Services.opened(settings) as services:
        return await fn(services.authority, *args, **kwargs)


def store_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--store", metavar="URL", help="Token store URL (AUTHGATE_STORE).")(fn)
    return click.option("--config", metavar="FILE", help="YAML config (AUTHGATE_CONFIG).")(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON value.")(fn)


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def _now() -> datetime:
    return datetime.now(UTC)


def _print_record(record: dict[str, Any]) -> None:
    for key, value in record.items():
        if isinstance(value, list):
            value = " ".join(value) or "-"
        elif isinstance(value, dict):
            value = json.dumps(value) if value else "-"
        click.echo(f"{key:<15} {'-' if value is None else value}")


# --- the command tree ----------------------------------------------------------------------


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="authgate")
def main() -> None:
    """authgate: bearer-token authentication gateway and token authority."""


@main.command()
@click.option("--config", metavar="FILE", help="YAML config (AUTHGATE_CONFIG).")
@click.option("--upstream", metavar="URL", help="Default upstream (AUTHGATE_UPSTREAM).")
@click.option("--listen", metavar="HOST:PORT", help="Proxy listener (AUTHGATE_LISTEN).")
@click.option("--admin-listen", metavar="HOST:PORT", help="Admin listener.")
@click.option("--store", metavar="URL", help="Token store URL (AUTHGATE_STORE).")
@click.option("--cache", metavar="URL", help="memory:// or redis://... (AUTHGATE_CACHE).")
def serve(config: str | None, **flags: str | None) -> None:
    """Run the proxy and admin listeners."""
    from gateway.server import run as run_server

    with exit_codes():
        run_server(load_settings(config, flags=flags))


@main.command()
@click.option("--port", type=int, default=8080, show_default=True, help="Proxy port.")
def demo(port: int) -> None:
    """An echo upstream + the gateway on the embedded defaults + a token + a curl line."""
    from gateway.demo import run_demo

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


@main.group()
def tokens() -> None:
    """Create, list, show, rotate, revoke and clean up tokens."""


@tokens.command()
@click.option("--subject", required=True, help="Who the token acts for.")
@click.option("--name", required=True, help="A label, e.g. the client's name.")
@click.option("--scope", "scopes", multiple=True, help="A scope to grant (repeatable).")
@click.option("--role", help="A role from the config; adds its default scopes.")
@click.option("--expires-in", type=DURATION, help="Lifetime, e.g. 30d, 12h, 90m.")
@click.option("--rate-limit", type=RATE, help="Per-token limit, e.g. 100/minute.")
@click.option("--metadata", "metadata", type=PAIR, multiple=True, help="KEY=VALUE (repeatable).")
@json_option
@store_options
@run
async def create(auth: TokenAuthority, subject: str, name: str, scopes: tuple[str, ...],
                 role: str | None, expires_in: int | None, rate_limit: Any,
                 metadata: tuple[tuple[str, str], ...], as_json: bool, config: str | None,
                 store: str | None) -> None:
    """Create a token; its secret is printed once."""
    record, secret = await auth.create(
        _actor(), subject=subject, name=name, scopes=list(scopes), role=role,
        expires_in=expires_in, rate_limit=rate_limit, metadata=dict(metadata))
    data = public_record(record, auth.clock())
    if as_json:
        _print_json({**data, "token": secret})
        return
    click.echo("Token created. Copy the secret now: it is not shown again.\n")
    click.echo(f"  {secret}\n")
    _print_record(data)


@tokens.command(name="list")
@click.option("--subject")
@click.option("--status", type=click.Choice(["active", "revoked", "expired"]))
@click.option("--limit", type=COUNT, default=50, show_default=True)
@json_option
@store_options
@run
async def list_(auth: TokenAuthority, subject: str | None, status: str | None, limit: int,
                as_json: bool, config: str | None, store: str | None) -> None:
    """List tokens, newest first."""
    records, _ = await auth.list(subject=subject, status=status, limit=limit, max_limit=100_000)
    now = auth.clock()
    rows = [public_record(r, now) for r in records]
    if as_json:
        _print_json(rows)
        return
    header = ("ID", "SUBJECT", "NAME", "STATUS", "HINT", "SCOPES", "EXPIRES", "LAST USED")
    table = [header] + [
        (r["id"], r["subject"], r["name"], r["status"], r["hint"], " ".join(r["scopes"]) or "-",
         r["expires_at"] or "never", r["last_used_at"] or "never") for r in rows]
    widths = [min(max(len(str(row[i])) for row in table), 40) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(str(c)[:40].ljust(w) for c, w in zip(row, widths, strict=True))
                   .rstrip())


@tokens.command()
@click.argument("token_id", metavar="ID")
@json_option
@store_options
@run
async def show(auth: TokenAuthority, token_id: str, as_json: bool, config: str | None,
               store: str | None) -> None:
    """Show one token's record."""
    data = public_record(await auth.get(token_id), auth.clock())
    _print_json(data) if as_json else _print_record(data)


@tokens.command()
@click.argument("token_id", metavar="ID", required=False)
@click.option("--subject", help="Revoke every active token of this subject.")
@click.option("--family", help="Revoke every active token of this rotation family.")
@click.option("--reason", help="Why (kept on the record and in the audit log).")
@json_option
@store_options
@run
async def revoke(auth: TokenAuthority, token_id: str | None, subject: str | None,
                 family: str | None, reason: str | None, as_json: bool, config: str | None,
                 store: str | None) -> None:
    """Revoke one token (ID), or all of a --subject's or a --family's tokens."""
    if sum(x is not None for x in (token_id, subject, family)) != 1:
        raise click.UsageError("give exactly one of ID, --subject or --family")
    actor = _actor()
    if token_id is not None:
        record = await auth.revoke(actor, token_id, reason)
        if as_json:
            _print_json(public_record(record, auth.clock()))
        else:
            click.echo(f"revoked {record.id} at {rfc3339(record.revoked_at)}")
        return
    if subject is not None:
        count = await auth.revoke_subject(actor, subject, reason)
    else:
        count = await auth.revoke_family(actor, family or "", reason)
    _print_json({"revoked": count}) if as_json else click.echo(f"revoked {count} token(s)")


@tokens.command(name="revoke-all")
@click.option("--yes", is_flag=True, help="Required: confirms the emergency revocation.")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@json_option
@store_options
@run
async def revoke_all(auth: TokenAuthority, yes: bool, reason: str, as_json: bool,
                     config: str | None, store: str | None) -> None:
    """Emergency: revoke every active token (the bootstrap admin token keeps working)."""
    if not yes:
        raise click.UsageError("revoke-all revokes every active token: add --yes to confirm")
    count = await auth.revoke_all(_actor(), reason)
    _print_json({"revoked": count}) if as_json else click.echo(f"revoked {count} token(s)")


@tokens.command()
@click.argument("token_id", metavar="ID")
@click.option("--grace", type=DURATION, default="1h", show_default=True,
              help="How long the old secret keeps working.")
@json_option
@store_options
@run
async def rotate(auth: TokenAuthority, token_id: str, grace: int, as_json: bool,
                 config: str | None, store: str | None) -> None:
    """Issue a new secret in the same family; the old one works until the grace ends."""
    record, secret, old = await auth.rotate(_actor(), token_id, grace)
    data = public_record(record, auth.clock())
    if as_json:
        _print_json({**data, "token": secret})
        return
    click.echo(f"Rotated {old.id}: it keeps working until {rfc3339(old.grace_until)}.")
    click.echo("New secret (copy it now: it is not shown again):\n")
    click.echo(f"  {secret}\n")
    _print_record(data)


@tokens.command()
@click.argument("token_id", metavar="ID")
@store_options
@run
async def delete(auth: TokenAuthority, token_id: str, config: str | None,
                 store: str | None) -> None:
    """Delete a token's record (the token stops working)."""
    record = await auth.delete(_actor(), token_id)
    click.echo(f"deleted {record.id}")


@tokens.command()
@click.option("--older-than", type=DURATION, default="30d", show_default=True,
              help="Delete records expired or revoked longer ago than this.")
@json_option
@store_options
@run
async def cleanup(auth: TokenAuthority, older_than: int, as_json: bool, config: str | None,
                  store: str | None) -> None:
    """Delete long-expired and long-revoked records."""
    count = await auth.cleanup(_actor(), older_than)
    _print_json({"deleted": count}) if as_json else click.echo(f"deleted {count} record(s)")


@main.command()
@click.option("--token-id")
@click.option("--subject")
@click.option("--type", "type_")
@click.option("--since", type=click.DateTime(["%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d"]))
@click.option("--limit", type=COUNT, default=50, show_default=True)
@json_option
@store_options
@run
async def events(auth: TokenAuthority, token_id: str | None, subject: str | None,
                 type_: str | None, since: datetime | None, limit: int, as_json: bool,
                 config: str | None, store: str | None) -> None:
    """The audit log, newest first."""
    since = since.replace(tzinfo=UTC) if since else None
    page, _ = await auth.events(token_id=token_id, subject=subject, type=type_, since=since,
                                limit=limit, max_limit=100_000)
    rows = [public_event(e) for e in page]
    if as_json:
        _print_json(rows)
        return
    for e in rows:
        details = json.dumps(e["details"]) if e["details"] else ""
        click.echo(f"{e['at']}  {e['type']:<24} {e['token_id'] or '-':<21} "
                   f"{e['subject'] or '-':<16} {e['actor']}  {details}")


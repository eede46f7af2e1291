"""What every ``authgate`` command shares: value types, the ``--config``/``--store`` and
``--json`` options, settings from the command line, the exit-status mapping and the store runner.

Exit status (SPEC §5): 0 success; 1 the operation failed (unknown id, refused, store
unreachable, bad configuration), one line on stderr; 2 bad usage (click's own, and malformed
values), the last stderr line naming the option. Never a traceback.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import wraps
from typing import Any, TypeVar

import click

from gateway.authority import Actor
from gateway.config import Settings, load_settings, parse_duration, parse_rate_limit
from gateway.errors import AuthgateError, ConfigError, InvalidInput

T = TypeVar("T")

# authority field -> the option that carries it, to name it in a usage error
_OPTION_FOR = {"scopes": "--scope", "expires_in": "--expires-in", "rate_limit": "--rate-limit",
               "older_than": "--older-than", "limit": "--limit", "expires_at": "--expires-in"}


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


def option_value(ctx: click.Context, name: str) -> Any:
    """An option given on this command or any group above it: the innermost one wins, so
    ``authgate --store A tokens list --store B`` reads B."""
    node: click.Context | None = ctx
    while node is not None:
        value = node.params.get(name)
        if value is not None:
            return value
        node = node.parent
    return None


def _settings(ctx: click.Context) -> Settings:
    return load_settings(option_value(ctx, "config"),
                         flags={"store": option_value(ctx, "store")})


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
        head = re.split(r"[.\[]", e.field, maxsplit=1)[0]  # rate_limit[1].name: --rate-limit
        option = _OPTION_FOR.get(head, "--" + head.replace("_", "-"))
        message = e.message if head == e.field else f"{e.field}: {e.message}"
        raise click.BadParameter(message, param_hint=f"'{option}'") from None
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
    """``--store``/``--config`` on a command; the ``authgate`` group takes them too."""
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
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = " ".join(value) or "-"
        elif isinstance(value, list | dict):
            value = json.dumps(value) if value else "-"
        click.echo(f"{key:<15} {'-' if value is None else value}")


def output_format(as_json: bool, as_csv: bool) -> str:
    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    return "json" if as_json else "csv" if as_csv else "text"



async def echo_csv(rows: AsyncIterator[dict[str, Any]], kind: str) -> None:
    """``rows`` as the admin API's CSV export writes them (its columns, its formula escaping),
    page by page. ``kind``: ``tokens`` or ``events``."""
    from gateway.admin.export import EVENT_COLUMNS, TOKEN_COLUMNS, _lines

    columns = TOKEN_COLUMNS if kind == "tokens" else EVENT_COLUMNS
    async for chunk in _lines(rows, columns):
        click.echo(chunk, nl=False)


async def paged(fetch: Callable[[str | None], Awaitable[tuple[list[T], str | None]]],
                limit: int | None) -> AsyncIterator[T]:
    """Every item of a cursor-paged listing (at most ``limit``), 500 a page."""
    cursor: str | None = None
    left = limit
    while left is None or left > 0:
        page, cursor = await fetch(cursor)
        for item in page[:left]:
            yield item
        if left is not None:
            left -= len(page)
        if cursor is None:
            return

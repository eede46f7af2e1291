"""``authgate tokens introspect``: the admin API's RFC 7662 introspection on the command line.

The token is read from standard input, never taken as an argument: an argument is visible to
every user in ``ps`` and stays in the shell's history.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

import click

from gateway.cli_base import _print_json, _settings, exit_codes, json_option, store_options
from gateway.config import Settings
from gateway.errors import Refusal, StoreUnavailable

MAX_TOKEN = 512  # as the API's form field


def _epoch(dt: datetime | None) -> int | None:
    return None if dt is None else int(dt.astimezone(UTC).timestamp())


async def _introspect(settings: Settings, raw: str) -> dict[str, Any]:
    from gateway.services import Services

    async with Services.opened(settings) as services:
        try:  # the same checks as the proxy; not charged to any client's failure count
            record = await services.pipeline.verify(raw, None, count_failures=False)
        except Refusal as refusal:
            if refusal.status == 503:
                raise StoreUnavailable(refusal.description) from None
            return {"active": False}
    data = {"active": True, "scope": " ".join(record.scopes), "sub": record.subject,
            "exp": _epoch(record.expires_at), "iat": _epoch(record.created_at),
            "jti": record.id, "token_type": "Bearer", "client_id": record.name}
    return {k: v for k, v in data.items() if v is not None}


@click.command()
@json_option
@store_options
def introspect(as_json: bool, config: str | None, store: str | None) -> None:
    """Is the token on standard input usable, and for whom (RFC 7662, as POST /v1/introspect)."""
    raw = sys.stdin.readline().strip()
    if not raw:
        raise click.UsageError("give the token on standard input, e.g. "
                               "authgate tokens introspect < token.txt")
    if len(raw) > MAX_TOKEN:
        raise click.UsageError(f"standard input: a token is at most {MAX_TOKEN} characters")
    with exit_codes():
        data = asyncio.run(_introspect(_settings(click.get_current_context()), raw))
    if as_json:
        _print_json(data)
        return
    for key, value in data.items():
        click.echo(f"{key:<11} {str(value).lower() if isinstance(value, bool) else value}")

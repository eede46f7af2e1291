"""``authgate events``: the audit log (SPEC §8) as a table, JSON or the admin API's CSV."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from gateway.authority import TokenAuthority, public_event
from gateway.cli_base import (
    COUNT,
    _now,
    _print_json,
    _ValueType,
    echo_csv,
    json_option,
    output_format,
    paged,
    run,
    store_options,
)
from gateway.config import parse_duration


def _since(text: str) -> datetime:
    """A duration back from now (``24h``, ``7d``) or a UTC date/time (``2026-01-31``,
    ``2026-01-31T12:00:00Z``, any RFC 3339 offset)."""
    try:
        return _now() - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 24h or 7d nor a date/time like "
                         "2026-01-31 or 2026-01-31T12:00:00Z") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


SINCE = _ValueType("since", _since)


@click.command()
@click.option("--token-id")
@click.option("--subject")
@click.option("--type", "type_", help="Only this event type, e.g. token_revoked.")
@click.option("--since", type=SINCE, help="24h, 7d, 2026-01-31 or 2026-01-31T12:00:00Z.")
@click.option("--limit", type=COUNT, help="At most this many  [default: 50; --csv: all]")
@json_option
@click.option("--csv", "as_csv", is_flag=True,
              help="Every match as CSV (the admin API's columns and escaping).")
@store_options
@run
async def events(auth: TokenAuthority, token_id: str | None, subject: str | None,
                 type_: str | None, since: datetime | None, limit: int | None, as_json: bool,
                 as_csv: bool, config: str | None, store: str | None) -> None:
    """The audit log, newest first."""
    fmt = output_format(as_json, as_csv)
    filters: dict[str, Any] = {"token_id": token_id, "subject": subject, "type": type_,
                               "since": since}
    if fmt == "csv":
        async def page(cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
            found, nxt = await auth.events(**filters, limit=500, cursor=cursor)
            return [public_event(e) for e in found], nxt

        await echo_csv(paged(page, limit), "events")
        return
    found, _ = await auth.events(**filters, limit=limit or 50, max_limit=100_000)
    rows = [public_event(e) for e in found]
    if fmt == "json":
        _print_json(rows)
        return
    for e in rows:
        details = json.dumps(e["details"]) if e["details"] else ""
        click.echo(f"{e['at']}  {e['type']:<24} {e['token_id'] or '-':<21} "
                   f"{e['subject'] or '-':<16} {e['actor']}  {details}")

"""``authgate subjects ...``: suspension on the command line (SPEC §5, §12; gateway/subjects.py).

The CLI builds the same services as ``serve``: with a Redis cache a suspension is broadcast and
reaches every replica at once; with ``memory://`` every replica sees it within the revocation
bound (``local_cache_ttl_s`` + 1 s).
"""

from __future__ import annotations

import click

from gateway import subjects as subject_ops
from gateway.authority import TokenAuthority
from gateway.cli_base import COUNT, _actor, _print_json, json_option, paged, run, store_options
from gateway.errors import InvalidInput
from gateway.values import check_text


def _subject(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Bounded like a token's subject (SPEC §5: a malformed value is bad usage, exit 2)."""
    try:
        return check_text("subject", value)
    except InvalidInput as e:
        raise click.BadParameter(e.message) from None


@click.group()
def subjects() -> None:
    """Suspend and resume subjects (every token of a suspended subject is refused)."""


@subjects.command()
@click.argument("subject", callback=_subject)
@click.option("--reason", help="Why, for the audit log.")
@json_option
@store_options
@run
async def suspend(auth: TokenAuthority, subject: str, reason: str | None, as_json: bool,
                  config: str | None, store: str | None) -> None:
    """Refuse every token of SUBJECT until it is resumed (nothing is revoked)."""
    suspension, changed = await subject_ops.suspend(auth, _actor(), subject, reason)
    tokens = await subject_ops.token_count(auth, subject)
    if as_json:
        _print_json({**subject_ops.public_suspension(subject, suspension), "tokens": tokens})
        return
    if not tokens:  # subjects are exact strings: say so when the suspension matches nothing
        click.echo(f"note: no working token has exactly the subject {subject!r}", err=True)
    click.echo(f"suspended {subject}" if changed else
               f"{subject} was already suspended (since "
               f"{subject_ops.public_suspension(subject, suspension)['suspended_at']})")


@subjects.command()
@click.argument("subject", callback=_subject)
@click.option("--reason", help="Why, for the audit log.")
@json_option
@store_options
@run
async def resume(auth: TokenAuthority, subject: str, reason: str | None, as_json: bool,
                 config: str | None, store: str | None) -> None:
    """End SUBJECT's suspension: its tokens work again."""
    changed = await subject_ops.resume(auth, _actor(), subject, reason)
    if as_json:
        _print_json({**subject_ops.public_suspension(subject, None),
                     "tokens": await subject_ops.token_count(auth, subject)})
        return
    click.echo(f"resumed {subject}" if changed else f"{subject} was not suspended")


@subjects.command(name="list")
@click.option("--limit", type=COUNT, help="At most this many  [default: all]")
@json_option
@store_options
@run
async def list_suspended(auth: TokenAuthority, limit: int | None, as_json: bool,
                         config: str | None, store: str | None) -> None:
    """Suspended subjects, most recently suspended first."""
    rows = [subject_ops.public_suspension(s.subject, s) async for s in paged(
        lambda cursor: subject_ops.suspended(auth, 500, cursor), limit)]
    if as_json:
        _print_json(rows)
        return
    for row in rows:
        click.echo(f"{row['subject']}\t{row['suspended_at']}\t{row['actor']}\t"
                   f"{row['reason'] or '-'}")

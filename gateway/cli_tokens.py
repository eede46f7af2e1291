"""``authgate tokens ...``: the admin API's token operations (SPEC §5, §7) on the command line."""

from __future__ import annotations

from typing import Any

import click

from gateway.authority import TokenAuthority, public_record, rfc3339
from gateway.cli_base import (
    COUNT,
    DURATION,
    PAIR,
    _actor,
    _print_json,
    _print_record,
    _ValueType,
    echo_csv,
    json_option,
    output_format,
    paged,
    run,
    store_options,
)
from gateway.cli_introspect import introspect
from gateway.credits import parse_cli_limits, parse_refill

DEFAULT_RATE = "default"  # `tokens update --rate-limit default`: back to the configured default
REFILL = _ValueType("refill", parse_refill)
CREDITS = click.IntRange(0, 10**12)


def _limits_option(texts: tuple[str, ...]) -> Any:
    """``--rate-limit`` given once (``100/minute``, ``default`` on update) or as named limits
    (``NAME=N/unit``, repeatable; SPEC §13); None when not given. Bad usage (exit 2) names the
    option."""
    if not texts:
        return None
    if len(texts) == 1 and texts[0].strip().lower() == DEFAULT_RATE:
        return DEFAULT_RATE
    try:
        return parse_cli_limits(texts)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--rate-limit'") from None


def _credits_option(credits: int | None, refill: dict[str, Any] | None) -> dict[str, Any] | None:
    if credits is None:
        if refill is not None:
            raise click.BadParameter("needs --credits (the balance to start from)",
                                     param_hint="'--refill'")
        return None
    return {"remaining": credits, "refill": refill}


@click.group()
def tokens() -> None:
    """Create, list, show, update, rotate, revoke, introspect and clean up tokens."""


@tokens.command()
@click.option("--subject", required=True, help="Who the token acts for.")
@click.option("--name", required=True, help="A label, e.g. the client's name.")
@click.option("--scope", "scopes", multiple=True, help="A scope to grant (repeatable).")
@click.option("--role", help="A role from the config; adds its default scopes.")
@click.option("--expires-in", type=DURATION, help="Lifetime, e.g. 30d, 12h, 90m.")
@click.option("--rate-limit", "rate_limits", multiple=True,
              help="Per-token limit, e.g. 100/minute; or named limits, each NAME=N/unit "
                   "(repeatable: --rate-limit burst=10/second --rate-limit hourly=1000/hour).")
@click.option("--credits", type=CREDITS, help="Usage credits: each admitted request costs 1.")
@click.option("--refill", type=REFILL, help="Refill the credits to N, e.g. 1000/month or 100/day.")
@click.option("--metadata", "metadata", type=PAIR, multiple=True, help="KEY=VALUE (repeatable).")
@json_option
@store_options
@run
async def create(auth: TokenAuthority, subject: str, name: str, scopes: tuple[str, ...],
                 role: str | None, expires_in: int | None, rate_limits: tuple[str, ...],
                 credits: int | None, refill: dict[str, Any] | None,
                 metadata: tuple[tuple[str, str], ...], as_json: bool, config: str | None,
                 store: str | None) -> None:
    """Create a token; its secret is printed once."""
    rate_limit = _limits_option(rate_limits)
    if rate_limit == DEFAULT_RATE:
        raise click.BadParameter("'default' is for tokens update", param_hint="'--rate-limit'")
    record, secret = await auth.create(
        _actor(), subject=subject, name=name, scopes=list(scopes), role=role,
        expires_in=expires_in, rate_limit=rate_limit, metadata=dict(metadata),
        credits=_credits_option(credits, refill))
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
@click.option("--family", help="Only this rotation family.")
@click.option("--limit", type=COUNT, help="At most this many  [default: 50; --csv: all]")
@json_option
@click.option("--csv", "as_csv", is_flag=True,
              help="Every match as CSV (the admin API's columns and escaping).")
@store_options
@run
async def list_(auth: TokenAuthority, subject: str | None, status: str | None,
                family: str | None, limit: int | None, as_json: bool, as_csv: bool,
                config: str | None, store: str | None) -> None:
    """List tokens, newest first."""
    fmt = output_format(as_json, as_csv)
    if fmt == "csv":
        async def page(cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
            records, nxt = await auth.list(subject=subject, status=status, family=family,
                                           limit=500, cursor=cursor)
            return [public_record(r, auth.clock()) for r in records], nxt

        await echo_csv(paged(page, limit), "tokens")
        return
    records, _ = await auth.list(subject=subject, status=status, family=family,
                                 limit=limit or 50, max_limit=100_000)
    now = auth.clock()
    rows = [public_record(r, now) for r in records]
    if fmt == "json":
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
@click.argument("token_id", metavar="ID")
@click.option("--name", help="A new label.")
@click.option("--scope", "scopes", multiple=True,
              help="Replaces the token's scopes (repeatable).")
@click.option("--rate-limit", "rate_limits", multiple=True,
              help="e.g. 100/minute, or named limits NAME=N/unit (repeatable); 'default' "
                   "removes the token's own limits.")
@click.option("--credits", type=CREDITS, help="A new credit balance (keeps the refill unless "
                                               "--refill or --no-refill is given).")
@click.option("--refill", type=REFILL, help="With --credits: refill to N, e.g. 1000/month.")
@click.option("--no-refill", is_flag=True, help="With --credits: no refill.")
@click.option("--no-credits", is_flag=True, help="Remove the token's credits.")
@click.option("--expires-in", type=DURATION, help="Expire this long from now, e.g. 30d.")
@click.option("--no-expiry", is_flag=True, help="Never expire.")
@click.option("--metadata", "metadata", type=PAIR, multiple=True,
              help="KEY=VALUE (repeatable); replaces the whole metadata object.")
@click.option("--no-metadata", is_flag=True, help="Empty the metadata.")
@json_option
@store_options
@run
async def update(auth: TokenAuthority, token_id: str, name: str | None, scopes: tuple[str, ...],
                 rate_limits: tuple[str, ...], credits: int | None,
                 refill: dict[str, Any] | None, no_refill: bool, no_credits: bool,
                 expires_in: int | None, no_expiry: bool,
                 metadata: tuple[tuple[str, str], ...], no_metadata: bool, as_json: bool,
                 config: str | None, store: str | None) -> None:
    """Change a token in place (the admin API's PATCH): only the options given change."""
    rate_limit = _limits_option(rate_limits)
    if no_credits and (credits is not None or refill is not None or no_refill):
        raise click.UsageError("give --no-credits alone, not with --credits or --refill")
    if refill is not None and no_refill:
        raise click.UsageError("give --refill or --no-refill, not both")
    if no_refill and credits is None:
        raise click.BadParameter("needs --credits", param_hint="'--no-refill'")
    credit_change = _credits_option(credits, refill)
    if credit_change is not None and refill is None and not no_refill:  # keep the refill
        current = (await auth.get(token_id)).credits
        credit_change["refill"] = current.as_dict()["refill"] if current else None
    if expires_in is not None and no_expiry:
        raise click.UsageError("give --expires-in or --no-expiry, not both")
    if metadata and no_metadata:
        raise click.UsageError("give --metadata or --no-metadata, not both")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if scopes:
        changes["scopes"] = list(scopes)
    if rate_limit is not None:
        changes["rate_limit"] = None if rate_limit == DEFAULT_RATE else rate_limit
    if credit_change is not None or no_credits:
        changes["credits"] = credit_change
    if expires_in is not None:
        changes["expires_at"] = auth.expiry(auth.clock(), expires_in)
    elif no_expiry:
        changes["expires_at"] = None
    if metadata or no_metadata:
        changes["metadata"] = dict(metadata)
    if not changes:
        raise click.UsageError("nothing to change: give --name, --scope, --rate-limit, "
                               "--credits, --no-credits, --expires-in, --no-expiry, "
                               "--metadata or --no-metadata")
    data = public_record(await auth.update(_actor(), token_id, **changes), auth.clock())
    _print_json(data) if as_json else _print_record(data)


@tokens.command()
@click.argument("token_id", metavar="ID")
@click.option("--days", type=click.IntRange(1, 366), default=30, show_default=True,
              help="How many UTC days, today included.")
@json_option
@store_options
@run
async def usage(auth: TokenAuthority, token_id: str, days: int, as_json: bool,
                config: str | None, store: str | None) -> None:
    """Requests per UTC day and the most recent client addresses (as GET .../usage)."""
    record = await auth.get(token_id)  # an unknown id fails, as in the API
    credits = record.credits.as_dict() if record.credits is not None else None
    per_day, ips = await auth.usage(token_id, days)
    if as_json:
        _print_json({"token_id": token_id, "credits": credits,
                     "days": [{"day": d.isoformat(), "requests": n} for d, n in per_day],
                     "last_ips": [{"ip": ip, "last_seen_at": rfc3339(at), "requests": n}
                                  for ip, at, n in ips]})
        return
    click.echo(f"requests per day ({sum(n for _, n in per_day)} in {days} days):")
    for day, count in per_day:
        click.echo(f"  {day.isoformat()}  {count}")
    click.echo("last client addresses:" if ips else "last client addresses: none yet")
    for ip, at, count in ips:
        click.echo(f"  {ip:<40} {rfc3339(at)}  {count}")
    if record.credits is not None:
        click.echo(f"credits: {record.credits}")


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
@json_option
@store_options
@run
async def delete(auth: TokenAuthority, token_id: str, as_json: bool, config: str | None,
                 store: str | None) -> None:
    """Delete a token's record (the token stops working)."""
    record = await auth.delete(_actor(), token_id)
    if as_json:
        _print_json({"id": record.id, "deleted": True})
    else:
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


tokens.add_command(introspect)

"""``authgate keys rotate``: a new identity-assertion signing key (SPEC §11).

The key is committed to the store with ``active_from`` = now + the publish delay: every replica
lists it in its JWKS before any replica signs with it, and the previous key stays listed until
its last assertion has expired (gateway/assertion.py says why that leaves no gap).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from gateway.cli_base import _print_json, _settings, exit_codes, json_option, store_options
from gateway.store import open_store

if TYPE_CHECKING:
    from gateway.assertion import SigningKey


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def keys() -> None:
    """Identity-assertion signing keys (SPEC §11)."""


@keys.command()
@json_option
@store_options
def rotate(as_json: bool, config: str | None, store: str | None) -> None:
    """Make a new signing key: every replica lists it first, then signs with it (< 30 s)."""
    with exit_codes():
        url = _settings(click.get_current_context()).store
        key, now = asyncio.run(_rotate(url))
    data = {"kid": key.kid, "created_at": _rfc3339(key.created_at),
            "active_from": _rfc3339(key.active_from)}
    if as_json:
        _print_json(data)
        return
    wait = max(0, round(key.active_from - now))
    click.echo(f"new signing key {key.kid}: every replica lists it within seconds and "
               f"signs with it from {data['active_from']} (in {wait} s); the previous key "
               "stays listed until its last assertion has expired")


async def _rotate(url: str) -> tuple[SigningKey, float]:
    from gateway.assertion import rotate_key

    store = await open_store(url)
    try:
        return await rotate_key(store), time.time()
    finally:
        await store.close()

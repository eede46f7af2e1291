"""Accepting imported tokens as their owners hold them (SPEC §10), for a presented string that
is not an authgate-format token. Pure: no HTTP, no settings object; the pipeline builds one
``LegacyVerifier`` from ``legacy_tokens`` and calls ``verify`` where it would refuse a malformed
token.

Costs, per presented string:

- cannot be a legacy token (shape, charset, no imported bcrypt prefix, kind not enabled): no I/O;
- Sanctum ``ID|SECRET`` and SHA-256 imports: one SHA-256 and one token-cache lookup, keyed like
  authgate's own tokens, so hits, misses (negative entries) and revocations behave the same;
- bcrypt: one keyed hash and one cache lookup (a token already matched once is found here); on a
  miss, at most ``max_candidates`` bcrypt checks, in a worker thread, once per presented string
  per ``negative_ttl_s`` (refusals are remembered in a bounded negative cache, and concurrent
  presentations of one string share one check), at most ``max_concurrent`` threads at once. A
  match re-stores the token under authgate's keyed hash, so each token pays bcrypt once. The
  pipeline charges every refusal to the client's ``failed_auth_limit``, so one address gets at
  most that many refusals, each at most ``max_candidates`` checks, per window.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime

import bcrypt

from gateway.imports.sources import KINDS, MAX_CANDIDATES, MAX_HINT, bcrypt_key
from gateway.store import LegacyStore, Revoked, TokenRecord
from gateway.tokens import hash_token

MAX_LEGACY_LEN = 512
# Sanctum: a numeric id, '|', the secret (Sanctum 4 adds its own prefix and a checksum to it).
SANCTUM_RE = re.compile(r"(\d{1,19})\|([!-~]{1,400})")
BCRYPT_MAX_BYTES = 72  # bcrypt reads no further; the source systems hashed the same bytes

Lookup = Callable[[str], Awaitable[TokenRecord | None]]
Forget = Callable[[Sequence[Revoked]], Awaitable[None]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def check_kinds(kinds: Iterable[object]) -> tuple[str, ...]:
    """The ``legacy_tokens`` list, or ValueError naming the unknown entry."""
    found: list[str] = []
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"unknown legacy token format {kind!r}; expected one of "
                             f"{', '.join(KINDS)}")
        assert isinstance(kind, str)
        if kind not in found:
            found.append(kind)
    return tuple(found)


def _first_match(secret: bytes, hashes: Sequence[bytes]) -> tuple[int | None, int]:
    """(index of the first bcrypt hash ``secret`` matches, checks made); in a worker thread."""
    for i, hashed in enumerate(hashes):
        try:
            if bcrypt.checkpw(secret, hashed):
                return i, i + 1
        except ValueError:  # a hash bcrypt cannot read: never a match
            continue
    return None, len(hashes)


class LegacyVerifier:
    def __init__(self, kinds: Iterable[str], store: LegacyStore, pepper: str | None, *,
                 lookup: Lookup | None = None, forget: Forget | None = None,
                 clock: Callable[[], datetime] = _utcnow,
                 max_candidates: int = MAX_CANDIDATES, negative_ttl_s: float = 60.0,
                 negative_max: int = 10_000, refresh_s: float = 30.0,
                 max_concurrent: int = 2) -> None:
        """``lookup``: token_hash -> record through the token cache (default: the store);
        ``forget``: drops cache entries for a re-stored bcrypt token (the pipeline's cache
        invalidation), so a cached "unknown" for its new hash does not outlive the match."""
        enabled = check_kinds(kinds)
        self.sanctum = "sanctum" in enabled
        self.sha256 = "sha256" in enabled
        self.bcrypt = "bcrypt" in enabled
        self.enabled = bool(enabled)
        self.store = store
        self.pepper = pepper
        self._lookup = lookup or store.get_by_hash
        self._forget = forget
        self.clock = clock
        self.max_candidates = max_candidates
        self.negative_ttl_s = negative_ttl_s
        self.negative_max = negative_max
        self.refresh_s = refresh_s
        self._prefixes: tuple[str, ...] | None = None
        self._refresh_at = 0.0
        self._refreshing: asyncio.Task[None] | None = None
        self._refused: OrderedDict[str, float] = OrderedDict()  # keyed hash -> expiry
        self._inflight: dict[str, asyncio.Future[TokenRecord | None]] = {}
        self.bcrypt_checks = 0  # bcrypt comparisons made (for tests and metrics)
        # bcrypt threads at once: the rest wait, so refused bcrypt tokens cannot take every
        # worker thread (other to_thread users) or every core
        self._threads = asyncio.Semaphore(max_concurrent)

    async def start(self) -> None:
        """Load the bcrypt prefixes now rather than on the first presented token."""
        if self.bcrypt:
            await self._load_prefixes()

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()

    async def verify(self, presented: str) -> TokenRecord | None:
        """The imported token ``presented`` is, or None (then it is an unknown token)."""
        if (not self.enabled or len(presented) > MAX_LEGACY_LEN or not presented.isascii()
                or not presented.isprintable()):
            return None
        if self.sanctum:
            m = SANCTUM_RE.fullmatch(presented)
            if m is not None:
                secret = hashlib.sha256(m[2].encode("ascii")).hexdigest()
                found = await self._lookup(f"sanctum:{m[1]}:{secret}")
                if found is not None:
                    return found
        if self.bcrypt:
            prefixes = await self._bcrypt_prefixes()
            matching = [p for p in prefixes if presented.startswith(p) and len(presented) > len(p)]
            if matching:
                found = await self._verify_bcrypt(presented, matching)
                if found is not None:
                    return found
        if self.sha256:
            digest = hashlib.sha256(presented.encode("ascii")).hexdigest()
            return await self._lookup(f"sha256:{digest}")
        return None

    # --- bcrypt ---------------------------------------------------------------------------

    async def _bcrypt_prefixes(self) -> tuple[str, ...]:
        if self._prefixes is None:
            await self._load_prefixes()
        elif time.monotonic() >= self._refresh_at and self._refreshing is None:
            # a new import shows up within refresh_s; this request does not wait for it
            self._refreshing = asyncio.create_task(self._load_prefixes())
            self._refreshing.add_done_callback(self._refreshed)
        return self._prefixes or ()

    def _refreshed(self, task: asyncio.Task[None]) -> None:
        self._refreshing = None
        if not task.cancelled():
            task.exception()  # a failed refresh keeps the known prefixes; retried later

    async def _load_prefixes(self) -> None:
        self._refresh_at = time.monotonic() + self.refresh_s
        prefixes = await self.store.legacy_prefixes()
        # longest first, so "mk_live_" is tried before "mk_"
        self._prefixes = tuple(sorted(set(prefixes), key=lambda p: (-len(p), p)))

    def _is_refused(self, key: str) -> bool:
        until = self._refused.get(key)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self._refused[key]
        return False

    def _remember_refused(self, key: str) -> None:
        self._refused.pop(key, None)
        while len(self._refused) >= self.negative_max:
            self._refused.popitem(last=False)
        self._refused[key] = time.monotonic() + self.negative_ttl_s

    async def _verify_bcrypt(self, presented: str, prefixes: Sequence[str]) -> TokenRecord | None:
        keyed = hash_token(presented, self.pepper)
        found = await self._lookup(keyed)  # matched before: re-stored under this hash
        if found is not None:
            return found
        if self._is_refused(keyed):
            return None
        pending = self._inflight.get(keyed)
        if pending is None:
            pending = asyncio.ensure_future(self._check(presented, keyed, prefixes))
            self._inflight[keyed] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(keyed, None))
        return await asyncio.shield(pending)

    async def _check(self, presented: str, keyed: str,
                     prefixes: Sequence[str]) -> TokenRecord | None:
        keys: list[str] = []
        for prefix in prefixes:
            rest = presented[len(prefix):]
            keys.append(bcrypt_key(prefix, ""))
            longest = min(MAX_HINT, len(rest))
            keys.extend(bcrypt_key(prefix, rest[:n]) for n in range(1, longest + 1))
        candidates = await self.store.legacy_candidates(keys, self.clock(), self.max_candidates)
        hashes = [(c.legacy_hash or "").encode("ascii") for c in candidates]
        secret = presented.encode("ascii")[:BCRYPT_MAX_BYTES]
        index, checks = None, 0
        if hashes:
            async with self._threads:
                index, checks = await asyncio.to_thread(_first_match, secret, hashes)
        self.bcrypt_checks += checks
        if index is None:
            self._remember_refused(keyed)
            return None
        matched = candidates[index]
        stored = await self.store.legacy_rehash(matched.id, keyed)
        if self._forget is not None:  # a cached "unknown" for the new hash must go
            await self._forget([Revoked(matched.id, keyed)])
        return stored

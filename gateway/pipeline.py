"""The verification pipeline: every decision, for the proxy and the forward-auth endpoint alike.

    1. route       match path and method against the config routes (first match wins)
    2. credential  Authorization: Bearer ... (or the configured API-key header)     401
       brake       an address over failed_auth_limit: refused before any work     429
    3. parse       prefix + checksum, no I/O: garbage is refused here                 401
    4. lookup      keyed hash -> in-process LRU -> shared cache -> store              401 / 503
    5. check       revoked, expired (judged now, not by cache age), replay            401
    6. authorize   route scopes vs token scopes (wildcards)                           403
    7. limit       token limit + route limit, one atomic call                         429
    8. record      usage into an in-memory aggregate (written in batches)

Steps 3-5 are ``verify`` (each caller reads its own credential): the admin API's callers and
RFC 7662 introspection go through the same code, so a token is judged usable in one place. A
token the in-process LRU already holds under its keyed hash skips step 3 (the warm path: it
passed parse to get there, and the hash covers the whole string); anything else is parsed
before any cache or store is asked.

Each refusal is a ``Refusal`` with a status, a ``reason`` from a closed set (``errors.Reason``:
the metric label) and a message; ``gateway.responses`` is the one place that turns it into
headers and a body.
Each refusal is also one event, counted in memory (SPEC §8): ``auth_failed`` for a 401
(``details.reason``: missing, malformed, unknown, revoked, expired, suspended, replay),
``access_denied`` for a 403, ``rate_limited`` for a 429 (reason ``token``, ``route`` or
``client_ip``).

The brake: refused credentials are charged to the client address in the limiter (I/O, but only
on a refusal). When the limiter refuses a charge, the address is remembered here as blocked until
the limiter would admit it again, and refused before parse, lookup or compare, with no I/O. So
N forged tokens from one address cost at most ``failed_auth_limit`` store lookups per window
plus one per replica per block (each replica learns of a block on its own first refused charge),
plus whatever that address had in flight when it crossed the limit. "Address" here (the brake,
``fail:`` and the per-address route limits ``ip:N:``) is ``addresses.limit_key``: an IPv4 address,
an IPv6 client's /64; events and the access log keep the full address.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

from gateway import tokens
from gateway.addresses import ClientAddresses, limit_key
from gateway.authority import Actor, TokenAuthority
from gateway.cache import MISS, TokenCache
from gateway.config import RateLimit, Settings
from gateway.credits import CreditKeeper, charge, retry_after_s
from gateway.errors import Refusal, StoreUnavailable
from gateway.metrics import Metrics
from gateway.ratelimit import LimitResult, RateLimiter
from gateway.responses import header_value, identity_headers, rate_limit_headers, render_refusal
from gateway.routes import MatchedRoute, Router
from gateway.store import TokenRecord, TokenStore
from gateway.usage import UsageRecorder

if TYPE_CHECKING:
    from gateway.access_log import AccessLog
    from gateway.imports.legacy import LegacyVerifier

log = logging.getLogger("authgate.pipeline")

MAX_HEADER_BYTES = 32 * 1024
MAX_BLOCKED = 10_000  # addresses remembered as blocked; the oldest is forgotten past it
Headers = list[tuple[bytes, bytes]]
# Re-exported: callers and tests that knew them here (they live in gateway.responses).
__all__ = ["Decision", "Pipeline", "Refusal", "extract_credential", "header_value",
           "identity_headers", "rate_limit_headers", "render_refusal"]


@dataclass(slots=True)
class Decision:
    route: MatchedRoute
    record: TokenRecord | None = None  # None on an auth: none route
    limit: LimitResult | None = None


def extract_credential(headers: Headers, api_key_header: bytes | None) -> str:
    """Return the presented token; raise Refusal for none, or for oversized headers."""
    found: str | None = None
    size = 0
    for name, value in headers:
        size += len(name) + len(value)
        if found is not None:
            continue
        if name == b"authorization":
            scheme, _, rest = value.partition(b" ")
            if scheme.lower() == b"bearer" and rest.strip():
                found = rest.strip().decode("latin-1")
        elif name == api_key_header and value.strip():
            found = value.strip().decode("latin-1")
    if size > MAX_HEADER_BYTES:
        raise Refusal(431, "bad_request", "request headers too large")
    if found is None:
        raise Refusal(401, "no_credential", "a bearer token is required")
    return found


class Pipeline:
    def __init__(self, settings: Settings, router: Router, cache: TokenCache, store: TokenStore,
                 authority: TokenAuthority, limiter: RateLimiter, usage: UsageRecorder,
                 metrics: Metrics, clock: Callable[[], datetime], *,
                 legacy: LegacyVerifier | None = None) -> None:
        self.settings = settings
        self.router = router
        self.cache = cache
        self.store = store
        self.authority = authority
        self.limiter = limiter
        self.usage = usage
        self.metrics = metrics
        self.clock = clock
        self.legacy = legacy  # imported tokens (legacy_tokens), tried for non-authgate strings
        header = settings.api_key_header
        self._api_key_header = header.lower().encode() if header else None
        self._hash = authority.hash
        trusted = ClientAddresses(settings.trusted_proxies)
        self._addresses = trusted if trusted else None
        # client address -> monotonic time its failed-auth block ends (see the module docstring)
        self._blocked: OrderedDict[str | None, float] = OrderedDict()
        self.credits = CreditKeeper(store, limiter)  # usage credits' leases (SPEC §13)

    # The access log (gateway.access_log.AccessLog) when on; set by the services (serve only).
    access_log: AccessLog | None = None

    def reconfigure(self, settings: Settings, router: Router) -> None:
        """A reload (``Services.reload``): the new settings' routes, limits and trusted proxies
        from the next request on. Blocked addresses are forgotten when ``failed_auth_limit``
        changed (each is re-learned on its next refused charge under the new limit)."""
        if settings.failed_auth_limit != self.settings.failed_auth_limit:
            self._blocked.clear()
        trusted = ClientAddresses(settings.trusted_proxies)
        self.settings, self.router = settings, router
        self._addresses = trusted if trusted else None

    # --- shared entry points for every caller (proxy, forward auth, admin API) ---------------

    def client_address(self, peer: str | None, headers: Headers) -> str | None:
        """The client address (SPEC §6): the TCP peer, or, when the peer is in
        ``trusted_proxies``, the rightmost X-Forwarded-For entry not itself trusted."""
        if self._addresses is None:  # the default: nothing to parse
            return peer
        return self._addresses.resolve(peer, headers)

    def brake(self, ip: str | None) -> None:
        """Refuse (429) a client address that is over ``failed_auth_limit`` before any work
        is done for it (no I/O); a no-op for an address in good standing."""
        if not self._blocked:  # the hot path: nobody is blocked
            return
        key = limit_key(ip)  # an IPv6 client's /64 (gateway.addresses)
        until = self._blocked.get(key)
        if until is None:
            return
        wait = until - time.monotonic()
        if wait <= 0:
            self._blocked.pop(key, None)
            return
        self._over_failed_limit(ip, math.ceil(wait))

    def _over_failed_limit(self, ip: str | None, retry_after: int) -> NoReturn:
        self.usage.event("rate_limited", "client_ip", ip)
        raise Refusal(429, "rate_limited", "too many refused credentials from this address",
                      retry_after=retry_after)

    def _block(self, key: str | None, retry_after_s: int) -> None:
        blocked = self._blocked
        blocked.pop(key, None)
        while len(blocked) >= MAX_BLOCKED:  # forgetting one costs a lookup, then re-learned
            blocked.popitem(last=False)
        blocked[key] = time.monotonic() + max(1, retry_after_s)

    async def refused_credential(self, ip: str | None, reason: str) -> None:
        """Charge a refused credential to ``ip`` (e.g. a wrong bootstrap admin secret); raises
        Refusal 429 when that puts it over ``failed_auth_limit``."""
        await self._failed(ip, reason)

    async def decide(self, method: str, path: str, headers: Headers, ip: str | None) -> Decision:
        """Judge one request. ``path`` is the request target's path as sent (still
        percent-encoded, no query); the router decodes it and refuses ambiguous paths."""
        route = self.router.match(path, method)
        if self.router.method_sensitive:  # routes by method: an override must not change it
            self.router.check_overrides(path, route, headers)
        if not route.auth_required:
            return await self._public(route, ip)
        try:
            raw = extract_credential(headers, self._api_key_header)
        except Refusal as refusal:
            if refusal.status == 401:
                self.usage.event("auth_failed", "missing", ip)
            raise
        record, now = await self._verify(raw, ip)
        missing = tokens.has_scopes(record.scopes, route.scopes)
        if missing is not None:
            self.usage.event("access_denied", "insufficient_scope", ip, record.id,
                             record.subject)
            raise Refusal(403, "insufficient_scope", f"the token lacks scope {missing}",
                          scope=" ".join(route.scopes), record=record)
        limit = await self._limit(record, route, ip)
        self.usage.hit(record.id, ip, now)
        return Decision(route, record, limit)

    async def verify(self, raw: str, ip: str | None, *, count_failures: bool = True) -> TokenRecord:
        """Steps 3-5 for a presented token: parse, look up, check. The one place a token is
        judged usable: the proxy, forward auth, admin callers and introspection all call it.

        ``count_failures`` charges a refused credential to ``ip`` (brute-force limit); off for
        introspection, where the caller is an authenticated client asking about someone else's.
        """
        return (await self._verify(raw, ip, count_failures))[0]

    async def _verify(self, raw: str, ip: str | None,
                      count_failures: bool = True) -> tuple[TokenRecord, datetime]:
        if count_failures and self._blocked:  # the common case costs one truth test
            self.brake(ip)
        record: TokenRecord | None = None
        token_hash = None
        if len(raw) <= tokens.MAX_TOKEN_LEN and raw.isascii():
            # The warm path: a record the LRU holds under this exact string's keyed hash was
            # put there after this string passed ``parse`` (the hash covers all of it), so
            # parsing it again would only repeat a verdict. Anything else is parsed first.
            token_hash = self._hash(raw)
            cached = self.cache.local.get(token_hash)
            if cached is not MISS and cached is not None:
                record = cached
                self.metrics.cache_layer["local"].inc()
        if record is None:
            try:
                parsed = tokens.parse(raw, self.settings.token_prefix)
            except tokens.MalformedToken:
                record = await self._not_authgate(raw, ip, count_failures)
            else:
                record = await self._lookup(token_hash or self._hash(parsed.plaintext))
        now = self.clock()
        if record is None:
            await self._failed(ip, "unknown", count_failures)
            raise Refusal(401, "invalid_token", "the token is unknown")
        unusable = self._unusable(record, now)
        if unusable is not None:  # a refused credential like any other: charged, braked
            await self._failed(ip, unusable, count_failures, record)
            raise Refusal(401, "invalid_token", _UNUSABLE[unusable], record=record)
        if record.is_replay(now):  # a rotated-out token after its grace: rare, off the hot path
            await self._replay(record, ip, count_failures)
        return record, now

    # --- steps ------------------------------------------------------------------------------

    async def _not_authgate(self, raw: str, ip: str | None, count: bool) -> TokenRecord:
        """A string that is not an authgate token: an imported one (SPEC §10, when
        ``legacy_tokens`` is set), else refused as malformed and charged like any refusal."""
        if self.legacy is not None:
            try:
                record = await self.legacy.verify(raw)
            except StoreUnavailable:
                raise Refusal(503, "unavailable", "the token store is unreachable; retry "
                              "shortly", retry_after=5) from None
            if record is not None:
                return record
        self.metrics.malformed.inc()
        await self._failed(ip, "malformed", count)
        raise Refusal(401, "invalid_token", "the token is malformed")

    async def _public(self, route: MatchedRoute, ip: str | None) -> Decision:
        if route.rate_limit is None:
            return Decision(route)
        key = limit_key(ip)  # an IPv6 client's /64, as the failed-auth brake
        result = await self.limiter.hit([(f"ip:{route.index}:{{{key}}}", route.rate_limit)])
        if not result.admitted:
            self.usage.event("rate_limited", "route", ip)
            raise Refusal(429, "rate_limited", "too many requests", limit=result,
                          retry_after=result.retry_after_s)
        return Decision(route, limit=result)

    async def _lookup(self, token_hash: str) -> TokenRecord | None:
        try:
            return await self.cache.lookup(token_hash, self._load, self._count_layer)
        except StoreUnavailable:
            raise Refusal(503, "unavailable", "the token store is unreachable; retry shortly",
                          retry_after=5) from None

    def _count_layer(self, layer: str) -> None:
        self.metrics.cache_layer[layer].inc()

    async def _load(self, token_hash: str) -> TokenRecord | None:
        self.metrics.store_lookups.inc()
        return await self.store.get_by_hash(token_hash)

    @staticmethod
    def _unusable(record: TokenRecord, now: datetime) -> str | None:
        if record.is_revoked(now) and not record.is_replay(now):
            return "revoked"
        if record.is_expired(now):
            return "expired"
        if record.suspended and not record.is_replay(now):  # its subject is (SPEC §7)
            return "suspended"
        return None

    async def _replay(self, record: TokenRecord, ip: str | None, count: bool) -> None:
        try:
            await self.authority.check_replay(record, Actor("gateway", ip))
        except StoreUnavailable:
            log.warning("replay of %s seen but the store is unreachable", record.id)
        # Each replay writes to the store: count it against the client's refused credentials
        # too, so one address cannot turn a stolen old token into a stream of writes.
        await self._failed(ip, "replay", count, record)
        raise Refusal(401, "invalid_token", "the token has been revoked", record=record)

    async def _failed(self, ip: str | None, why: str, count: bool = True,
                      record: TokenRecord | None = None) -> None:
        """Charge a refused credential to the client address: an ``auth_failed`` event, or,
        over the limit, a 429 (``rate_limited``) and the address is braked from then on."""
        if not count:  # introspection: an answer ({"active": false}), not a refusal
            return
        limit = self.settings.failed_auth_limit
        if limit is not None:
            key = limit_key(ip)  # an IPv6 client's /64: one budget, not 2^64
            result = await self.limiter.hit([(f"fail:{{{key}}}", limit)])
            if not result.admitted:
                self._block(key, result.retry_after_s)
                self._over_failed_limit(ip, result.retry_after_s)
        self.usage.event("auth_failed", why, ip, record.id if record else None,
                         record.subject if record else None)

    async def _limit(self, record: TokenRecord, route: MatchedRoute,
                     ip: str | None) -> LimitResult | None:
        if record.named_limits or record.credits is not None:  # SPEC §13, else as before
            return await self._quota(record, route, ip)
        limits: list[tuple[str, RateLimit]] = []
        own = record.rate_limit or self.settings.default_rate_limit
        if own is not None:
            limits.append((f"t:{{{record.id}}}", own))
        if route.rate_limit is not None:
            limits.append((f"r:{route.index}:{{{record.id}}}", route.rate_limit))
        if not limits:
            return None
        result = await self.limiter.hit(limits)
        if not result.admitted:
            # the route's limit is the last one passed, when the route has one
            which = "route" if route.rate_limit is not None and \
                result.index == len(limits) - 1 else "token"
            self.usage.event("rate_limited", which, ip, record.id, record.subject)
            raise Refusal(429, "rate_limited", "the token's rate limit is exhausted",
                          limit=result, retry_after=result.retry_after_s, record=record)
        return result

    async def _quota(self, record: TokenRecord, route: MatchedRoute,
                     ip: str | None) -> LimitResult | None:
        """Named limits and credits (SPEC §13): every limit, then one credit, in one atomic
        limiter call; an empty credit counter is refilled from the store (one lease) and the
        call repeated."""
        tag = f"{{{record.id}}}"  # a Redis Cluster hash tag: one slot for all of them
        names: list[str] = []
        limits: list[tuple[str, RateLimit]] = []
        for named in record.named_limits:
            names.append(named.name)
            limits.append((f"t:{tag}:{named.name}", named.limit))
        if not limits:
            own = record.rate_limit or self.settings.default_rate_limit
            if own is not None:
                names.append("default")
                limits.append((f"t:{tag}", own))
        if route.rate_limit is not None:
            names.append("route")
            limits.append((f"r:{route.index}:{tag}", route.rate_limit))
        credits = record.credits
        now = self.clock()
        try:
            result = await charge(self.limiter, self.credits, record.id, limits, credits, now)
        except StoreUnavailable:
            raise Refusal(503, "unavailable", "the token store is unreachable; retry "
                          "shortly", retry_after=5) from None
        if record.named_limits and limits:
            result = replace(result, named=tuple(
                (name, limit, *part) for name, (_, limit), part in
                zip(names, limits, result.parts, strict=True)))
        shown = result if limits else None
        if result.short:
            self.usage.event("rate_limited", "credits", ip, record.id, record.subject)
            raise Refusal(429, "credits_exhausted", "the token's credits are used up",
                          limit=shown, retry_after=retry_after_s(credits, now)
                          if credits is not None else None, record=record)
        if not result.admitted:
            which = "route" if route.rate_limit is not None and \
                result.index == len(limits) - 1 else "token"
            self.usage.event("rate_limited", which, ip, record.id, record.subject)
            raise Refusal(429, "rate_limited", "the token's rate limit is exhausted",
                          limit=shown, retry_after=result.retry_after_s, record=record)
        return shown


_UNUSABLE = {"revoked": "the token has been revoked", "expired": "the token has expired",
             "suspended": "the token's subject is suspended"}

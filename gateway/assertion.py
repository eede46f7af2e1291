"""Signed identity assertion (SPEC §11): an Ed25519 JWS per admitted request, signing keys shared
by every replica through the store, the JWKS that lists them, rotation with overlap.

    Assertions(ttl_s, audience)    one per process; ``await start(store)`` reads the key set
                                   (creating the first key on a fresh store), then re-reads it
                                   every REFRESH_S in the background
    sign(record, request_id)       the compact JWS of one request: no I/O, no lock
    jwks()                         the JWKS document, cached bytes
    rotate() / rotate_key(store)   a new signing key (the CLI calls ``rotate_key`` directly)
    JwksEndpoint(assertions)       pure ASGI ``GET /.well-known/jwks.json`` for either listener

Why rotation leaves no gap (clocks within SKEW_S of each other, NTP; replicas reach the store).
A rotation commits a key with ``active_from = now + PUBLISH_DELAY_S``. A replica lists every key
it has read, and signs with the newest key whose ``active_from`` has passed on its own clock.
Every replica re-reads the set at most REFRESH_S (+ one query) after the commit, so every JWKS
lists the key by commit + 5 s, while the first replica to sign with it does so no earlier than
commit + 20 s - SKEW_S = commit + 15 s: no replica signs with a key that some replica's JWKS
does not list yet (10 s to spare for a slow store). The switch is read off each replica's clock,
not off its refresh, so every replica signs with the new key by commit + 20 s + SKEW_S = 25 s
(< 30 s). The previous key stays listed until the new one's ``active_from`` + ttl_s + SKEW_S: a
replica whose clock lags by up to SKEW_S signs its last assertion with it at ``active_from`` +
SKEW_S, and that one expires ttl_s later. A replica that cannot read the store keeps the set it
has (and says so once in the log).

Upstream caches: a JOSE client refetches the JWKS on an unknown kid, but PyJWT's PyJWKClient and
node's jose wait 30 s after their last fetch before doing so (``cooldown_duration``); one that
fetched in the ~20 s before the new key appeared refuses the new key until that wait ends.
Upstreams should set that wait to 10 s or less (the key is listed 15 s before it signs).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Protocol

from nacl.bindings import crypto_sign, crypto_sign_seed_keypair

from gateway.errors import StoreUnavailable
from gateway.responses import error_json, send_json

if TYPE_CHECKING:
    from gateway.store import SqlStore
    from gateway.store.sql import Row

log = logging.getLogger("authgate.assertion")

ISSUER = "authgate"
JWKS_PATH = "/.well-known/jwks.json"
REFRESH_S = 5.0          # how often a replica re-reads the key set
PUBLISH_DELAY_S = 20.0   # a new key is listed this long before anyone signs with it
SKEW_S = 5.0             # clock disagreement between replicas tolerated
RETAIN_S = 86400.0       # a retired key's row is dropped (at a rotation) this long after
# A cache that honours max-age still refreshes before a published key starts signing
# (PUBLISH_DELAY_S - REFRESH_S - SKEW_S); JOSE libraries also refetch on an unknown kid.
JWKS_MAX_AGE_S = 10

Clock = Callable[[], float]  # seconds since the epoch
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

# One encoder: json.dumps(separators=...) would build a new one per call.
_encode = json.JSONEncoder(separators=(",", ":")).encode


class Identity(Protocol):
    """What an assertion says about the caller (a TokenRecord has it)."""

    @property
    def id(self) -> str: ...
    @property
    def subject(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def scopes(self) -> Sequence[str]: ...


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def thumbprint(x: str) -> str:
    """The RFC 7638 thumbprint of an Ed25519 public key: its kid, the same on every replica."""
    member = _encode({"crv": "Ed25519", "kty": "OKP", "x": x})  # members in lexical order
    return b64url(hashlib.sha256(member.encode()).digest())


@dataclass(frozen=True, slots=True)
class SigningKey:
    seq: int
    kid: str
    x: str                 # public key, base64url
    created_at: float      # listed from here
    active_from: float     # signs from here
    seed: bytes = field(repr=False, compare=False)     # the private key (RFC 8032), 32 bytes
    secret: bytes = field(repr=False, compare=False)   # libsodium's form of it: seed + public
    header: bytes = field(repr=False, compare=False)   # encoded JWS header + "."

    @property
    def jwk(self) -> dict[str, str]:
        return {"kty": "OKP", "crv": "Ed25519", "x": self.x, "kid": self.kid, "use": "sig",
                "alg": "EdDSA"}

    @classmethod
    def of(cls, seq: int, seed: bytes, created_at: float, active_from: float) -> SigningKey:
        public, secret = crypto_sign_seed_keypair(seed)
        x = b64url(public)
        kid = thumbprint(x)
        header = _encode({"alg": "EdDSA", "typ": "JWT", "kid": kid}).encode()
        return cls(seq, kid, x, created_at, active_from, seed, secret,
                   base64.urlsafe_b64encode(header).rstrip(b"=") + b".")

    @classmethod
    def generate(cls, seq: int, created_at: float, active_from: float) -> SigningKey:
        return cls.of(seq, secrets.token_bytes(32), created_at, active_from)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature (libsodium: ~40% cheaper than OpenSSL's per call)."""
        return crypto_sign(message, self.secret)[:64]


def signer_at(keys: Sequence[SigningKey], now: float) -> tuple[SigningKey, float]:
    """The key that signs at ``now`` (the newest whose ``active_from`` has passed; the oldest if
    none has, as for a replica whose clock lags the first key's maker) and when that changes."""
    current = keys[0]
    for key in keys[1:]:  # ordered by seq; active_from never decreases along it
        if key.active_from > now:
            return current, key.active_from
        current = key
    return current, math.inf


def listed_at(keys: Sequence[SigningKey], now: float,
              ttl_s: float) -> tuple[list[SigningKey], float]:
    """The keys a JWKS lists at ``now``, newest first, and when that changes: every key read,
    but a key retired more than ttl_s + SKEW_S ago (its last assertion has expired)."""
    listed: list[SigningKey] = []
    until = math.inf
    for key, successor in zip(keys, [*keys[1:], None], strict=True):
        if successor is not None:
            end = successor.active_from + ttl_s + SKEW_S
            if end <= now:
                continue
            until = min(until, end)
        listed.append(key)
    listed.reverse()
    return listed, until


# --- the store ---------------------------------------------------------------------------------

def _queries() -> dict[str, str]:
    from gateway.store.sql import named_queries  # the store's own loader (cached per file)

    return named_queries("gateway", "assertion_keys.sql")


def _seconds(v: Any) -> float:
    """A time column: asyncpg gives a datetime, SQLite the ISO text its driver stored."""
    return (v if isinstance(v, datetime) else datetime.fromisoformat(v)).timestamp()


def _time(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _key(row: Row, known: MutableMapping[str, SigningKey]) -> SigningKey:
    kid = row["kid"]
    key = known.get(kid)
    if key is None or key.seq != row["seq"]:
        key = SigningKey.of(row["seq"], _unb64url(row["private_key"]),
                            _seconds(row["created_at"]), _seconds(row["active_from"]))
        if key.kid != kid:
            raise ValueError(f"signing key {row['seq']}: kid does not match its private key")
        known[kid] = key
    return key


def _row(key: SigningKey) -> tuple[Any, ...]:
    return (key.seq, key.kid, key.x, b64url(key.seed),
            _time(key.created_at), _time(key.active_from))


async def load_keys(store: SqlStore, clock: Clock = time.time,
                    known: MutableMapping[str, SigningKey] | None = None) -> tuple[SigningKey, ...]:
    """The key set, ordered by seq; on a store without keys the first one (signing at once:
    nothing was signed before it, and every replica starts by reading it)."""
    cached: MutableMapping[str, SigningKey] = {} if known is None else known
    rows = await store.driver.fetch(_queries()["signing_keys"])
    if not rows:
        now = clock()
        first = SigningKey.generate(1, now, now)
        async with store.driver.transaction() as tx:  # a racing replica's insert wins or ours
            await tx.execute(_queries()["insert_signing_key"], *_row(first))
        rows = await store.driver.fetch(_queries()["signing_keys"])  # ours or a racer's
    return tuple(_key(row, cached) for row in rows)


async def rotate_key(store: SqlStore, *, clock: Clock = time.time,
                     publish_delay_s: float = PUBLISH_DELAY_S) -> SigningKey:
    """Commit a new key that signs from now + publish_delay_s; drop rows retired > RETAIN_S."""
    for _ in range(5):  # a lost race (a concurrent rotation took the seq) reads again
        async with store.driver.transaction() as tx:
            known: dict[str, SigningKey] = {}
            keys = [_key(row, known) for row in await tx.fetch(_queries()["signing_keys"])]
            now = clock()
            seq, active_from = 1, now
            if keys:
                seq = keys[-1].seq + 1
                active_from = max(now + publish_delay_s, keys[-1].active_from)
            new = SigningKey.generate(seq, now, active_from)
            if not await tx.execute(_queries()["insert_signing_key"], *_row(new)):
                continue  # the seq is taken: another rotation committed first
            stale = [k.seq for k, nxt in pairwise(keys)
                     if nxt.active_from + RETAIN_S < now]
            if stale:
                await tx.execute(_queries()["drop_signing_keys_before"], max(stale) + 1)
            return new
    raise StoreUnavailable("signing key rotation: concurrent rotations kept winning; retry")


# --- one process's signer ----------------------------------------------------------------------

class Assertions:
    """The process's signer and JWKS, over the key set it last read from the store."""

    def __init__(self, ttl_s: int = 60, audience: str | None = None, *, issuer: str = ISSUER,
                 clock: Clock = time.time, refresh_s: float = REFRESH_S,
                 publish_delay_s: float = PUBLISH_DELAY_S) -> None:
        self.ttl_s = int(ttl_s)
        self._base: dict[str, Any] = {"iss": issuer, **({"aud": audience} if audience else {})}
        self._clock = clock
        self._refresh_s = refresh_s
        self._publish_delay_s = publish_delay_s
        self._store: SqlStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._known: dict[str, SigningKey] = {}
        self._keys: tuple[SigningKey, ...] = ()
        self._store_down = False
        # Hot-path state, recomputed only when the clock passes the next change (or on refresh).
        self._signer: SigningKey | None = None
        self._sign_until = -math.inf
        self._jwks = b'{"keys":[]}'
        self._jwks_until = -math.inf

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._keys

    def signing_key(self) -> SigningKey:
        now = self._clock()
        if now >= self._sign_until:
            self._pick(now)
        assert self._signer is not None
        return self._signer

    async def start(self, store: SqlStore, *, background: bool = True) -> None:
        """Read the key set (creating the first key); re-read it every refresh_s when
        ``background``. Raises StoreUnavailable when the store cannot be read."""
        self._store = store
        self.install(await load_keys(store, self._clock, self._known))
        if background:
            self.start_refresh()

    def start_refresh(self) -> None:
        """Re-read the key set every refresh_s from now on (a composition root whose start is
        synchronous calls this after ``await start(store, background=False)``)."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> None:
        if self._store is None:
            raise RuntimeError("Assertions.start() has not run")
        keys = await load_keys(self._store, self._clock, self._known)
        if keys != self._keys:
            self.install(keys)

    async def rotate(self) -> SigningKey:
        """A new signing key, listed at once here (other replicas within REFRESH_S); it signs
        from publish_delay_s on."""
        if self._store is None:
            raise RuntimeError("Assertions.start() has not run")
        key = await rotate_key(self._store, clock=self._clock,
                               publish_delay_s=self._publish_delay_s)
        await self.refresh()
        return key

    def sign(self, record: Identity, request_id: str | bytes) -> str:
        """The compact JWS (EdDSA) asserting ``record``'s identity for request ``request_id``."""
        now = self._clock()
        if now >= self._sign_until:
            self._pick(now)
        key = self._signer
        if key is None:
            raise RuntimeError("Assertions.start() has not run")
        if isinstance(request_id, bytes):
            request_id = request_id.decode("latin-1")
        iat = int(now)
        claims = {**self._base, "sub": record.subject, "iat": iat, "exp": iat + self.ttl_s,
                  "jti": request_id, "scope": " ".join(record.scopes), "tid": record.id,
                  "tname": record.name}
        signing_input = key.header + base64.urlsafe_b64encode(
            _encode(claims).encode()).rstrip(b"=")
        signature = base64.urlsafe_b64encode(key.sign(signing_input)).rstrip(b"=")
        return (signing_input + b"." + signature).decode("ascii")

    def jwks(self) -> bytes:
        """``{"keys": [...]}``: the keys listed now, newest first (the JSON is rebuilt only when
        the listing changes)."""
        now = self._clock()
        if now >= self._jwks_until:
            listed, self._jwks_until = listed_at(self._keys, now, self.ttl_s)
            self._jwks = _encode({"keys": [k.jwk for k in listed]}).encode()
        return self._jwks

    def install(self, keys: tuple[SigningKey, ...]) -> None:
        """Sign and list from ``keys`` (ordered by seq): start() and refresh() call it."""
        if not keys:
            raise StoreUnavailable("the store holds no identity-assertion signing key")
        self._keys = keys
        self._known = {k.kid: k for k in keys}  # forget dropped keys
        self._sign_until = self._jwks_until = -math.inf

    def _pick(self, now: float) -> None:
        if not self._keys:
            raise RuntimeError("Assertions.start() has not run")
        self._signer, self._sign_until = signer_at(self._keys, now)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except (StoreUnavailable, ValueError) as e:  # ValueError: a corrupt key row
                if not self._store_down:
                    log.warning("identity assertion: signing keys not re-read (%s); "
                                "signing with the set read before", e)
                self._store_down = True
            else:
                self._store_down = False


class JwksEndpoint:
    """Pure ASGI ``GET|HEAD /.well-known/jwks.json``, for the proxy and the admin listener alike;
    any other path under it is 404, any other method 405."""

    def __init__(self, assertions: Assertions) -> None:
        self._assertions = assertions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] != JWKS_PATH:
            await send_json(send, 404, error_json(
                "not_found", f"the key set is at {JWKS_PATH}"), [])
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send_json(send, 405, error_json(
                "invalid_request", "the key set is read with GET"), [(b"allow", b"GET, HEAD")])
            return
        body = self._assertions.jwks()
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"public, max-age=%d" % JWKS_MAX_AGE_S)]})
        await send({"type": "http.response.body",
                    "body": b"" if scope["method"] == "HEAD" else body})

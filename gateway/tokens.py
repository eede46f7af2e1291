"""Token format, checksum, hashing and scope matching: pure functions, no I/O.

A token is ``{prefix}_{random}{checksum}`` (SPEC §4): 32 base62 characters from a CSPRNG and a
6-character base62 CRC32 of them. The checksum lets the gateway refuse garbage and typos before
it touches a cache or the store, and lets secret scanners recognise leaked tokens.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import InvalidInput

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_LEN = 32  # 62**32 ~ 2**190.5
CHECKSUM_LEN = 6  # 62**6 > 2**32, so any CRC32 fits
BODY_LEN = RANDOM_LEN + CHECKSUM_LEN
HINT_LEN = 4
MAX_TOKEN_LEN = 16 + 1 + BODY_LEN

PREFIX_RE = re.compile(r"[a-z0-9_]{1,16}")
_BODY_RE = re.compile(f"[0-9A-Za-z]{{{BODY_LEN}}}")
# A scope is colon-separated segments; only a whole scope or a final segment may be "*".
_SCOPE_RE = re.compile(r"(\*|[A-Za-z0-9._/-]+(:[A-Za-z0-9._/-]+)*(:\*)?)")
MAX_SCOPE_LEN = 128
RESERVED_SCOPE_PREFIX = "authgate:"


class MalformedToken(ValueError):
    """The string cannot be an authgate token (shape, prefix or checksum)."""


@dataclass(frozen=True, slots=True)
class ParsedToken:
    prefix: str
    random: str
    plaintext: str

    @property
    def hint(self) -> str:
        return display_hint(self.prefix, self.random)


def _base62(n: int, width: int) -> str:
    digits = ""
    while n:  # prepending to a short str: cheaper than a list, reversed and joined
        n, r = divmod(n, 62)
        digits = BASE62[r] + digits
    return digits.rjust(width, "0")


def checksum(random: str) -> str:
    return _base62(zlib.crc32(random.encode("ascii")), CHECKSUM_LEN)


def display_hint(prefix: str, random: str) -> str:
    return f"{prefix}_{random[:HINT_LEN]}"


def validate_prefix(prefix: str) -> str:
    if not PREFIX_RE.fullmatch(prefix):
        raise InvalidInput("token_prefix", "must match [a-z0-9_]{1,16}")
    return prefix


def generate(prefix: str) -> ParsedToken:
    validate_prefix(prefix)
    random = "".join(secrets.choice(BASE62) for _ in range(RANDOM_LEN))
    return ParsedToken(prefix, random, f"{prefix}_{random}{checksum(random)}")


def parse(raw: str, expected_prefix: str | None = None) -> ParsedToken:
    """Split and verify a presented token. Raises MalformedToken; never does I/O."""
    if len(raw) > MAX_TOKEN_LEN:
        raise MalformedToken("too long")
    prefix, sep, body = raw.rpartition("_")
    if not sep or not PREFIX_RE.fullmatch(prefix) or not _BODY_RE.fullmatch(body):
        raise MalformedToken("not a token")
    if expected_prefix is not None and not hmac.compare_digest(prefix, expected_prefix):
        raise MalformedToken("wrong prefix")
    random, check = body[:RANDOM_LEN], body[RANDOM_LEN:]
    if not hmac.compare_digest(check, checksum(random)):
        raise MalformedToken("bad checksum")
    return ParsedToken(prefix, random, raw)


_SHA256_BLOCK = 64
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


@functools.lru_cache(maxsize=4)
def _hmac_pads(pepper: str) -> tuple[hashlib._Hash, hashlib._Hash]:
    """SHA-256 states with the pepper's inner and outer HMAC pads (RFC 2104) already
    absorbed: each hash then copies them instead of building an HMAC object (half the work)."""
    key = pepper.encode("utf-8")
    if len(key) > _SHA256_BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_SHA256_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def hash_token(plaintext: str, pepper: str | None) -> str:
    """Keyed hash stored in place of the token: HMAC-SHA256 with the pepper, else SHA-256."""
    data = plaintext.encode("ascii")
    if pepper:  # = hmac.new(pepper, data, sha256).hexdigest(), from the precomputed pads
        inner_pad, outer_pad = _hmac_pads(pepper)
        inner = inner_pad.copy()
        inner.update(data)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return outer.hexdigest()
    return hashlib.sha256(data).hexdigest()


def secrets_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


# --- scopes -----------------------------------------------------------------------------------


def validate_scope(scope: object, field: str = "scopes") -> str:
    if not isinstance(scope, str) or len(scope) > MAX_SCOPE_LEN or not _SCOPE_RE.fullmatch(scope):
        raise InvalidInput(field, f"invalid scope {scope!r}: use letters, digits and ._/- "
                                  "segments joined by ':', optionally ending in ':*'")
    return scope


def normalise_scopes(scopes: object, field: str = "scopes") -> tuple[str, ...]:
    if isinstance(scopes, str) or not isinstance(scopes, list | tuple):
        raise InvalidInput(field, "must be a list of scope strings")
    seen: dict[str, None] = {}
    for s in scopes:
        seen[validate_scope(s, field)] = None
    return tuple(seen)


def scope_grants(granted: str, needed: str) -> bool:
    """Does the token scope ``granted`` cover ``needed``? Wildcards never cover authgate:*."""
    if granted == needed:
        return True
    if needed.startswith(RESERVED_SCOPE_PREFIX):
        return False
    if granted == "*":
        return True
    return granted.endswith(":*") and needed.startswith(granted[:-1])


def has_scopes(granted: Sequence[str], needed: Sequence[str]) -> str | None:
    """Return the first needed scope the grant lacks, or None when all are covered."""
    for n in needed:
        if not any(scope_grants(g, n) for g in granted):
            return n
    return None

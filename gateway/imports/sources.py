"""Reading import sources into records (SPEC §10): the shared row checks, the JSON-lines reader
for ``sha256`` and ``bcrypt`` files, and the one-transaction import.

Everything is read and checked before the store is touched, so a bad line, row or column fails
the whole import and nothing is written (the store's insert is one transaction as well).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway import tokens
from gateway.authority import new_id
from gateway.errors import AuthgateError, InvalidInput
from gateway.store import Event, LegacyImport, LegacyStore, TokenRecord
from gateway.values import MAX_TEXT, check_metadata, check_text

KINDS = ("sanctum", "sha256", "bcrypt")
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
BCRYPT_HASH = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
BCRYPT_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_HINT = 16  # the legacy verifier tries hints of 1..MAX_HINT characters
# At most this many not-yet-matched bcrypt tokens may share one candidate key (prefix + hint): a
# refused request pays at most this many bcrypt checks (gateway/imports/legacy.py).
MAX_CANDIDATES = 8


class SourceError(AuthgateError):
    """The source cannot be imported; the message names the line, row or column."""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# Lookup keys stored as token_hash: computable from the presented token, never an authgate
# hash (those are 64 hex characters), so imported and issued tokens share the token cache.
def sanctum_key(sanctum_id: str, secret_sha256: str) -> str:
    return f"sanctum:{sanctum_id}:{secret_sha256}"


def sha256_key(digest: str) -> str:
    return f"sha256:{digest}"


def bcrypt_key(prefix: str, hint: str) -> str:
    """The candidate key a bcrypt token is looked up by until its first match."""
    return f"{prefix} {hint}"


def parse_time(where: str, column: str, value: object) -> datetime | None:
    """A source time: a datetime (naive means UTC, as Laravel stores it), ISO text or null."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise SourceError(f"{where}: {column}: {text[:40]!r} is not a time") from None
    if not isinstance(value, datetime):
        raise SourceError(f"{where}: {column}: expected a time, got {type(value).__name__}")
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_scopes(where: str, column: str, value: object) -> tuple[str, ...]:
    try:
        return tokens.normalise_scopes(value, column)
    except InvalidInput as e:
        raise SourceError(f"{where}: {column}: {e.message}") from None


def _text(where: str, column: str, value: object) -> str:
    try:
        return check_text(column, value, MAX_TEXT)
    except InvalidInput as e:
        raise SourceError(f"{where}: {column}: {e.message}") from None


def record(kind: str, where: str, *, token_hash: str, legacy_hash: str, hint: str,
           subject: object, name: object, scopes: tuple[str, ...], created_at: datetime | None,
           expires_at: datetime | None, last_used_at: datetime | None,
           metadata: Mapping[str, Any], now: datetime) -> TokenRecord:
    return TokenRecord(
        id=new_id("tok"), subject=_text(where, "subject", subject),
        name=_text(where, "name", name), scopes=scopes, family=new_id("fam"),
        token_hash=token_hash, hint=hint, created_at=created_at or now,
        metadata=dict(metadata), expires_at=expires_at, last_used_at=last_used_at,
        legacy_kind=kind, legacy_hash=legacy_hash)


# --- JSON lines: sha256 and bcrypt ----------------------------------------------------------

_COMMON = {"subject", "name", "scopes", "expires_at", "created_at", "last_used_at", "metadata"}


def read_jsonl(kind: str, path: str, prefix: str | None = None,
               now: datetime | None = None) -> list[LegacyImport]:
    """Every line of ``path`` as an import, or SourceError naming the first bad line."""
    now = now or datetime.now(UTC)
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().split(b"\n")
    except OSError as e:
        raise SourceError(f"cannot read {path}: {e.strerror or e}") from None
    allowed = _COMMON | {kind} | ({"hint"} if kind == "bcrypt" else set())
    found: list[LegacyImport] = []
    seen: dict[str, int] = {}
    per_key: dict[str, int] = {}
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        where = f"line {number}"
        try:
            line = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise SourceError(f"{where}: not valid JSON ({str(e).split(':')[0]})") from None
        if not isinstance(line, dict):
            raise SourceError(f"{where}: expected a JSON object")
        unknown = sorted(set(line) - allowed)
        if unknown:
            raise SourceError(f"{where}: unknown key {unknown[0]!r}")
        for key in (kind, "subject", "name", "scopes"):
            if key not in line:
                raise SourceError(f"{where}: missing key {key!r}")
        digest = line[kind]
        if kind == "sha256":
            if not isinstance(digest, str) or not HEX64.fullmatch(digest):
                raise SourceError(f"{where}: sha256: expected 64 hex characters")
            digest = digest.lower()
            item = LegacyImport(_line_record(kind, where, line, sha256_key(digest), digest,
                                             "sha256", now))
        else:
            assert prefix is not None
            if not isinstance(digest, str) or not BCRYPT_HASH.fullmatch(digest):
                raise SourceError(f"{where}: bcrypt: expected a $2a$/$2b$/$2y$ bcrypt hash")
            hint = line.get("hint", "")
            if not isinstance(hint, str) or len(hint) > MAX_HINT or not (
                    hint == "" or (hint.isascii() and hint.isprintable() and " " not in hint)):
                raise SourceError(f"{where}: hint: expected the token's first 1-{MAX_HINT} "
                                  "characters after the prefix")
            key = bcrypt_key(prefix, hint)
            per_key[key] = per_key.get(key, 0) + 1
            if per_key[key] > MAX_CANDIDATES:
                raise SourceError(
                    f"{where}: more than {MAX_CANDIDATES} tokens share prefix {prefix!r} and "
                    f"hint {hint!r}; each refused request would pay a bcrypt check per token: "
                    "give each line a longer \"hint\" (the token's first characters after the "
                    "prefix)")
            item = LegacyImport(_line_record(kind, where, line, f"bcrypt:{digest}", digest,
                                             prefix + hint, now), prefix, key)
        if digest in seen:
            raise SourceError(f"{where}: duplicate {kind} (also on line {seen[digest]})")
        seen[digest] = number
        found.append(item)
    return found


def _line_record(kind: str, where: str, line: dict[str, Any], token_hash: str, digest: str,
                 hint: str, now: datetime) -> TokenRecord:
    try:
        metadata = check_metadata(line.get("metadata"))
    except InvalidInput as e:
        raise SourceError(f"{where}: metadata: {e.message}") from None
    return record(
        kind, where, token_hash=token_hash, legacy_hash=digest, hint=hint,
        subject=line["subject"], name=line["name"],
        scopes=check_scopes(where, "scopes", line["scopes"]),
        created_at=parse_time(where, "created_at", line.get("created_at")),
        expires_at=parse_time(where, "expires_at", line.get("expires_at")),
        last_used_at=parse_time(where, "last_used_at", line.get("last_used_at")),
        metadata=metadata, now=now)


async def run_import(store: LegacyStore, kind: str, items: Sequence[LegacyImport], source: str,
                     actor: str, now: datetime | None = None) -> tuple[int, int]:
    """Import in one transaction with one ``tokens_imported`` event: (imported, skipped)."""
    event = Event(type="tokens_imported", actor=actor, at=now or datetime.now(UTC),
                  details={"kind": kind, "source": source})
    return await store.import_tokens(kind, items, event,
                                     MAX_CANDIDATES if kind == "bcrypt" else None)

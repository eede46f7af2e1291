"""Value checks shared by every way in (CLI, admin API, authority): bounds on what a store can
hold and a response can carry back, each refused as InvalidInput naming its field.

Pure functions over plain values: no store, no settings, no clock.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from gateway.config import RateLimit, parse_duration, parse_rate_limit
from gateway.errors import InvalidInput
from gateway.store import STATUSES, Status

MAX_GRACE_S = 30 * 86400
MAX_LIFETIME_S = 100 * 365 * 86400
MAX_TEXT = 200
MAX_METADATA_BYTES = 4096
MAX_METADATA_DEPTH = 8
MAX_PAGE = 500
MAX_RATE = 10**9  # requests per window; the store keeps it in a 32-bit column
MAX_WINDOW_S = 366 * 86400
# The latest expiry a record can hold: a rotation's successor is capped here, not overflowed.
MAX_TIME = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
_MAX_CURSOR = 2**63 - 1  # a 64-bit store position
# Control characters (C0, DEL, C1), line separators and lone surrogates (not UTF-8, so no store
# can hold them): never in a subject, name or reason.
BAD_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
# What no store can hold (jsonb refuses \u0000; lone surrogates are not UTF-8): never in metadata.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"c1:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if cursor is None or cursor == "":
        return None
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        kind, _, number = text.partition(":")
        if kind == "c1" and number.isascii() and number.isdigit() and len(number) <= 19 \
                and int(number) <= _MAX_CURSOR:
            return int(number)
    except (ValueError, UnicodeDecodeError):
        pass
    raise InvalidInput("cursor", "not a cursor this server issued")


def check_text(field: str, value: object, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(field, "must be a non-empty string")
    if len(value) > max_len:
        raise InvalidInput(field, f"must be at most {max_len} characters")
    if BAD_CHARS.search(value):
        raise InvalidInput(field, "must not contain control characters or lone surrogates")
    return value


def check_metadata(value: object) -> dict[str, Any]:
    """A JSON object every store keeps and every response can carry back: at most
    ``MAX_METADATA_DEPTH`` levels (a deeper one once made every token list fail), no NaN or
    infinity, no control characters; returned as a fresh copy of what will be stored."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInput("metadata", "must be an object with string keys")
    _check_json(value, 1)
    try:
        encoded = json.dumps(value, allow_nan=False)
    except ValueError:  # an integer past Python's conversion limit
        raise InvalidInput("metadata", "must be JSON") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise InvalidInput("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    copy: dict[str, Any] = json.loads(encoded)
    return copy


def _check_json(value: object, depth: int) -> None:
    """Depth first, so a hostile nesting is refused before it is walked deep."""
    if isinstance(value, Mapping | list):
        if depth > MAX_METADATA_DEPTH:
            raise InvalidInput("metadata", f"must nest at most {MAX_METADATA_DEPTH} levels")
        if isinstance(value, Mapping):
            for key in value:
                if not isinstance(key, str):
                    raise InvalidInput("metadata", "must be an object with string keys")
                _check_json(key, depth)
        for item in value.values() if isinstance(value, Mapping) else value:
            _check_json(item, depth + 1)
    elif isinstance(value, str):
        if _UNSTORABLE.search(value):
            raise InvalidInput("metadata", "must not contain NUL characters or lone surrogates")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput("metadata", "must not contain NaN or infinity")
    elif value is not None and not isinstance(value, bool | int):
        raise InvalidInput("metadata", "must be JSON")


def check_limit(value: object, max_value: int = MAX_PAGE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= max_value:
        raise InvalidInput("limit", f"must be a whole number from 1 to {max_value}")
    return value


def check_seconds(field: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise InvalidInput(field, str(e)) from None
    if seconds < minimum or (maximum is not None and seconds > maximum):
        raise InvalidInput(field, f"must be from {minimum}s to {maximum}s" if maximum
                           else f"must be at least {minimum}s")
    return seconds


def check_rate_limit(value: object) -> RateLimit | None:
    if value is None:
        return None
    try:
        rate = parse_rate_limit(value)
    except ValueError as e:
        raise InvalidInput("rate_limit", str(e)) from None
    if rate.limit > MAX_RATE or rate.window_s > MAX_WINDOW_S:
        raise InvalidInput("rate_limit", f"must be at most {MAX_RATE} requests in a window of "
                                         f"at most {MAX_WINDOW_S}s")
    return rate


def check_filter(field: str, value: str | None) -> str | None:
    """A filter value no store can hold matches nothing: say so instead of failing in SQL."""
    if value is not None and BAD_CHARS.search(value):
        raise InvalidInput(field, "must not contain control characters or lone surrogates")
    return value


def check_status(value: object) -> Status | None:
    if value is None:
        return None
    for status in STATUSES:
        if value == status:
            return status
    raise InvalidInput("status", f"must be one of {', '.join(STATUSES)}")

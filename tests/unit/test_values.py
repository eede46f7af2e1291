"""Value checks (SPEC §4, §8 input limits): each bad value is refused as InvalidInput naming its
field, before anything is written. Pure functions; test_authority.py covers them end to end."""

from __future__ import annotations

import base64
import math

import pytest

from gateway.config import RateLimit
from gateway.errors import InvalidInput
from gateway.values import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_PAGE,
    MAX_RATE,
    MAX_TEXT,
    MAX_WINDOW_S,
    check_filter,
    check_limit,
    check_metadata,
    check_rate_limit,
    check_seconds,
    check_status,
    check_text,
    decode_cursor,
    encode_cursor,
)


def refused(call, *args, **kw) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        call(*args, **kw)
    return caught.value


@pytest.mark.parametrize("position", [0, 1, 12345, 2**63 - 1])
def test_a_cursor_round_trips_its_store_position(position):
    cursor = encode_cursor(position)
    assert "=" not in cursor and decode_cursor(cursor) == position


@pytest.mark.parametrize("cursor", [None, ""])
def test_no_cursor_is_the_first_page(cursor):
    assert decode_cursor(cursor) is None


@pytest.mark.parametrize("cursor", [
    "garbage!", "YWJj",                                   # not base64 / not ours ("abc")
    base64.urlsafe_b64encode(b"c2:5").decode(),           # another kind
    base64.urlsafe_b64encode(b"c1:-5").decode(),          # not a whole number
    base64.urlsafe_b64encode(f"c1:{2**63}".encode()).decode(),  # past a 64-bit position
    base64.urlsafe_b64encode("c1:١٢".encode()).decode(),  # digits, but not ASCII ones
])
def test_a_cursor_this_server_did_not_issue_is_refused(cursor):
    assert refused(decode_cursor, cursor).field == "cursor"


def test_text_is_non_empty_bounded_and_printable():
    assert check_text("name", "ci deploy") == "ci deploy"
    assert check_text("name", "x" * MAX_TEXT) == "x" * MAX_TEXT
    assert check_text("reason", "r" * 500, 500) == "r" * 500
    for bad in (None, 5, "", "   ", "x" * (MAX_TEXT + 1), "a\x00b", "a\nb", "a\x85b",
                "a\u2028b", "a\ud800b"):
        assert refused(check_text, "name", bad).field == "name"


def test_metadata_is_a_bounded_json_object_returned_as_a_fresh_copy():
    given = {"team": "infra", "n": [1, 2.5, True, None], "deep": {"a": {"b": "é"}}}
    copy = check_metadata(given)
    assert copy == given and copy is not given and copy["n"] is not given["n"]
    assert check_metadata(None) == {}


def _nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


@pytest.mark.parametrize("bad", [
    ["not", "an", "object"], "text", {1: "non-string key"}, {"k": {2: "v"}},
    {"k": math.nan}, {"k": [math.inf]}, {"k": "a\x00b"}, {"k\x00": 1}, {"k": "\ud800"},
    {"k": object()}, {"k": {1, 2}},
    {"k": "v" * MAX_METADATA_BYTES},
    _nested(MAX_METADATA_DEPTH + 1),
])
def test_bad_metadata_is_refused(bad):
    assert refused(check_metadata, bad).field == "metadata"


def test_metadata_may_nest_exactly_to_the_limit():
    assert check_metadata(_nested(MAX_METADATA_DEPTH)) == _nested(MAX_METADATA_DEPTH)


def test_a_page_limit_is_a_whole_number_within_bounds():
    assert check_limit(1) == 1 and check_limit(MAX_PAGE) == MAX_PAGE
    assert check_limit(1000, 1000) == 1000
    for bad in (0, -1, MAX_PAGE + 1, True, 1.0, "5", None):
        assert refused(check_limit, bad).field == "limit"


def test_durations_are_bounded_and_name_their_field():
    assert check_seconds("grace", "1h") == 3600 and check_seconds("grace", 0) == 0
    assert check_seconds("expires_in", 60, minimum=1, maximum=60) == 60
    assert refused(check_seconds, "grace", "banana").field == "grace"
    assert refused(check_seconds, "grace", "-1s").field == "grace"
    assert refused(check_seconds, "expires_in", 0, minimum=1).field == "expires_in"
    assert refused(check_seconds, "older_than", 61, maximum=60).field == "older_than"


def test_rate_limits_are_bounded_by_what_the_store_holds():
    assert check_rate_limit(None) is None
    assert check_rate_limit("100/minute") == RateLimit(100, 60)
    assert check_rate_limit(f"{MAX_RATE}/day") == RateLimit(MAX_RATE, 86400)
    for bad in ("-5/minute", "5/fortnight", f"{MAX_RATE + 1}/minute",
                {"limit": 1, "window_s": MAX_WINDOW_S + 1}):
        assert refused(check_rate_limit, bad).field == "rate_limit"


def test_a_filter_value_no_store_can_hold_is_refused_not_matched():
    assert check_filter("subject", None) is None
    assert check_filter("subject", "x'; DROP TABLE tokens; --") == "x'; DROP TABLE tokens; --"
    assert refused(check_filter, "family", "a\x00b").field == "family"


def test_status_is_one_of_the_three_or_none():
    assert [check_status(s) for s in (None, "active", "revoked", "expired")] == [
        None, "active", "revoked", "expired"]
    for bad in ("bogus", "Active", 1):
        assert refused(check_status, bad).field == "status"

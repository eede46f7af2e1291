"""Named limits and credits (SPEC §13): parsing, checks, refill periods, headers, bounds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.admin.access import _faster_than_all, _more_credits
from gateway.cache import record_from_json, record_to_json
from gateway.config import RateLimit
from gateway.credits import (
    Credits,
    NamedLimit,
    check_credits,
    check_named_limits,
    lease_size,
    next_refill,
    parse_cli_limits,
    parse_refill,
    period_of,
    retry_after_s,
)
from gateway.errors import InvalidInput, Refusal
from gateway.ratelimit import LimitResult
from gateway.responses import rate_limit_headers, render_refusal
from gateway.store import TokenRecord

NOW = datetime(2026, 12, 31, 22, 30, tzinfo=UTC)


def _check(value):
    return check_named_limits(value, 10**9, 366 * 86400)


def test_named_limits_parse_in_order():
    got = _check([{"name": "burst", "limit": 10, "window_s": 1},
                  {"name": "hourly", "limit": 1000, "window_s": 3600}])
    assert got == (NamedLimit("burst", RateLimit(10, 1)), NamedLimit("hourly",
                                                                     RateLimit(1000, 3600)))
    assert [str(n) for n in got] == ["burst=10/second", "hourly=1000/hour"]


@pytest.mark.parametrize(("value", "field"), [
    ([], "rate_limit"),
    ([{"name": "a", "limit": 1, "window_s": 1}] * 2, "rate_limit[1].name"),
    ([{"name": "A", "limit": 1, "window_s": 1}], "rate_limit[0].name"),
    ([{"name": "a" * 33, "limit": 1, "window_s": 1}], "rate_limit[0].name"),
    ([{"name": 5, "limit": 1, "window_s": 1}], "rate_limit[0].name"),
    ([{"name": "a", "limit": 0, "window_s": 1}], "rate_limit[0]"),
    ([{"name": "a", "limit": True, "window_s": 1}], "rate_limit[0]"),
    ([{"name": "a", "limit": 10**10, "window_s": 1}], "rate_limit[0]"),
    ([{"name": "a", "limit": 1, "window_s": 10**9}], "rate_limit[0]"),
    ([{"name": "a", "limit": 1}], "rate_limit[0]"),
    (["10/second"], "rate_limit[0]"),
    ([{"name": f"n{i}", "limit": 1, "window_s": 1} for i in range(9)], "rate_limit"),
])
def test_malformed_named_limits_name_the_field(value, field):
    with pytest.raises(InvalidInput) as e:
        _check(value)
    assert e.value.field == field


def test_credits_parse_and_show_as_the_api_does():
    c = check_credits({"remaining": 5, "refill": {"amount": 10, "interval": "month"}}, NOW)
    assert c == Credits(5, 10, "month", period_of("month", NOW))
    assert c.as_dict() == {"remaining": 5, "refill": {"amount": 10, "interval": "month"}}
    assert check_credits({"remaining": 0}, NOW) == Credits(0)
    assert check_credits(None, NOW) is None


@pytest.mark.parametrize(("value", "field"), [
    ({"remaining": -1}, "credits.remaining"),
    ({"remaining": 1.5}, "credits.remaining"),
    ({"remaining": 10**13}, "credits.remaining"),
    ({}, "credits"),
    ({"remaining": 1, "extra": 1}, "credits"),
    ("100", "credits"),
    ({"remaining": 1, "refill": {"amount": 1, "interval": "week"}}, "credits.refill.interval"),
    ({"remaining": 1, "refill": {"amount": 0, "interval": "day"}}, "credits.refill.amount"),
    ({"remaining": 1, "refill": {"amount": 1}}, "credits.refill"),
])
def test_malformed_credits_name_the_field(value, field):
    with pytest.raises(InvalidInput) as e:
        check_credits(value, NOW)
    assert e.value.field == field


def test_refill_periods_are_utc_calendar_days_and_months():
    assert period_of("day", NOW) + 1 == period_of("day", datetime(2027, 1, 1, tzinfo=UTC))
    assert period_of("month", NOW) + 1 == period_of("month", datetime(2027, 1, 1, tzinfo=UTC))
    assert period_of(None, NOW) == 0
    assert next_refill("day", NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_refill("month", NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert next_refill("month", datetime(2026, 1, 31, 23, tzinfo=UTC)) == datetime(
        2026, 2, 1, tzinfo=UTC)
    assert next_refill(None, NOW) is None
    assert retry_after_s(Credits(0, 5, "day"), NOW) == 90 * 60
    assert retry_after_s(Credits(0), NOW) is None


def test_lease_is_a_tenth_of_the_balance_between_1_and_100():
    assert lease_size(Credits(5)) == 1
    assert lease_size(Credits(1000)) == 100
    assert lease_size(Credits(10**9)) == 100
    assert lease_size(Credits(0, 300, "day")) == 30


def test_cli_forms():
    assert parse_cli_limits(["100/minute"]) == RateLimit(100, 60)
    assert parse_cli_limits(["burst=10/second", "hourly=1000/hour"]) == [
        {"name": "burst", "limit": 10, "window_s": 1},
        {"name": "hourly", "limit": 1000, "window_s": 3600}]
    assert parse_cli_limits(["only=5/day"]) == [{"name": "only", "limit": 5, "window_s": 86400}]
    for bad in (["5/fortnight"], ["a=5/fortnight"], ["5/second", "b=1/day"], ["=5/second"]):
        with pytest.raises(ValueError):
            parse_cli_limits(bad)
    assert parse_refill("1000/month") == {"amount": 1000, "interval": "month"}
    for bad in ("1000", "0/day", "-1/day", "5/week", "x/day"):
        with pytest.raises(ValueError):
            parse_refill(bad)


def test_named_headers_list_each_and_x_headers_show_the_tightest():
    burst, hourly = RateLimit(10, 1), RateLimit(1000, 3600)
    result = LimitResult(True, burst, 3, 1, 0, 0, ((3, 1), (990, 36)),
                         named=(("burst", burst, 3, 1), ("hourly", hourly, 990, 36)))
    h = {k.decode(): v.decode() for k, v in rate_limit_headers(result)}
    assert h["ratelimit-policy"] == '"burst";q=10;w=1, "hourly";q=1000;w=3600'
    assert h["ratelimit"] == '"burst";r=3;t=1, "hourly";r=990;t=36'
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"], h["x-ratelimit-reset"]) == (
        "10", "3", "1")
    single = LimitResult(True, burst, 3, 1, 0)
    assert dict(rate_limit_headers(single))[b"ratelimit-policy"] == b'"default";q=10;w=1'


def test_credits_exhausted_is_its_own_error():
    status, headers, body = render_refusal(Refusal(429, "credits_exhausted", "used up",
                                                   retry_after=60))
    assert status == 429 and body["error"] == "credits_exhausted"
    assert (b"retry-after", b"60") in headers
    _, _, body = render_refusal(Refusal(429, "rate_limited", "slow down", retry_after=1))
    assert body["error"] == "rate_limited"


def test_no_faster_means_held_wherever_the_caller_is():
    caller = (RateLimit(10, 1), RateLimit(1000, 86400))
    assert not _faster_than_all((RateLimit(5, 1), RateLimit(500, 86400)), caller)
    assert not _faster_than_all((RateLimit(10, 1), RateLimit(1000, 86400)), caller)  # equal
    assert _faster_than_all((RateLimit(10, 1),), caller)  # nothing holds it to 1000 a day
    assert _faster_than_all((RateLimit(20, 1), RateLimit(100, 86400)), caller)  # burst
    assert _faster_than_all((), caller)  # unlimited
    assert not _faster_than_all((RateLimit(1, 3600),), caller)  # slower than both
    assert _faster_than_all((RateLimit(1, 60),), caller)  # 1440 a day: more than 1000
    assert not _faster_than_all((), ())  # an unlimited caller may grant anything
    # one limit each: the old N/W rule
    assert _faster_than_all((RateLimit(100, 60),), (RateLimit(50, 60),))
    assert not _faster_than_all((RateLimit(50, 60),), (RateLimit(50, 60),))


def test_more_credits_than_the_caller():
    caller = Credits(100, 100, "month")
    assert not _more_credits(Credits(100, 100, "month"), caller)
    assert not _more_credits(Credits(5), caller)
    assert _more_credits(Credits(101), caller)
    assert _more_credits(None, caller)
    assert _more_credits(Credits(5, 200, "month"), caller)
    assert _more_credits(Credits(5, 10, "day"), caller)
    assert not _more_credits(Credits(5, 10, "month"), Credits(100, 100, "day"))
    assert _more_credits(Credits(5, 1, "day"), Credits(100))  # a refill the caller lacks
    assert not _more_credits(None, None)


def test_a_record_with_named_limits_and_credits_survives_the_shared_cache():
    record = TokenRecord(
        id="tok_1", subject="s", name="n", scopes=("read",), family="fam_1", token_hash="h",
        hint="agt_abcd", created_at=NOW,
        named_limits=(NamedLimit("burst", RateLimit(10, 1)),),
        credits=Credits(7, 10, "day", 42, 3))
    assert record_from_json(record_to_json(record)) == record

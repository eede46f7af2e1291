"""Refusals as clients see them (SPEC §3, §8): the status, WWW-Authenticate, the RateLimit
headers and the {"error", "error_description"} body."""

from __future__ import annotations

from gateway.config import RateLimit
from gateway.errors import Refusal
from gateway.ratelimit import LimitResult
from gateway.responses import render_refusal


def test_a_scope_refusal_names_the_missing_scope_in_www_authenticate():
    status, headers, body = render_refusal(Refusal(403, "insufficient_scope", "no",
                                                   scope="a b"))
    assert status == 403 and body["error"] == "insufficient_scope"
    assert dict(headers)[b"www-authenticate"].endswith(b'scope="a b"')


def test_a_rate_limit_refusal_carries_retry_after_and_the_ratelimit_headers():
    limit = LimitResult(False, RateLimit(100, 60), 0, 17, 3)
    status, headers, body = render_refusal(Refusal(429, "rate_limited", "slow down",
                                                   limit=limit, retry_after=3))
    assert status == 429 and body["error"] == "rate_limited"
    h = dict(headers)
    assert h[b"retry-after"] == b"3" and h[b"ratelimit-policy"] == b'"default";q=100;w=60'
    assert h[b"ratelimit"] == b'"default";r=0;t=17' and h[b"x-ratelimit-reset"] == b"17"

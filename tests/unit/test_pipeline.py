"""The pipeline's pure helpers (SPEC §3, §8): where the credential comes from, and how a refusal
is rendered (status, WWW-Authenticate, RateLimit headers, the error body)."""

from __future__ import annotations

import pytest

from gateway.config import RateLimit
from gateway.errors import Refusal
from gateway.pipeline import extract_credential, render_refusal
from gateway.ratelimit import LimitResult


def test_the_credential_is_a_bearer_token_or_the_configured_api_key_header():
    assert extract_credential([(b"authorization", b"bearer abc")], None) == "abc"
    assert extract_credential([(b"x-api-key", b"k")], b"x-api-key") == "k"


@pytest.mark.parametrize("headers", [
    [],
    [(b"authorization", b"Basic abc")],
    [(b"authorization", b"Bearer ")],
    [(b"x-api-key", b"k")],  # an API key header that is not configured
])
def test_no_usable_credential_is_401_no_credential(headers):
    with pytest.raises(Refusal) as caught:
        extract_credential(headers, None)
    assert caught.value.status == 401 and caught.value.reason == "no_credential"


def test_oversized_headers_are_431_before_the_credential_is_read():
    with pytest.raises(Refusal) as caught:
        extract_credential([(b"x-big", b"a" * 40_000), (b"authorization", b"Bearer x")], None)
    assert caught.value.status == 431


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

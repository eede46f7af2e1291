"""The pipeline's pure helpers (SPEC §3): where the credential comes from."""

from __future__ import annotations

import pytest

from gateway.errors import Refusal
from gateway.pipeline import extract_credential


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

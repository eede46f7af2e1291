from __future__ import annotations

import hashlib
import hmac
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import tokens
from gateway.errors import InvalidInput
from gateway.tokens import BASE62, MalformedToken, checksum, hash_token, parse


def test_generated_token_has_the_spec_shape():
    t = tokens.generate("agt")
    prefix, _, body = t.plaintext.rpartition("_")
    assert prefix == "agt"
    assert len(body) == 38 and all(c in BASE62 for c in body)
    assert body[32:] == checksum(body[:32])
    assert t.hint == "agt_" + body[:4]


def test_checksum_is_crc32_in_base62_msd_first_padded_to_six():
    random = "A" * 32
    n = zlib.crc32(random.encode())
    digits = ""
    while n:
        n, r = divmod(n, 62)
        digits = BASE62[r] + digits
    assert checksum(random) == digits.rjust(6, "0")
    assert len(checksum("0" * 32)) == 6


def test_tokens_are_unique():
    assert len({tokens.generate("agt").plaintext for _ in range(2000)}) == 2000


@pytest.mark.parametrize("prefix", ["sk", "dfg_live", "mk", "a", "abcdefghij012345"])
def test_custom_prefixes_round_trip_and_split_at_last_underscore(prefix):
    t = tokens.generate(prefix)
    parsed = parse(t.plaintext, prefix)
    assert parsed.prefix == prefix and parsed.random == t.random


@pytest.mark.parametrize("raw", [
    "", "agt_", "agt", "Bearer x", "agt_" + "A" * 37, "agt_" + "A" * 39, "AGT_" + "A" * 38,
    "agt_" + "A" * 31 + "!" + "A" * 6, "x" * 10_000, "agt_" + "é" * 38,
    "abcdefghij0123456_" + "A" * 38,
])
def test_garbage_is_malformed(raw):
    with pytest.raises(MalformedToken):
        parse(raw)


def test_wrong_prefix_is_malformed():
    t = tokens.generate("sk")
    with pytest.raises(MalformedToken):
        parse(t.plaintext, "agt")


@given(st.data())
def test_any_single_character_substitution_is_rejected(data):
    # Hypothesis draws the token too, so every example can be replayed exactly.
    random = data.draw(st.text(alphabet=BASE62, min_size=32, max_size=32))
    t = f"agt_{random}{checksum(random)}"
    parse(t, "agt")
    i = data.draw(st.integers(min_value=4, max_value=len(t) - 1))
    c = data.draw(st.sampled_from(BASE62).filter(lambda ch: ch != t[i]))
    with pytest.raises(MalformedToken):
        parse(t[:i] + c + t[i + 1:], "agt")


@given(st.text(max_size=80))
def test_parse_never_raises_anything_but_malformed(text):
    try:
        parse(text, "agt")
    except MalformedToken:
        pass


def test_hash_is_hmac_with_pepper_and_sha256_without():
    t = "agt_" + "A" * 38
    assert tokens.hash_token(t, None) == hashlib.sha256(t.encode()).hexdigest()
    assert tokens.hash_token(t, "pep") == hmac.new(b"pep", t.encode(), hashlib.sha256).hexdigest()
    assert tokens.hash_token(t, "pep") != tokens.hash_token(t, "other")


@pytest.mark.parametrize("bad", ["Agt", "a-b", "", "a" * 17, "ä"])
def test_invalid_prefix_is_refused(bad):
    with pytest.raises(InvalidInput):
        tokens.generate(bad)


@pytest.mark.parametrize(("granted", "needed", "ok"), [
    ("read", "read", True),
    ("read", "write", False),
    ("*", "anything:at:all", True),
    ("meter-reading:*", "meter-reading:read", True),
    ("meter-reading:*", "meter-reading", False),
    ("meter-reading:*", "meter-readingx:read", False),
    ("*", "authgate:admin", False),
    ("authgate:*", "authgate:admin", False),
    ("authgate:admin", "authgate:admin", True),
])
def test_scope_wildcards(granted, needed, ok):
    assert tokens.scope_grants(granted, needed) is ok


def test_has_scopes_names_the_first_missing_scope():
    assert tokens.has_scopes(["read", "reports:*"], ["read", "reports:x"]) is None
    assert tokens.has_scopes(["read"], ["read", "write"]) == "write"


@pytest.mark.parametrize("bad", ["", "a b", "a*", "*:x", "a:*:b", "x" * 129, "a\n", 5, None])
def test_bad_scope_strings_are_refused(bad):
    with pytest.raises(InvalidInput):
        tokens.normalise_scopes([bad])


def test_scopes_must_be_a_list_and_are_deduplicated():
    with pytest.raises(InvalidInput):
        tokens.normalise_scopes("read")
    assert tokens.normalise_scopes(["read", "write", "read"]) == ("read", "write")


@pytest.mark.parametrize("pepper", ["p", "bench", "x" * 64, "y" * 65, "Łukasz-ünïcode" * 9, "\0k"])
def test_keyed_hash_is_hmac_sha256_of_the_pepper(pepper: str) -> None:
    """hash_token computes HMAC from precomputed pads: it must equal the library's HMAC, for
    short peppers, a block-sized one and longer ones (hashed first, RFC 2104)."""
    for plaintext in ("ag_" + "A" * 38, "x", ""):
        expected = hmac.new(pepper.encode(), plaintext.encode(), hashlib.sha256).hexdigest()
        assert hash_token(plaintext, pepper) == expected
    assert hash_token("ag_a", None) == hashlib.sha256(b"ag_a").hexdigest()

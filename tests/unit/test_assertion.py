"""The identity assertion without a store: claims, header, expiry, the JWKS document and the
time rules of signing and listing (gateway/assertion.py, SPEC §11)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import jwt
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.assertion import (
    SKEW_S,
    Assertions,
    SigningKey,
    listed_at,
    signer_at,
    thumbprint,
)

T0 = 1_800_000_000.0


@dataclass(frozen=True)
class Record:
    id: str = "tok_1a2b3c"
    subject: str = "alice"
    name: str = "ci deploy"
    scopes: tuple[str, ...] = ("read", "reports:read")


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(seq: int, active_from: float, created_at: float | None = None) -> SigningKey:
    return SigningKey.generate(seq, active_from if created_at is None else created_at,
                               active_from)


def b64json(part: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def signer(clock: Clock, *keys: SigningKey, ttl_s: int = 60,
           audience: str | None = None) -> Assertions:
    a = Assertions(ttl_s, audience, clock=clock)
    a.install(keys or (key(1, clock.now),))
    return a


def test_claims_are_those_of_the_spec() -> None:
    clock = Clock(T0 + 0.7)
    token = signer(clock, audience="orders-api").sign(Record(), b"req-42")
    claims = b64json(token.split(".")[1])
    assert claims == {"iss": "authgate", "sub": "alice", "aud": "orders-api", "iat": int(T0),
                      "exp": int(T0) + 60, "jti": "req-42", "scope": "read reports:read",
                      "tid": "tok_1a2b3c", "tname": "ci deploy"}


def test_no_audience_means_no_aud_claim() -> None:
    claims = b64json(signer(Clock()).sign(Record(), "r").split(".")[1])
    assert "aud" not in claims


def test_exp_is_iat_plus_ttl() -> None:
    claims = b64json(signer(Clock(), ttl_s=300).sign(Record(), "r").split(".")[1])
    assert claims["exp"] - claims["iat"] == 300


def test_no_scope_is_an_empty_scope_claim() -> None:
    claims = b64json(signer(Clock()).sign(Record(scopes=()), "r").split(".")[1])
    assert claims["scope"] == ""


def test_non_ascii_identity_survives_the_round_trip() -> None:
    a = signer(Clock())
    token = a.sign(Record(subject="Łukasz", name="naïve \"quoted\""), "r")
    assert token.isascii()
    claims = b64json(token.split(".")[1])
    assert (claims["sub"], claims["tname"]) == ("Łukasz", 'naïve "quoted"')


def test_header_names_eddsa_and_the_signing_key() -> None:
    k = key(1, T0)
    header = b64json(signer(Clock(), k).sign(Record(), "r").split(".")[0])
    assert header == {"alg": "EdDSA", "typ": "JWT", "kid": k.kid}


def test_signature_verifies_with_the_listed_public_key_only() -> None:
    a = signer(Clock())
    token = a.sign(Record(), "r")
    jwk = json.loads(a.jwks())["keys"][0]
    public = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "="))
    head, payload, sig = token.split(".")
    raw_sig = base64.urlsafe_b64decode(sig + "==")
    public.verify(raw_sig, f"{head}.{payload}".encode())
    with pytest.raises(InvalidSignature):
        public.verify(raw_sig, f"{head}.{payload}x".encode())


def test_pyjwt_accepts_a_fresh_assertion_and_refuses_an_expired_one() -> None:
    clock = Clock(__import__("time").time())
    a = signer(clock, audience="api")
    public = jwt.PyJWK(json.loads(a.jwks())["keys"][0])
    decoded = jwt.decode(a.sign(Record(), "r"), public, algorithms=["EdDSA"], audience="api")
    assert decoded["sub"] == "alice"
    clock.now -= 61
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(a.sign(Record(), "r"), public, algorithms=["EdDSA"], audience="api")


def test_jwks_document_shape() -> None:
    k = key(1, T0)
    doc = json.loads(signer(Clock(), k).jwks())
    assert doc == {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": k.x, "kid": k.kid,
                             "use": "sig", "alg": "EdDSA"}]}


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3
    assert thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo") == \
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc8037_private_key_gives_its_public_key() -> None:
    d = base64.urlsafe_b64decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=")
    k = SigningKey.of(1, d, T0, T0)
    assert k.x == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"


def test_a_published_key_signs_only_from_its_active_from() -> None:
    old, new = key(1, T0), key(2, T0 + 15, created_at=T0)
    clock = Clock(T0 + 14.9)
    a = signer(clock, old, new)
    assert a.signing_key() is old
    assert b64json(a.sign(Record(), "r").split(".")[0])["kid"] == old.kid
    clock.now = T0 + 15
    assert b64json(a.sign(Record(), "r").split(".")[0])["kid"] == new.kid


def test_signer_falls_back_to_the_oldest_key_when_none_is_active_yet() -> None:
    first = key(1, T0 + 2)  # made by a replica whose clock runs 2 s ahead
    assert signer_at([first], T0) == (first, float("inf"))


def test_signer_at_says_when_the_signer_changes() -> None:
    a, b, c = key(1, T0), key(2, T0 + 15), key(3, T0 + 30)
    assert signer_at([a, b, c], T0 + 1) == (a, T0 + 15)
    assert signer_at([a, b, c], T0 + 15) == (b, T0 + 30)
    assert signer_at([a, b, c], T0 + 99) == (c, float("inf"))


def test_previous_key_is_listed_until_its_last_assertion_expired() -> None:
    ttl = 60
    old, new = key(1, T0), key(2, T0 + 15, created_at=T0)
    retired = T0 + 15
    # before the switch both are listed (the new one already, before it signs)
    assert listed_at([old, new], T0 + 1, ttl) == ([new, old], retired + ttl + SKEW_S)
    # an assertion signed with the old key just before the switch is valid until retired + ttl
    listed, _ = listed_at([old, new], retired + ttl - 0.001, ttl)
    assert old in listed
    listed, until = listed_at([old, new], retired + ttl + SKEW_S, ttl)
    assert listed == [new] and until == float("inf")


def test_jwks_drops_a_retired_key_when_its_window_ends_without_a_refresh() -> None:
    old, new = key(1, T0), key(2, T0 + 15, created_at=T0)
    clock = Clock(T0 + 20)
    a = signer(clock, old, new)
    assert [k["kid"] for k in json.loads(a.jwks())["keys"]] == [new.kid, old.kid]
    clock.now = T0 + 15 + 60 + SKEW_S
    assert [k["kid"] for k in json.loads(a.jwks())["keys"]] == [new.kid]


def test_jwks_bytes_are_cached_between_changes() -> None:
    a = signer(Clock())
    assert a.jwks() is a.jwks()


def test_signing_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        Assertions().sign(Record(), "r")

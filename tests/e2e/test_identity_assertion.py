"""The identity assertion wired into the gateway (SPEC §11), on both backend pairs: the upstream
receives an Ed25519 JWS per forwarded request with a token, verified as users will (PyJWT's
PyJWKClient fetching the gateway's JWKS over HTTP, from the proxy and from the admin listener);
a client's own copy of the header never reaches the upstream; forward-auth 200s carry one bound
to their X-Request-Id; off by default."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest

from gateway.authority import Actor

ADMIN = Actor("cli:test")
PUBLIC = [{"path": "/public/*", "auth": "none"}]
JWKS = "/.well-known/jwks.json"


def verify(jwks_url: str, token: str, audience: str | None = None) -> dict[str, Any]:
    """What an upstream does: the key by the token's kid (fetched over HTTP), then decode.
    Blocking (urllib): run off the loop that serves the gateway."""
    key = jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt(token)
    options = {} if audience else {"verify_aud": False}
    return jwt.decode(token, key, algorithms=["EdDSA"], audience=audience, issuer="authgate",
                      options=options)


def received(r: Any) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in r.json()["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


@pytest.mark.parametrize("forwarder", ["aiohttp", "httpx"])
async def test_the_upstream_receives_a_verifiable_assertion(start_gateway, http, forwarder):
    rg = await start_gateway(routes=PUBLIC, forwarder=forwarder, identity_assertion={
        "audience": "orders-api", "ttl_s": 120})
    record, secret = await rg.gateway.authority.create(ADMIN, subject="Łukasz", name="ci",
                                                       scopes=["read", "write"])
    r = await http.get(f"{rg.proxy}/echo", headers={
        "Authorization": f"Bearer {secret}", "X-Request-Id": "req-42",
        "X-Auth-Assertion": "forged", "x_auth_assertion": "forged too"})
    assert r.status_code == 200, r.text
    got = received(r)
    assert len(got["x-auth-assertion"]) == 1 and "x_auth_assertion" not in got
    token = got["x-auth-assertion"][0]
    assert token != "forged"
    for listener in (rg.proxy, rg.admin):
        claims = await asyncio.to_thread(verify, listener + JWKS, token, "orders-api")
        assert claims["sub"] == "Łukasz" and claims["jti"] == "req-42"
        assert claims["tid"] == record.id and claims["tname"] == "ci"
        assert claims["scope"] == "read write" and claims["exp"] - claims["iat"] == 120
    # A request without a token (auth: none) carries none, and no client copy either.
    r = await http.get(f"{rg.proxy}/public/echo", headers={"X-Auth-Assertion": "forged"})
    assert r.status_code == 200 and "x-auth-assertion" not in received(r)
    # The JWKS path is the gateway's, with no credential; HEAD too.
    r = await http.get(f"{rg.proxy}{JWKS}")
    assert r.status_code == 200 and r.json()["keys"][0]["crv"] == "Ed25519"
    assert "max-age" in r.headers["cache-control"]
    assert (await http.head(f"{rg.proxy}{JWKS}")).status_code == 200


async def test_a_custom_header_is_signed_and_never_taken_from_clients(start_gateway, http):
    rg = await start_gateway(identity_assertion={"header": "X-Gateway-Identity"})
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/echo", headers={
        "Authorization": f"Bearer {secret}", "x_gateway_identity": "forged",
        "X-GATEWAY-IDENTITY": "forged"})
    got = received(r)
    assert "x_gateway_identity" not in got and len(got["x-gateway-identity"]) == 1
    token = got["x-gateway-identity"][0]
    claims = await asyncio.to_thread(verify, rg.admin + JWKS, token)
    assert claims["sub"] == "a" and "aud" not in claims
    assert len(got["x-request-id"]) == 1 and claims["jti"] == got["x-request-id"][0]


async def test_forward_auth_200_carries_an_assertion(start_gateway, http):
    rg = await start_gateway(identity_assertion={"audience": "orders-api"})
    _, secret = await rg.gateway.authority.create(ADMIN, subject="bob", name="b")
    auth = {"Authorization": f"Bearer {secret}", "X-Forwarded-Uri": "/orders"}
    r = await http.get(f"{rg.admin}/v1/authorize", headers={**auth, "X-Request-Id": "fa-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "fa-1"
    claims = await asyncio.to_thread(verify, rg.admin + JWKS, r.headers["x-auth-assertion"],
                                     "orders-api")
    assert claims["sub"] == "bob" and claims["jti"] == "fa-1"
    r = await http.get(f"{rg.admin}/v1/authorize", headers=auth)  # a new request id
    claims = await asyncio.to_thread(verify, rg.proxy + JWKS, r.headers["x-auth-assertion"],
                                     "orders-api")
    assert claims["jti"] == r.headers["x-request-id"] and len(claims["jti"]) == 32
    r = await http.get(f"{rg.admin}/v1/authorize", headers={"X-Forwarded-Uri": "/orders"})
    assert r.status_code == 401 and "x-auth-assertion" not in r.headers


async def test_off_by_default(start_gateway, http):
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(ADMIN, subject="a", name="b")
    r = await http.get(f"{rg.proxy}/echo", headers={"Authorization": f"Bearer {secret}",
                                                    "X-Auth-Assertion": "forged"})
    assert r.status_code == 200 and "x-auth-assertion" not in received(r)
    r = await http.get(f"{rg.admin}{JWKS}")
    assert r.status_code == 404 and "identity_assertion" in r.json()["error_description"]
    # On the proxy the path is an ordinary one: judged (no token: 401) and forwarded.
    assert (await http.get(f"{rg.proxy}{JWKS}")).status_code == 401
    r = await http.get(f"{rg.proxy}{JWKS}", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and r.json()["path"] == JWKS
    r = await http.get(f"{rg.admin}/v1/authorize", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200 and "x-auth-assertion" not in r.headers
    assert "x-request-id" not in r.headers


async def test_a_bad_identity_assertion_setting_names_the_key():
    from gateway.config import load_settings
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_settings(None, env={"AUTHGATE_IDENTITY_ASSERTION": '{"ttl_s": 0, "aud": "x"}'})
    assert "identity_assertion.ttl_s" in str(e.value) and "identity_assertion.aud" in str(e.value)

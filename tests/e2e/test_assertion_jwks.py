"""An upstream verifying identity assertions as users will: PyJWT's PyJWKClient fetching the
JWKS over HTTP from a real server on loopback, on SQLite and PostgreSQL (SPEC §11)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import jwt
import pytest
import uvicorn

from gateway.assertion import JWKS_PATH, PUBLISH_DELAY_S, Assertions, JwksEndpoint, SigningKey
from gateway.store import SqlStore, make_store
from tests.e2e.conftest import free_port

AUDIENCE = "orders-api"


@dataclass(frozen=True)
class Record:
    id: str = "tok_9z"
    subject: str = "Łukasz"
    name: str = "deploy bot"
    scopes: tuple[str, ...] = ("read", "write")


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Served:
    assertions: Assertions   # the replica serving the JWKS
    other: Assertions        # a second replica on the same store
    url: str
    clock: Clock             # both replicas'


@pytest.fixture
async def served(store: SqlStore, store_url: str) -> AsyncIterator[Served]:
    async with store.driver.transaction() as tx:
        await tx.execute("DELETE FROM signing_keys")
    clock = Clock()
    a = Assertions(60, AUDIENCE, clock=clock)
    await a.start(store, background=False)
    second = make_store(store_url)
    await second.open()
    b = Assertions(60, AUDIENCE, clock=clock)
    await b.start(second, background=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(JwksEndpoint(a), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield Served(a, b, f"http://127.0.0.1:{port}", clock)
    finally:
        server.should_exit = True
        await task
        await second.close()


async def verify(client: jwt.PyJWKClient, token: str, audience: str = AUDIENCE) -> dict:
    """What an upstream does: the key by the token's kid (fetched over HTTP), then decode.
    PyJWKClient fetches with blocking urllib: off the loop that runs the server."""
    def run() -> dict:
        key = client.get_signing_key_from_jwt(token)
        return jwt.decode(token, key, algorithms=["EdDSA"], audience=audience, issuer="authgate")
    return await asyncio.to_thread(run)


def client_for(served: Served) -> jwt.PyJWKClient:
    # PyJWKClient refetches on an unknown kid only cooldown_duration (default 30 s) after its
    # last fetch; the README asks upstreams for 10 s or less. The test runs in real time, so 0.
    return jwt.PyJWKClient(served.url + JWKS_PATH, cache_keys=True, lifespan=300,
                           cooldown_duration=0)


async def test_pyjwt_verifies_an_assertion_signed_by_another_replica(served: Served) -> None:
    token = served.other.sign(Record(), "req-1")
    claims = await verify(client_for(served), token)
    assert claims["sub"] == "Łukasz" and claims["jti"] == "req-1"
    assert claims["scope"] == "read write" and claims["tid"] == "tok_9z"
    assert claims["tname"] == "deploy bot" and claims["aud"] == AUDIENCE
    assert claims["exp"] - claims["iat"] == 60


async def test_pyjwt_refuses_a_tampered_assertion(served: Served) -> None:
    head, payload, sig = served.assertions.sign(Record(), "r").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.InvalidSignatureError):
        await verify(client_for(served), f"{head}.{forged}.{sig}")


async def test_pyjwt_refuses_an_expired_assertion(served: Served) -> None:
    clock = Clock()
    clock.offset = -61
    late = Assertions(60, AUDIENCE, clock=clock)
    late.install(served.assertions.keys)
    with pytest.raises(jwt.ExpiredSignatureError):
        await verify(client_for(served), late.sign(Record(), "r"))


async def test_pyjwt_refuses_an_assertion_signed_by_an_unknown_key(served: Served) -> None:
    stranger = Assertions(60, AUDIENCE)
    stranger.install((SigningKey.generate(1, 0, 0),))
    with pytest.raises(jwt.PyJWKClientError, match="Unable to find a signing key"):
        await verify(client_for(served), stranger.sign(Record(), "r"))


async def test_pyjwt_refuses_another_audience(served: Served) -> None:
    with pytest.raises(jwt.InvalidAudienceError):
        await verify(client_for(served), served.assertions.sign(Record(), "r"), "billing")


async def test_pyjwt_refuses_an_hmac_token_keyed_with_the_public_key(served: Served) -> None:
    x = served.assertions.keys[0].x
    head = {"alg": "HS256", "kid": served.assertions.keys[0].kid}
    forged = jwt.encode({"sub": "mallory", "aud": AUDIENCE, "iss": "authgate"},
                        x.encode(), algorithm="HS256", headers=head)
    with pytest.raises(jwt.InvalidAlgorithmError):
        await verify(client_for(served), forged)


async def test_an_upstream_caching_the_jwks_follows_a_rotation(served: Served) -> None:
    client = client_for(served)
    before = served.other.sign(Record(), "r1")
    await verify(client, before)                  # the JWKS is now cached by the client
    # the rotation happened PUBLISH_DELAY_S ago (PyJWT checks iat against its own clock)
    served.clock.offset = -PUBLISH_DELAY_S - 1
    new = await served.other.rotate()
    served.clock.offset = 0
    await served.assertions.refresh()             # the serving replica's periodic re-read
    after = served.other.sign(Record(), "r2")
    assert jwt.get_unverified_header(after)["kid"] == new.kid
    # an unknown kid makes the client fetch the set again; the old key is still listed
    assert (await verify(client, after))["jti"] == "r2"
    assert (await verify(client, before))["jti"] == "r1"


async def test_the_jwks_endpoint_over_http(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url) as http:
        got = await http.get(JWKS_PATH)
        assert got.status_code == 200
        assert got.headers["content-type"] == "application/json"
        assert got.headers["cache-control"] == "public, max-age=10"
        assert got.content == served.assertions.jwks()
        head = await http.head(JWKS_PATH)
        assert head.status_code == 200 and head.content == b""
        post = await http.post(JWKS_PATH)
        assert post.status_code == 405 and post.headers["allow"] == "GET, HEAD"
        assert post.json()["error"] == "invalid_request"
        bad = await http.get(JWKS_PATH + "/x")
        assert bad.status_code == 404 and "jwks.json" in bad.json()["error_description"]

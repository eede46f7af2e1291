"""The forward-auth decision endpoint against a client that adds its own URI and method headers
(SPEC §7): sources that disagree are a 400, every URI is judged by the path rule of SPEC §3, and
no variant gets a 200 on a protected route without a token, or with a token lacking the scope."""

from __future__ import annotations

import itertools

import pytest

from gateway.authority import Actor
from tests.e2e.edge import RawResponse, raw_request

ROUTES = [{"path": "/public/*", "auth": "none"},
          {"path": "/admin/*", "scopes": ["admin"]},
          {"path": "/*", "methods": ["DELETE"], "scopes": ["write"]}]
PROTECTED = "/admin/secret?q=1"
# What a client adds: a public path, or the protected one written another way.
CLIENT_URIS = ["/public/x", "/public/x?q=1", "/public/../admin/secret", "/public/%2e%2e/admin/x",
               "/%61dmin/secret", "/admin/secret/../../public/x", "//public/x", "/admin/secret/"]
HEADERS = {"xfu": "X-Forwarded-Uri", "xou": "X-Original-URI"}


@pytest.fixture
async def gate(start_gateway):
    rg = await start_gateway(routes=ROUTES, failed_auth_limit=None)
    tokens = {}
    for name, scopes in (("read", ["read"]), ("admin", ["admin"]), ("write", ["write"])):
        _, tokens[name] = await rg.gateway.authority.create(
            Actor("cli:test"), subject="alice", name=name, scopes=scopes)
    return rg, tokens


async def ask(rg, sources: list[tuple[str, str]], token: str | None = None,
              method_headers: list[str] = ()) -> RawResponse:
    """GET /v1/authorize with URI ``sources`` in order: ("xfu"|"xou", uri) or ("tail", path)."""
    target, headers = "/v1/authorize", []
    for kind, uri in sources:
        if kind == "tail":
            target += uri.partition("?")[0]  # Envoy appends the path; its query stays out
        else:
            headers.append((HEADERS[kind], uri))
    headers += [("X-Forwarded-Method", m) for m in method_headers]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    return await raw_request(rg.admin, target, headers)


def sources_of(proxy: str, client: str, client_uri: str) -> list[list[tuple[str, str]]]:
    """Both orders of the proxy's source and the client's added one (a path after
    /v1/authorize has no order)."""
    pair = [(proxy, PROTECTED), (client, client_uri)]
    return [pair, pair[::-1]] if "tail" not in (proxy, client) else [pair]


async def test_disagreeing_uri_sources_are_400_and_never_allowed(gate):
    rg, tokens = gate
    seen = 0
    for proxy, client in itertools.product(["xfu", "xou", "tail"], repeat=2):
        if proxy == client == "tail":
            continue  # one request has one path
        for client_uri in CLIENT_URIS:
            for sources in sources_of(proxy, client, client_uri):
                for token in (None, tokens["read"]):
                    r = await ask(rg, sources, token)
                    assert r.status == 400, (sources, token is not None, r.status, r.body)
                    assert b'"invalid_request"' in r.body
                    seen += 1
    assert seen > 150


@pytest.mark.parametrize("sources", [
    [("xfu", PROTECTED)], [("xou", PROTECTED)], [("tail", PROTECTED)],
    [("xfu", PROTECTED), ("xou", PROTECTED)], [("xou", PROTECTED), ("tail", PROTECTED)],
    [("xfu", PROTECTED), ("xou", "/admin/secret?other=query"), ("tail", PROTECTED)],
    [("xou", "/%61dmin/secret")], [("tail", "/%61dmin/secret")],  # judged decoded
])
async def test_agreeing_sources_are_judged_by_the_route(gate, sources):
    rg, tokens = gate
    assert (await ask(rg, sources)).status == 401
    assert (await ask(rg, sources, tokens["read"])).status == 403
    r = await ask(rg, sources, tokens["admin"])
    assert r.status == 200 and r.header("x-auth-subject") == "alice"


AMBIGUOUS = ["/public/../admin/secret", "/public/%2e%2e/admin/secret", "/public/%2E%2e/admin/x",
             "/public%2f..%2fadmin/secret", "//admin/secret", "/./admin/secret",
             "/public/..;/admin/x", "/public/%252e%252e/admin/secret", "/public/%5c..%5cadmin/x",
             "/a%00", "/public/%zz"]


async def test_an_ambiguous_uri_from_any_source_is_400(gate):
    rg, tokens = gate
    for kind, uri in itertools.product(["xfu", "xou", "tail"], AMBIGUOUS):
        for token in (None, tokens["read"], tokens["admin"]):
            r = await ask(rg, [(kind, uri)], token)
            assert r.status == 400, (kind, uri, r.status, r.body)
    for kind, uri in itertools.product(["xfu", "xou"], ["*", "http://evil/admin/x", "admin/x", ""]):
        r = await ask(rg, [(kind, uri)], tokens["read"])
        assert r.status == 400, (kind, uri, r.status, r.body)  # no path at all


async def test_a_public_uri_needs_no_token_and_a_dot_free_one_is_allowed(gate):
    rg, _ = gate
    assert (await ask(rg, [("xou", "/public/x?y=1")])).status == 200
    assert (await ask(rg, [("xfu", "/public/./x"), ("xou", "/public/./x")])).status == 200


async def test_method_spoofing(gate):
    rg, tokens = gate
    read = tokens["read"]
    uri = [("xou", "/items/1")]
    assert (await ask(rg, uri, read, ["GET"])).status == 200
    assert (await ask(rg, uri, read, ["DELETE"])).status == 403
    # not a method token, or not as the proxy listener would take it: 400, never another route
    for bad in ("delete", "Delete", "GET,POST", "DELETE,GET", "DELETE ", "POST\t",
                "DEL ETE", "D" * 33, "DELETE;", "DÉLETE"):
        r = await ask(rg, uri, read, [bad])
        assert r.status == 400 and b"X-Forwarded-Method" in r.body, (bad, r.status, r.body)
    assert (await ask(rg, uri, None, ["GET,POST"])).status == 400  # before the credential
    assert (await ask(rg, uri, tokens["write"], ["DELETE"])).status == 200
    # the proxy's DELETE and a client's GET, either order: no decision on the client's word
    for methods in (["DELETE", "GET"], ["GET", "DELETE"]):
        r = await ask(rg, uri, read, methods)
        assert r.status == 400, (methods, r.status)
    assert (await ask(rg, uri, read, ["GET", "GET"])).status == 200  # the same twice agrees
    # the request's own method when no header names one (Envoy ext_authz keeps it)
    r = await raw_request(rg.admin, "/v1/authorize/items/1",
                          [("Authorization", f"Bearer {read}")], method="DELETE")
    assert r.status == 403

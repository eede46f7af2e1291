"""deploy/nginx/authgate.conf for real: Debian's nginx + authgate + an app, all on loopback, with
a client that adds the headers authgate and the app read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.authority import Actor
from tests.e2e.conftest import free_port
from tests.e2e.edge import nginx, raw_request

RECIPE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "authgate.conf"
ROUTES = [{"path": "/public/*", "auth": "none"},
          {"path": "/limited/*", "auth": "none", "rate_limit": "1/minute"},
          {"path": "/admin/*", "scopes": ["admin"]},
          {"path": "/*", "methods": ["DELETE"], "scopes": ["write"]}]
IDENTITY = ("x-auth-subject", "x-auth-token-id", "x-auth-token-name", "x-auth-scopes",
            "x-auth-assertion")


@pytest.fixture
async def edge(start_gateway, upstream, tmp_path):
    """nginx with the shipped recipe before authgate and the echo app; (url, tokens)."""
    rg = await start_gateway(routes=ROUTES, failed_auth_limit=None)
    port = free_port()
    recipe = (RECIPE.read_text()
              .replace("127.0.0.1:8081", rg.admin.removeprefix("http://"))
              .replace("127.0.0.1:9000", upstream.removeprefix("http://"))
              .replace("listen 8000;", f"listen 127.0.0.1:{port};"))
    (tmp_path / "recipe.conf").write_text(recipe)
    url = f"http://127.0.0.1:{port}"
    tokens = {}
    for name, scopes in (("read", ["read"]), ("admin", ["admin"])):
        _, tokens[name] = await rg.gateway.authority.create(
            Actor("cli:test"), subject="alice", name=name, scopes=scopes)
    async with nginx(tmp_path, f"include {tmp_path}/recipe.conf;", url):
        yield url, tokens


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def app_saw(body: bytes) -> dict[str, list[str]]:
    sent: dict[str, list[str]] = {}
    for k, v in json.loads(body)["headers"]:
        sent.setdefault(k.lower(), []).append(v)
    return sent


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_nginx_auth_request_recipe(edge):
    url, tokens = edge
    r = await raw_request(url, "/echo?x=1", [bearer(tokens["read"]), ("X-Auth-Subject", "mallory")])
    assert r.status == 200, (r.status, r.body)
    sent = app_saw(r.body)
    assert sent["x-auth-subject"] == ["alice"]  # authgate's answer, not the client's
    assert sent["x-auth-token-name"] == ["read"] and sent["x-auth-scopes"] == ["read"]
    assert "authorization" not in sent
    assert r.header("x-ratelimit-remaining").isdigit()

    r = await raw_request(url, "/echo")
    assert r.status == 401
    assert r.header("www-authenticate") == 'Bearer realm="authgate"'
    assert (await raw_request(url, "/echo", [("Authorization", "Bearer agt_garbage")])).status \
        == 401
    r = await raw_request(url, "/admin/x", [bearer(tokens["read"])])
    assert r.status == 403  # the route's scope, judged on the original URI
    assert (await raw_request(url, "/admin/x", [bearer(tokens["admin"])])).status == 200


SPOOFS = [
    [("X-Forwarded-Uri", "/public/x")],
    [("X-Original-URI", "/public/x")],
    [("X-Forwarded-Uri", "/public/x"), ("X-Original-URI", "/public/x")],
    [("X-Forwarded-Uri", "/public/x"), ("X-Forwarded-Method", "OPTIONS")],
    [("X-Forwarded-Uri", "/admin/secret/../../public/x")],
]


async def test_client_added_uri_and_method_headers_change_nothing(edge):
    """The audit's bypass: `X-Forwarded-Uri: /public/x` on a protected path got 200."""
    url, tokens = edge
    for spoof in SPOOFS:
        for token, expected in ((None, 401), (tokens["read"], 403)):
            headers = spoof + ([bearer(token)] if token else [])
            r = await raw_request(url, "/admin/secret", headers)
            assert r.status == expected, (spoof, r.status, r.body)
    # method: a read token's DELETE stays a DELETE whatever the client says it is
    r = await raw_request(url, "/items/1", [bearer(tokens["read"]), ("X-Forwarded-Method", "GET")],
                          method="DELETE")
    assert r.status == 403


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_ambiguous_paths_through_nginx(edge):
    url, tokens = edge
    for target in ("/public/../admin/secret", "/public/%2e%2e/admin/secret",
                   "/public%2f..%2fadmin/secret", "//admin/secret", "/./admin/secret",
                   "/public/..;/admin/secret"):
        for token in (None, tokens["read"]):
            r = await raw_request(url, target, [bearer(token)] if token else [])
            assert r.status == 400, (target, r.status, r.body)  # authgate's, not nginx's 500
    r = await raw_request(url, "/%61dmin/secret", [bearer(tokens["read"])])
    assert r.status == 403  # judged decoded
    assert (await raw_request(url, "/%61dmin/secret")).status == 401


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_identity_headers_never_come_from_the_client(edge):
    url, _ = edge
    spoofs = [("X-Auth-Subject", "mallory"), ("X-Auth-Scopes", "admin"), ("X-Auth-Token-Id", "t"),
              ("X-Auth-Token-Name", "n"), ("X-Auth-Assertion", "forged"),
              ("X-Auth_Subject", "mallory")]
    r = await raw_request(url, "/public/echo", spoofs)  # an auth: none route: no identity
    assert r.status == 200, (r.status, r.body)
    sent = app_saw(r.body)
    assert not [k for k in sent if k.replace("_", "-") in IDENTITY], sent


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_authgate_429_reaches_the_client_as_429(edge):
    url, _ = edge
    assert (await raw_request(url, "/limited/x")).status == 200
    r = await raw_request(url, "/limited/x")
    assert r.status == 429 and int(r.header("retry-after")) > 0

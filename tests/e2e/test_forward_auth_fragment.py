"""Review finding: forward auth judges a request target's '#fragment' as part of the path.

nginx's $request_uri (what the shipped recipe sends as X-Original-URI / X-Forwarded-Uri) keeps a
raw '#...' from the request line, and nginx passes the target unchanged to the app. authgate
matches routes on the whole string (``/admin#x`` matches no ``/admin/*`` route: the default,
scope-less route), while the app's HTTP parser (uvicorn/httptools, Node's url parser, ...) drops
the fragment and serves ``/admin``. So a token without the route's scope reaches the route.
The proxy listener is not affected (its parser drops the fragment before the path rule).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.authority import Actor
from tests.e2e.conftest import free_port
from tests.e2e.edge import nginx, raw_request

RECIPE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "authgate.conf"
ROUTES = [{"path": "/public/*", "auth": "none"}, {"path": "/admin/*", "scopes": ["admin"]}]
# A site that is public by default with a protected area: the fragment needs no token at all.
PUBLIC_BY_DEFAULT = [{"path": "/admin/*", "scopes": ["admin"]}, {"path": "/*", "auth": "none"}]


async def _read_token(rg) -> str:
    _, token = await rg.gateway.authority.create(
        Actor("cli:test"), subject="alice", name="read", scopes=["read"])
    return token


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
@pytest.mark.parametrize("target", ["/admin#x", "/admin#"])
async def test_nginx_recipe_fragment_does_not_skip_route_scope(start_gateway, upstream,
                                                               tmp_path, target):
    rg = await start_gateway(routes=ROUTES, failed_auth_limit=None)
    token = await _read_token(rg)
    port = free_port()
    recipe = (RECIPE.read_text()
              .replace("127.0.0.1:8081", rg.admin.removeprefix("http://"))
              .replace("127.0.0.1:9000", upstream.removeprefix("http://"))
              .replace("listen 8000;", f"listen 127.0.0.1:{port};"))
    (tmp_path / "recipe.conf").write_text(recipe)
    url = f"http://127.0.0.1:{port}"
    async with nginx(tmp_path, f"include {tmp_path}/recipe.conf;", url):
        r = await raw_request(url, target, [("Authorization", f"Bearer {token}")])
    if r.status == 200:
        served = json.loads(r.body)["path"]
        pytest.fail(f"{target!r} with a token lacking 'admin' was let through; the app "
                    f"served {served!r}")
    assert r.status in (400, 403), (r.status, r.body[:200])


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
@pytest.mark.parametrize("header", ["X-Forwarded-Uri", "X-Original-URI"])
async def test_authorize_fragment_in_uri_header(start_gateway, http, header):
    rg = await start_gateway(routes=ROUTES, failed_auth_limit=None)
    token = await _read_token(rg)
    r = await http.get(f"{rg.admin}/v1/authorize",
                       headers={"Authorization": f"Bearer {token}", header: "/admin#x",
                                "X-Forwarded-Method": "GET"})
    assert r.status_code in (400, 403), r.status_code


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
async def test_nginx_recipe_fragment_reaches_protected_area_without_token(start_gateway, upstream,
                                                                          tmp_path):
    rg = await start_gateway(routes=PUBLIC_BY_DEFAULT, failed_auth_limit=None)
    port = free_port()
    recipe = (RECIPE.read_text()
              .replace("127.0.0.1:8081", rg.admin.removeprefix("http://"))
              .replace("127.0.0.1:9000", upstream.removeprefix("http://"))
              .replace("listen 8000;", f"listen 127.0.0.1:{port};"))
    (tmp_path / "recipe.conf").write_text(recipe)
    url = f"http://127.0.0.1:{port}"
    async with nginx(tmp_path, f"include {tmp_path}/recipe.conf;", url):
        assert (await raw_request(url, "/admin")).status == 401  # the area is protected
        r = await raw_request(url, "/admin#/x")
    if r.status == 200:
        pytest.fail(f"no token, yet the app served {json.loads(r.body)['path']!r}")
    assert r.status in (400, 401), (r.status, r.body[:200])

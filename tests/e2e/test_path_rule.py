"""The path rule on the proxy listener (SPEC §3 routes), with raw request targets: behind the echo
app and behind a normalising upstream (nginx, proxy_pass with a URI part, before the echo app), the
app never receives a protected path without a token holding the route's scope."""

from __future__ import annotations

import json
import posixpath
import re

import pytest

from gateway.authority import Actor
from tests.e2e.conftest import free_port
from tests.e2e.edge import nginx, raw_request

ROUTES = [{"path": "/public/*", "auth": "none"}, {"path": "/admin/*", "scopes": ["admin"]}]
AMBIGUOUS = ["/public/../admin/x", "/public/%2e%2e/admin/x", "/public/%2E%2e/admin/x",
             "/public%2f..%2fadmin/x", "/public/..%2fadmin/x", "//admin/x", "/./admin/x",
             "/public//../admin/x", "/public/..;/admin/x", "/public/%252e%252e/admin/x",
             "/public/%5c..%5cadmin/x", "*"]
PLAIN = ["/public/x", "/public/./x", "/admin/x", "/%61dmin/x", "/%61dmin%2fx",
         "http://127.0.0.1:1/admin/x"]  # absolute-form: uvicorn hands on its path only


@pytest.fixture(params=["echo", "nginx"])
async def upstream_kind(request, upstream, tmp_path):
    """The echo app itself, or nginx normalising paths (decode, dot segments, merged slashes)
    before it, as proxy_pass with a URI part does."""
    if request.param == "echo":
        yield upstream
        return
    url = f"http://127.0.0.1:{free_port()}"
    block = (f"server {{ listen {url.removeprefix('http://')}; "
             f"location / {{ proxy_pass {upstream}/; }} }}")
    async with nginx(tmp_path, block, url):
        yield url


def app_view(body: bytes) -> str:
    """The path the app serves: what it received, normalised (an app may normalise too)."""
    path = re.sub("/+", "/", json.loads(body)["path"])
    return posixpath.normpath(path)


async def test_the_app_never_gets_a_protected_path_without_the_scope(start_gateway,
                                                                   upstream_kind):
    rg = await start_gateway(routes=ROUTES, upstream=upstream_kind, failed_auth_limit=None)
    tokens: dict[str | None, str] = {}
    for name, scopes in (("read", ["read"]), ("admin", ["admin"])):
        _, tokens[name] = await rg.gateway.authority.create(
            Actor("cli:test"), subject="alice", name=name, scopes=scopes)
    served_admin = 0
    for target in AMBIGUOUS + PLAIN:
        for name in (None, "read", "admin"):
            auth = [("Authorization", f"Bearer {tokens[name]}")] if name else []
            r = await raw_request(rg.proxy, target, auth)
            if target in AMBIGUOUS:
                assert r.status == 400, (target, name, r.status, r.body)
                assert b'"invalid_request"' in r.body
                continue
            assert r.status in (200, 401, 403), (target, name, r.status, r.body)
            if r.status == 200:
                view = app_view(r.body)
                assert not view.startswith("/admin") or name == "admin", (target, name, view)
                served_admin += view.startswith("/admin")
    assert served_admin == 4  # the admin token reached /admin/x in every plain spelling


async def test_get_star_with_a_valid_token_is_400(start_gateway):
    """Was a 500 (finding 8)."""
    rg = await start_gateway()
    _, secret = await rg.gateway.authority.create(Actor("cli:test"), subject="alice", name="n",
                                                  scopes=["read"])
    r = await raw_request(rg.proxy, "*", [("Authorization", f"Bearer {secret}")])
    assert r.status == 400 and json.loads(r.body)["error"] == "invalid_request"
    r = await raw_request(rg.proxy, "*", [("Authorization", f"Bearer {secret}")],
                          method="OPTIONS")
    assert r.status == 400

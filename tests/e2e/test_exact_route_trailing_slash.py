"""Review finding: a route without '*' is matched exactly, so '/admin/' escapes 'path: /admin'.

``/reports/*`` also matches ``/reports`` (SPEC §3), but the converse is missing: an exact route
``/admin`` does not match ``/admin/`` (nor ``/admin/.``, which RFC 3986 resolves to ``/admin/``),
so such a request falls to the default route (any token, no scope) and is forwarded as is.
Express (strict routing off by default), Spring MVC before 6 (trailing-slash match on) and
Werkzeug rules with ``strict_slashes=False`` serve ``/admin/`` with the ``/admin`` handler: a
token lacking the route's scope reaches it. Expected: the route's scope applies (403), or the
ambiguous path is refused (400), as for the other readings of the path rule.
"""

from __future__ import annotations

import pytest

from gateway.authority import Actor
from tests.e2e.edge import raw_request

ROUTES = [{"path": "/admin", "scopes": ["admin"]}]


@pytest.mark.parametrize("backend_pair", ["sqlite+memory"], indirect=True)
@pytest.mark.parametrize("target", ["/admin/", "/admin/."])
async def test_exact_route_scope_covers_trailing_slash(start_gateway, target):
    rg = await start_gateway(routes=ROUTES, failed_auth_limit=None)
    _, token = await rg.gateway.authority.create(
        Actor("cli:test"), subject="alice", name="read", scopes=["read"])
    headers = [("Authorization", f"Bearer {token}")]
    assert (await raw_request(rg.proxy, "/admin", headers)).status == 403
    r = await raw_request(rg.proxy, target, headers)
    assert r.status in (400, 403), (target, r.status, r.body[:200])

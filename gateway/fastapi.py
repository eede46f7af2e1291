"""Per-endpoint scopes for FastAPI apps behind ``AuthGateMiddleware`` (SPEC §9).

    @app.get("/reports", dependencies=[Depends(requires_scopes("reports:read"))])
    async def reports(auth: Auth = Depends(requires_scopes("reports:read"))): ...

The dependency raises the pipeline's own ``Refusal``; the middleware renders it exactly as the
gateway does (403 ``insufficient_scope`` with the RFC 6750 challenge naming the scopes; 401 when
the middleware admitted the request without a token, as on an ``auth: none`` route) and counts
the 403 as an ``access_denied`` event. Scopes match as tokens do (``reports:*`` grants
``reports:read``). On a WebSocket, the scopes demanded are also watched: the connection is
closed with 1008 once its token lacks them (``gateway.ws_watch``). Without the middleware in
front, the Refusal is an unhandled error (500).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection

from gateway import tokens
from gateway.errors import Refusal
from gateway.middleware import Auth
from gateway.ws_watch import SOCKET_STATE, OpenSocket

__all__ = ["Auth", "requires_scopes"]


def requires_scopes(*scopes: str) -> Callable[[HTTPConnection], Awaitable[Auth]]:
    """A dependency that returns the request's ``Auth`` when its token grants every scope."""
    needed = tuple(scopes)
    challenge = " ".join(needed)

    # async: FastAPI runs a sync dependency in a worker thread, per request
    async def dependency(request: HTTPConnection) -> Auth:
        auth = request.scope.get("state", {}).get("auth")
        if not isinstance(auth, Auth):
            raise Refusal(401, "no_credential", "a bearer token is required")
        missing = tokens.has_scopes(auth.scopes, needed)
        if missing is not None:
            raise Refusal(403, "insufficient_scope", f"the token lacks scope {missing}",
                          scope=challenge)
        # an open WebSocket: the watch closes it once the token lacks them
        conn = request.scope.get("state", {}).get(SOCKET_STATE)
        if isinstance(conn, OpenSocket):
            conn.demanded = tuple(dict.fromkeys((*conn.demanded, *needed)))
        return auth

    return dependency

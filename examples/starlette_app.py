"""A Starlette app behind authgate, in process.  Run:  uvicorn examples.starlette_app:app"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway import AuthGateMiddleware


async def whoami(request: Request) -> JSONResponse:
    auth = request.state.auth  # None on an `auth: none` route
    return JSONResponse({"subject": auth.subject, "scopes": list(auth.scopes)} if auth else {})


app = Starlette(
    routes=[Route("/whoami", whoami), Route("/health", whoami)],
    middleware=[Middleware(AuthGateMiddleware,
                           config=str(Path(__file__).with_name("authgate.yaml")))],
)

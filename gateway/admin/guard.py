"""Pure-ASGI guard in front of the admin listener's API.

- Bodies over ``MAX_BODY_BYTES`` are refused with 413, by Content-Length or while streaming.
- Every ``/v1`` response is ``Cache-Control: no-store``: some carry a token's secret.
- CSRF: the API authenticates by an ``Authorization`` header, which a browser never attaches on
  its own, so a forged cross-site request carries no credential. As a second line, a
  state-changing request that a browser marks as cross-site (``Sec-Fetch-Site``) or whose
  ``Origin`` is not this listener is refused with 403 before it reaches a handler.

The forward-auth endpoint (``/v1/authorize``) is left alone: a proxy asking for a decision
copies the original request's headers, whose ``Origin`` and ``Content-Length`` describe a
request to the protected app, not to us.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException

from gateway.responses import error_json, send_json

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 64 * 1024
_SAFE = {"GET", "HEAD", "OPTIONS"}
_NO_STORE = (b"cache-control", b"no-store")


class AdminGuard:
    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path == "/v1/authorize" or \
                path.startswith("/v1/authorize/"):
            await self.app(scope, receive, send)
            return
        if path.startswith("/v1/"):
            send = _no_store(send)
        headers = dict(scope["headers"])
        if scope["method"] not in _SAFE and _cross_site(headers):
            await _refuse(send, 403, "cross_site_request",
                          "cross-site state-changing requests are refused")
            return
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            await _refuse(send, 413, "request_too_large",
                          f"the body must be at most {self.max_body} bytes")
            return
        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise HTTPException(413, f"the body must be at most {self.max_body} bytes")
            return message

        return limited


def _no_store(send: Send) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", []), _NO_STORE]
        await send(message)

    return sending


def _cross_site(headers: dict[bytes, bytes]) -> bool:
    if headers.get(b"sec-fetch-site", b"same-origin") not in (b"same-origin", b"none"):
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False  # not a browser's cross-origin request (curl, scripts, the CLI)
    host = headers.get(b"host", b"")
    return urlsplit(origin.decode("latin-1")).netloc.encode("latin-1") != host


async def _refuse(send: Send, status: int, code: str, description: str) -> None:
    await send_json(send, status, error_json(code, description), [])

"""The admin web page: one static HTML file, one script, one stylesheet, served by the gateway.

No build step and no inline script or style, so the Content-Security-Policy can forbid both.
The page keeps the admin token in sessionStorage (gone when the tab closes) and sends it as a
bearer header; it renders every user-supplied string with textContent, never as HTML.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
}
_ASSETS = {"admin.js": "text/javascript; charset=utf-8", "admin.css": "text/css; charset=utf-8"}

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> bytes:
    return resources.files("gateway.admin").joinpath("static", name).read_bytes()


@router.get("/admin")
async def admin_page() -> Response:
    return Response(_asset("admin.html"), media_type="text/html; charset=utf-8",
                    headers=SECURITY_HEADERS)


@router.get("/admin/static/{name}")
async def admin_asset(name: str) -> Response:
    if name not in _ASSETS:
        return Response(status_code=404, headers=SECURITY_HEADERS)
    return Response(_asset(name), media_type=_ASSETS[name], headers=SECURITY_HEADERS)

"""Every error body and the headers that go with a decision, built here only.

    error_json(code, description)   the SPEC body ``{"error", "error_description"}`` as bytes
    refusal(Refusal)                status, headers (RFC 6750 challenge, rate limit,
                                    Retry-After) and body of a pipeline refusal
    upstream_error(UpstreamError)   status and body of a failed forward
    rate_limit_headers(result)      RateLimit / X-RateLimit-* of an admitted or refused request
    identity_headers(names, record) the identity an upstream (or a calling proxy) receives
    send_json(send, ...)            one JSON response over raw ASGI (proxy listener)

Listeners (the raw-ASGI proxy, the FastAPI admin app, the 431 the server writes itself) all
call these, so the body has one shape and one encoding everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from gateway.config import IdentityHeaders
from gateway.errors import Refusal, UpstreamError
from gateway.ratelimit import LimitResult
from gateway.store import TokenRecord

Headers = list[tuple[bytes, bytes]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_ERROR_CODE = {401: "invalid_token", 403: "insufficient_scope"}
_ERROR_BY_STATUS = {429: "rate_limited", 503: "temporarily_unavailable", 431: "invalid_request"}
_JSON = (b"content-type", b"application/json")


def error_json(code: str, description: str) -> bytes:
    return json.dumps({"error": code, "error_description": description}).encode()


def rate_limit_headers(result: LimitResult) -> Headers:
    if result.named:  # SPEC §13: every named limit by name; X-RateLimit-* the tightest
        return _named_headers(result)
    q, w = result.limit.limit, result.limit.window_s
    r, t = result.remaining, result.reset_s
    return [
        (b"ratelimit-policy", f'"default";q={q};w={w}'.encode()),
        (b"ratelimit", f'"default";r={r};t={t}'.encode()),
        (b"x-ratelimit-limit", str(q).encode()),
        (b"x-ratelimit-remaining", str(r).encode()),
        (b"x-ratelimit-reset", str(t).encode()),
    ]


def _named_headers(result: LimitResult) -> Headers:
    policy = ", ".join(f'"{n}";q={lim.limit};w={lim.window_s}' for n, lim, _, _ in result.named)
    state = ", ".join(f'"{n}";r={r};t={t}' for n, _, r, t in result.named)
    return [
        (b"ratelimit-policy", policy.encode()),
        (b"ratelimit", state.encode()),
        (b"x-ratelimit-limit", str(result.limit.limit).encode()),
        (b"x-ratelimit-remaining", str(result.remaining).encode()),
        (b"x-ratelimit-reset", str(result.reset_s).encode()),
    ]


# Printable ASCII except "%": what an identity value may carry as is (SPEC §6).
_PLAIN = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_value(value: str) -> str:
    """An identity value as sent: printable ASCII as is; anything else, and ``%`` itself (so
    that decoding is unambiguous), percent-encoded as UTF-8: ``Łukasz`` -> ``%C5%81ukasz``."""
    if value.isascii() and value.isprintable() and "%" not in value:
        return value
    return quote(value, safe=_PLAIN, errors="surrogatepass")


def identity_headers(names: IdentityHeaders, record: TokenRecord) -> list[tuple[str, str]]:
    """The identity the upstream (proxy) or the calling proxy (forward auth) receives. Token
    ids and scopes are printable ASCII without ``%`` by construction; subject and name are
    whatever the token's creator typed."""
    subject, name = record.subject, record.name
    # header_value's test inlined: this runs for every admitted request
    if not (subject.isascii() and subject.isprintable() and "%" not in subject):
        subject = header_value(subject)
    if not (name.isascii() and name.isprintable() and "%" not in name):
        name = header_value(name)
    return [(names.subject, subject), (names.token_id, record.id), (names.token_name, name),
            (names.scopes, " ".join(record.scopes))]


def render_refusal(refusal: Refusal) -> tuple[int, Headers, dict[str, str]]:
    """Status, headers and JSON body (as a dict) for a refusal (RFC 6750 where it applies)."""
    headers: Headers = []
    error: str
    if refusal.reason == "no_credential":
        error = "invalid_request"
        headers.append((b"www-authenticate", b'Bearer realm="authgate"'))
    elif refusal.status in _ERROR_CODE:
        error = _ERROR_CODE[refusal.status]
        challenge = f'Bearer realm="authgate", error="{error}", ' \
                    f'error_description="{refusal.description}"'
        if refusal.scope:
            challenge += f', scope="{refusal.scope}"'
        headers.append((b"www-authenticate", challenge.encode()))
    elif refusal.reason == "credits_exhausted":  # a 429 that says why (SPEC §13)
        error = refusal.reason
    else:
        error = _ERROR_BY_STATUS.get(refusal.status, refusal.reason)
    if refusal.limit is not None:
        headers.extend(rate_limit_headers(refusal.limit))
    if refusal.retry_after is not None:
        headers.append((b"retry-after", str(max(1, refusal.retry_after)).encode()))
    return refusal.status, headers, {"error": error, "error_description": refusal.description}


def refusal(r: Refusal) -> tuple[int, Headers, bytes]:
    """Status, headers and encoded body of a refusal."""
    status, headers, body = render_refusal(r)
    return status, headers, error_json(body["error"], body["error_description"])


def upstream_error(e: UpstreamError) -> tuple[int, bytes]:
    return e.status, error_json(e.reason, e.description)


async def send_json(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        _JSON, (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})

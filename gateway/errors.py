"""The project's own error types, and the closed set of reasons a request is refused for.

Third-party exceptions (asyncpg, sqlite3, redis, the HTTP client) are translated into these at
the adapter boundary, in one place per adapter, so callers never import a driver to catch errors.

    Exception
     ├── AuthgateError
     │    ├── ConfigError        bad configuration: every problem, each naming its key
     │    ├── InvalidInput       a bad value from a user (names the field)     CLI exit 2, API 422
     │    ├── NotFound           unknown token id                              CLI exit 1, API 404
     │    ├── Refused            a valid request the token's state forbids     CLI exit 1, API 409
     │    └── StoreUnavailable   the token store cannot be reached             CLI exit 1, API 503
     ├── Refusal                 the pipeline's "no" (400/401/403/429/431/503): a ``Reason``,
     │                           a description, and what its headers need
     ├── UpstreamError           forwarding failed before the response started (400/502/504)
     └── Forbidden               admin API: a known caller may not do this (403, names a scope)

Every refusal and upstream failure carries a ``Reason``: the ``authgate_requests_total`` outcome
label (``gateway.metrics.OUTCOMES`` is this set plus ``ok``). ``gateway.responses`` renders them
all as ``{"error", "error_description"}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from gateway.ratelimit import LimitResult
    from gateway.store import TokenRecord

Reason = Literal["no_credential", "invalid_token", "insufficient_scope", "rate_limited",
                 "unavailable", "upstream_error", "upstream_timeout", "bad_request",
                 "invalid_request", "credits_exhausted"]
Outcome = Literal["ok", Reason]
REASONS: tuple[Reason, ...] = get_args(Reason)
OUTCOMES: tuple[Outcome, ...] = ("ok", *REASONS)

ADMIN_SCOPE = "authgate:admin"


class AuthgateError(Exception):
    """Base of every error authgate raises on purpose."""


class ConfigError(AuthgateError):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class InvalidInput(AuthgateError, ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class NotFound(AuthgateError):
    pass


class Refused(AuthgateError):
    pass


class StoreUnavailable(AuthgateError):
    pass


@dataclass(slots=True)
class Refusal(Exception):
    """The pipeline's answer "no": rendered by ``gateway.responses.refusal``."""
    status: int
    reason: Reason
    description: str
    scope: str | None = None
    limit: LimitResult | None = None
    retry_after: int | None = None
    # The token judged, when it was known (revoked, expired, over its limit, lacking a scope):
    # for the access log's subject and token_id, never for the client's answer.
    record: TokenRecord | None = None


class UpstreamError(Exception):
    """The request was admitted but could not be forwarded (no response sent yet)."""

    def __init__(self, status: int, reason: Reason, description: str) -> None:
        super().__init__(description)
        self.status, self.reason, self.description = status, reason, description


class Forbidden(Exception):
    """A 403 of the admin API: the caller is known but may not do this. ``scope`` names what
    was missing."""

    def __init__(self, description: str, scope: str = ADMIN_SCOPE) -> None:
        super().__init__(description)
        self.description = description
        self.scope = scope


class CreationLimited(Refused):
    """A create beyond ``creation_limit`` for its subject (SPEC §3): API 429 with Retry-After,
    CLI exit 1. ``retry_after_s``: until one more may be created."""

    def __init__(self, subject: str, limit: str, retry_after_s: int) -> None:
        super().__init__(f"creation_limit: subject {subject!r} has had {limit} tokens created "
                         f"already; retry in {retry_after_s} s")
        self.limit = limit
        self.retry_after_s = retry_after_s

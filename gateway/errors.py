"""The project's own error types.

Third-party exceptions (asyncpg, sqlite3, redis, the HTTP client) are translated into these at
the adapter boundary, in one place per adapter, so callers never import a driver to catch errors.

    AuthgateError
     ├── ConfigError          bad configuration: every problem, each naming its key
     ├── InvalidInput         a bad value from a user (names the field)        CLI exit 2, API 4xx
     ├── NotFound             unknown token id                                 CLI exit 1, API 404
     ├── Refused              a valid request the token's state forbids        CLI exit 1, API 409
     └── StoreUnavailable     the token store cannot be reached                CLI exit 1, API 503

    Refusal                   a request the pipeline refuses (401/403/429/503, 400 for an
                              ambiguous path): status, a reason from a closed set, a description
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.ratelimit import LimitResult


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
    """The pipeline's answer "no": rendered by ``gateway.pipeline.render_refusal``."""
    status: int
    reason: str  # a metrics outcome: no_credential, invalid_token, invalid_request, ...
    description: str
    scope: str | None = None
    limit: LimitResult | None = None
    retry_after: int | None = None

"""The project's own error types.

Third-party exceptions (asyncpg, sqlite3, redis, the HTTP client) are translated into these at
the adapter boundary, in one place per adapter, so callers never import a driver to catch errors.

    AuthgateError
     ├── ConfigError          bad configuration: every problem, each naming its key
     ├── InvalidInput         a bad value from a user (names the field)        CLI exit 2, API 4xx
     ├── NotFound             unknown token id                                 CLI exit 1, API 404
     ├── Refused              a valid request the token's state forbids        CLI exit 1, API 409
     └── StoreUnavailable     the token store cannot be reached                CLI exit 1, API 503
"""

from __future__ import annotations


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

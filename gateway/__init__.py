"""authgate: a bearer-token authentication gateway and token authority.

The small public surface for embedding and scripting; the CLI (`authgate`) and the servers are
built on the same pieces. Heavier parts (the gateway app, the servers) live in their own modules.
"""

from __future__ import annotations

from gateway.authority import Actor, TokenAuthority
from gateway.config import RateLimit, Settings, load_settings
from gateway.errors import (
    AuthgateError,
    ConfigError,
    InvalidInput,
    NotFound,
    Refused,
    StoreUnavailable,
)
from gateway.middleware import AuthGateMiddleware
from gateway.store import make_store, open_store
from gateway.tokens import MalformedToken, generate, hash_token, parse

__all__ = [
    "Actor",
    "AuthGateMiddleware",
    "AuthgateError",
    "ConfigError",
    "InvalidInput",
    "MalformedToken",
    "NotFound",
    "RateLimit",
    "Refused",
    "Settings",
    "StoreUnavailable",
    "TokenAuthority",
    "generate",
    "hash_token",
    "load_settings",
    "make_store",
    "open_store",
    "parse",
]

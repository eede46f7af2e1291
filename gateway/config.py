"""Settings: defaults < YAML file < AUTHGATE_* environment < flags -> one frozen object.

Every problem is collected and reported together, one line each, naming the key (``routes.2.path:
must start with '/'``). Unknown ``AUTHGATE_*`` variables are ignored on purpose: Kubernetes injects
``AUTHGATE_PORT``, ``AUTHGATE_SERVICE_HOST``... for a Service named ``authgate``.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.addresses import parse_network
from gateway.errors import ConfigError
from gateway.tokens import normalise_scopes, validate_prefix

# --- value syntaxes shared by config, CLI and admin API -------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_WINDOWS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
_DURATION_RE = re.compile(r"(\d{1,9})([smhd])")
_RATE_RE = re.compile(r"(\d{1,12})/(second|minute|hour|day)")


def parse_duration(value: object) -> int:
    """``30d``, ``12h``, ``90m``, ``45s`` or a whole number of seconds -> seconds (>= 0)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 30d, 12h, 90m or 45s")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        m = _DURATION_RE.fullmatch(text)
        if m:
            return int(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"{value!r} is not a duration like 30d, 12h, 90m or 45s")


@dataclass(frozen=True, slots=True)
class RateLimit:
    limit: int
    window_s: int

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window_s < 1:
            raise ValueError("limit and window must be positive")

    def as_dict(self) -> dict[str, int]:
        return {"limit": self.limit, "window_s": self.window_s}

    def __str__(self) -> str:
        unit = {v: k for k, v in _WINDOWS.items()}.get(self.window_s)
        return f"{self.limit}/{unit}" if unit else f"{self.limit}/{self.window_s}s"


def parse_rate_limit(value: object) -> RateLimit:
    """``N/second|minute|hour|day`` or ``{"limit": N, "window_s": S}`` -> RateLimit."""
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        m = _RATE_RE.fullmatch(value.strip())
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"{value!r} is not a rate limit like 100/minute "
                             "(N/second, N/minute, N/hour or N/day, N >= 1)")
        return RateLimit(int(m.group(1)), _WINDOWS[m.group(2)])
    if isinstance(value, Mapping) and set(value) == {"limit", "window_s"}:
        limit, window = value["limit"], value["window_s"]
        if (isinstance(limit, int) and isinstance(window, int) and not isinstance(limit, bool)
                and not isinstance(window, bool) and limit >= 1 and window >= 1):
            return RateLimit(limit, window)
    raise ValueError("expected 'N/unit' or {\"limit\": N >= 1, \"window_s\": S >= 1}")


def _rate_limit_or_none(value: object) -> RateLimit | None:
    return None if value is None else parse_rate_limit(value)


def _seconds(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    return float(parse_duration(value))


OptionalRateLimit = Annotated[RateLimit | None, BeforeValidator(_rate_limit_or_none)]
Seconds = Annotated[float, BeforeValidator(_seconds)]

_HOSTPORT_RE = re.compile(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")
_HEADER_RE = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# The forwarding clients (gateway.proxy.FORWARDERS builds them).
FORWARDERS = ("aiohttp", "httpx")
MAX_WORKERS = 64  # serve --workers: more is a typo, not a machine
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}


def split_hostport(value: str) -> tuple[str, int]:
    m = _HOSTPORT_RE.fullmatch(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT")
    return m.group(1).strip("[]"), int(m.group(2))


def _check_upstream(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", value):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/") if value else value


# --- the settings model -------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentityHeaders(_Strict):
    subject: str = "X-Auth-Subject"
    token_id: str = "X-Auth-Token-Id"
    token_name: str = "X-Auth-Token-Name"
    scopes: str = "X-Auth-Scopes"

    @field_validator("*")
    @classmethod
    def _header_name(cls, v: str) -> str:
        if not _HEADER_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid header name")
        return v


class IdentityAssertion(_Strict):
    """The signed identity assertion (SPEC §11): an Ed25519 JWS in ``header`` on every forwarded
    request with a token (and on forward-auth 200s), valid ``ttl_s``, ``aud`` = ``audience``."""

    header: str = "X-Auth-Assertion"
    ttl_s: int = Field(60, ge=1, le=3600)
    audience: str | None = Field(None, min_length=1)

    @field_validator("header")
    @classmethod
    def _header_name(cls, v: str) -> str:
        if not _HEADER_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid header name")
        return v


class Route(_Strict):
    path: str
    methods: tuple[str, ...] | None = None
    scopes: tuple[str, ...] = ()
    auth: Literal["required", "none"] = "required"
    upstream: str | None = None
    rate_limit: OptionalRateLimit = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or "*" in v[:-1]:
            raise ValueError("must start with '/' and may only end in '*'")
        return v

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if v is None:
            return v
        upper = tuple(m.upper() for m in v)
        bad = [m for m in upper if m not in _METHODS]
        if bad or not upper:
            raise ValueError(f"unknown HTTP method(s) {bad}" if bad else "must not be empty")
        return upper

    @field_validator("scopes", mode="before")
    @classmethod
    def _scopes(cls, v: object) -> tuple[str, ...]:
        return normalise_scopes(v, "scopes")

    _upstream = field_validator("upstream")(classmethod(lambda cls, v: _check_upstream(v)))


# --- alerts (SPEC §12); the watcher, checks and channels live in gateway/monitor/ ------------

ALERT_CHANNEL_TYPES = ("webhook", "slack", "teams", "discord", "email", "log")
_HTTP_URL_RE = re.compile(r"https?://[^\s/?#@]+(/[^\s#]*)?")
_SMTP_RE = re.compile(r"smtps?://([^\s/@]+@)?[^\s/@:]+(:\d{1,5})?/?")
_EMAIL_RE = re.compile(r"[^\s@<>,]+@[^\s@<>,]+")
_WHSEC_RE = re.compile(r"whsec_[A-Za-z0-9+/]{16,}={0,2}")


def _window(value: object) -> int:
    seconds = parse_duration(value)
    if seconds < 1:
        raise ValueError("must be at least 1s")
    return seconds


Window = Annotated[int, BeforeValidator(_window)]


class AlertChannel(_Strict):
    """One notification channel. ``url``: webhook, slack, teams, discord; ``secret``: webhook
    (Standard Webhooks ``whsec_<base64>``); ``smtp``/``from``/``to``: email; log: nothing."""

    type: Literal["webhook", "slack", "teams", "discord", "email", "log"]
    url: str | None = Field(None, repr=False)  # a Slack or Discord URL is itself a secret
    secret: str | None = Field(None, repr=False)
    smtp: str | None = Field(None, repr=False)
    from_: str | None = Field(None, alias="from")
    to: tuple[str, ...] = ()
    timeout_s: float = Field(10.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not _HTTP_URL_RE.fullmatch(v):
            raise ValueError("is not an http:// or https:// URL")  # never echoed: may hold a key
        return v

    @field_validator("secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ok = bool(_WHSEC_RE.fullmatch(v)) and bool(base64.b64decode(v[6:], validate=True))
            except binascii.Error:
                ok = False
            if not ok:
                raise ValueError("must be whsec_ followed by base64 (Standard Webhooks)")
        return v

    @field_validator("smtp")
    @classmethod
    def _smtp(cls, v: str | None) -> str | None:
        if v is not None and not _SMTP_RE.fullmatch(v):
            raise ValueError("must be smtp://HOST:PORT or smtps://HOST:PORT (credentials "
                             "optional, before the host)")
        return v

    @field_validator("from_")
    @classmethod
    def _from(cls, v: str | None) -> str | None:
        if v is not None and not _EMAIL_RE.fullmatch(v):
            raise ValueError("is not an email address")
        return v

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, v: object) -> object:
        return (v,) if isinstance(v, str) else v

    @field_validator("to")
    @classmethod
    def _to_addresses(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, address in enumerate(v):
            if not _EMAIL_RE.fullmatch(address):
                raise ValueError(f"entry {i} is not an email address")
        return v

    @model_validator(mode="after")
    def _needs(self) -> AlertChannel:
        needed = {"webhook": ("url", "secret"), "slack": ("url",), "teams": ("url",),
                  "discord": ("url",), "email": ("smtp", "from_", "to"), "log": ()}[self.type]
        for name in needed:
            if not getattr(self, name):
                raise ValueError(f"{name.rstrip('_')} is required for type {self.type}")
        return self


class HighUsageRotation(_Strict):
    requests_per_day: int = Field(1000, ge=1)
    max_age_days: int = Field(30, ge=1)


class RotationPolicy(_Strict):
    max_age_days: int | None = Field(90, ge=1)
    high_usage: HighUsageRotation | None = Field(default_factory=HighUsageRotation)


class CountDetector(_Strict):
    count: int = Field(ge=1)
    window: Window


class MultiIpDetector(_Strict):
    distinct_ips: int = Field(5, ge=2)
    window: Window = 3600


class RapidUseDetector(_Strict):
    requests: int = Field(5, ge=1)
    window: Window = 600


class Detectors(_Strict):
    """Each detector is on with its defaults unless set to null."""

    multi_ip: MultiIpDetector | None = Field(default_factory=MultiIpDetector)
    rapid_use: RapidUseDetector | None = Field(default_factory=RapidUseDetector)
    failed_auth: CountDetector | None = CountDetector(count=50, window=300)
    rate_limit_breach: CountDetector | None = CountDetector(count=20, window=600)


class Alerts(_Strict):
    check_interval_s: float = Field(300.0, ge=1, le=86400)
    channels: tuple[AlertChannel, ...] = ()
    expiry_days: tuple[int, ...] = (30, 14, 7, 1)
    rotation: RotationPolicy | None = Field(default_factory=RotationPolicy)
    inactivity_revoke_days: int | None = Field(None, ge=1)
    detectors: Detectors = Field(default_factory=Detectors)

    @field_validator("expiry_days")
    @classmethod
    def _expiry_days(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < 1 for d in v):
            raise ValueError("every threshold must be a whole number of days >= 1")
        return tuple(sorted(set(v), reverse=True))


class Settings(_Strict):
    upstream: str = "http://127.0.0.1:9000"
    listen: str = "127.0.0.1:8080"
    admin_listen: str = "127.0.0.1:8081"
    store: str = "sqlite:///./authgate.db"
    cache: str = "memory://"
    token_prefix: str = "agt"
    pepper: str | None = None
    admin_token: str | None = None
    default_rate_limit: OptionalRateLimit = RateLimit(1000, 60)
    local_cache_ttl_s: Seconds = 5.0
    upstream_timeout_s: Seconds = 30.0
    forwarder: str = "aiohttp"
    usage_flush_interval_s: Seconds = 1.0
    failed_auth_limit: OptionalRateLimit = RateLimit(60, 60)
    api_key_header: str | None = None
    identity_headers: IdentityHeaders = Field(default_factory=IdentityHeaders)
    identity_assertion: IdentityAssertion | None = None  # off unless configured (SPEC §11)
    # Imported token kinds accepted as their owners hold them (SPEC §10); () = none.
    legacy_tokens: tuple[Literal["sanctum", "sha256", "bcrypt"], ...] = ()
    roles: dict[str, tuple[str, ...]] = Field(
        default_factory=lambda: {"reader": ("read",), "writer": ("read", "write")})
    routes: tuple[Route, ...] = ()
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed (§6)
    # Tokens created for one subject by any caller, counted in the store (SPEC §3); None = off.
    creation_limit: OptionalRateLimit = None
    alerts: Alerts | None = None  # monitoring and notifications (SPEC §12); off when null
    access_log: bool = True  # one JSON line per proxied request on stdout (§6)
    workers: int = Field(1, ge=1, le=MAX_WORKERS)  # serve --workers N: processes (§3)

    @field_validator("listen", "admin_listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not re.match(r"(sqlite:///.+|postgres(ql)?://.+)$", v):
            raise ValueError("must be sqlite:///PATH or postgresql://user:pw@host/db")
        return v

    @field_validator("cache")
    @classmethod
    def _cache(cls, v: str) -> str:
        if v.startswith(("redis+cluster://", "redis+sentinel://")):
            from gateway.redis_urls import parse_topology

            parse_topology(v)  # ValueError: what is wrong with it, never the URL itself
            return v
        if not re.match(r"(memory://|rediss?://.+)$", v):
            raise ValueError("must be memory://, redis://host:6379/0, "
                             "redis+cluster://host1:6379,host2:6379/ or "
                             "redis+sentinel://host1:26379/MASTER_NAME/DB")
        return v

    @field_validator("forwarder")
    @classmethod
    def _forwarder(cls, v: str) -> str:
        if v not in FORWARDERS:
            raise ValueError(f"{v!r} is not a forwarder: must be one of {', '.join(FORWARDERS)}")
        return v

    @field_validator("token_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        try:
            return validate_prefix(v)
        except ValueError:
            raise ValueError("must match [a-z0-9_]{1,16}") from None

    @field_validator("admin_token")
    @classmethod
    def _admin_token(cls, v: str | None) -> str | None:
        if v is not None and len(v) < 16:
            raise ValueError("must be at least 16 characters")
        return v

    @field_validator("api_key_header")
    @classmethod
    def _api_key_header(cls, v: str | None) -> str | None:
        if v is not None and not _HEADER_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid header name")
        return v

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _trusted_proxies_list(cls, v: object) -> object:
        if isinstance(v, str | bytes):  # a tuple of its characters would be a baffling error
            raise ValueError("must be a list of addresses or CIDRs, e.g. [10.0.0.0/8]")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, entry in enumerate(v):
            try:
                parse_network(entry)
            except ValueError:
                raise ValueError(f"entry {i} ({entry!r}) is not an IP address or CIDR such as "
                                 "10.0.0.0/8 (host bits must be zero)") from None
        return v

    @field_validator("legacy_tokens", mode="before")
    @classmethod
    def _legacy_tokens(cls, v: object) -> object:
        if v is None:
            return ()
        if isinstance(v, str):  # AUTHGATE_LEGACY_TOKENS=sanctum,bcrypt
            return tuple(k.strip() for k in v.split(",") if k.strip())
        return v

    @field_validator("legacy_tokens")
    @classmethod
    def _legacy_tokens_once(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v))

    @field_validator("roles", mode="before")
    @classmethod
    def _roles(cls, v: object) -> object:
        if isinstance(v, Mapping):
            return {k: normalise_scopes(s, f"roles.{k}") for k, s in v.items()}
        return v

    _upstream = field_validator("upstream")(classmethod(lambda cls, v: _check_upstream(v)))


_STRUCTURED = {"routes", "roles", "identity_headers", "identity_assertion", "trusted_proxies",
               "alerts"}
KEYS = tuple(Settings.model_fields)


def _env_layer(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    layer: dict[str, Any] = {}
    problems: list[str] = []
    for key in KEYS:
        raw = env.get(f"AUTHGATE_{key.upper()}")
        if raw is None:
            continue
        if key in _STRUCTURED:
            try:
                layer[key] = json.loads(raw)
            except json.JSONDecodeError as e:
                problems.append(f"{key}: AUTHGATE_{key.upper()} is not valid JSON ({e.msg})")
        else:
            layer[key] = None if raw.strip().lower() in ("", "null", "none") else raw
    return layer, problems


def _file_layer(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"config: cannot read {path}: {e.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError([f"config: {path} is not valid YAML{where}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config: {path} must hold a mapping of keys"])
    return data


def _describe(err: Mapping[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "config"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    msg = msg.removeprefix("Value error, ")
    return f"{key}: {msg}"


def load_settings(config_file: str | None = None, env: Mapping[str, str] | None = None,
                  flags: Mapping[str, Any] | None = None) -> Settings:
    """Merge the layers (flag > environment > file > default) and validate once."""
    env = os.environ if env is None else env
    config_file = config_file or env.get("AUTHGATE_CONFIG") or None
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(_file_layer(config_file))
    env_values, problems = _env_layer(env)
    merged.update(env_values)
    merged.update({k: v for k, v in (flags or {}).items() if v is not None})
    for key in [k for k in merged if k in _STRUCTURED and problems and any(
            p.startswith(f"{k}:") for p in problems)]:
        merged.pop(key)
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as e:
        problems.extend(_describe(err) for err in e.errors())
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings

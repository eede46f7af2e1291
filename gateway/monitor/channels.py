"""Notification channels (SPEC §12): webhook (Standard Webhooks), Slack, Teams, Discord, email
(SMTP with aiosmtplib) and log.

A channel sends one alert or raises ``DeliveryError`` with a short reason that never holds the
URL, the secret or the SMTP password (the reason is stored, shown by ``alerts test`` and logged).
Alert text holds client-chosen strings (token names, subjects), so chat channels escape it
before their markup sees it: Slack gets its own escaping (``&``, ``<``, ``>``: no ``<!channel>``,
no disguised ``<url|text>`` links); Teams and Discord get markdown metacharacters backslashed and
``@`` followed by a zero-width joiner (no masked links, headings or mentions; Discord also sends
``allowed_mentions``). The webhook, email and log channels carry the values as data, unchanged.
Channels are named ``type:fingerprint`` (a hash of the URL or SMTP target) so a delivery row
keeps its channel across restarts and reloads without storing the URL itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Mapping
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import aiohttp

from gateway.config import AlertChannel

log = logging.getLogger("authgate.alerts")
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
SEVERITY_COLOUR = {"critical": "#b00020", "high": "#e65100", "medium": "#f9a825",
                   "low": "#1565c0", "info": "#607d8b"}


class DeliveryError(Exception):
    """A delivery failed; ``str()`` is safe to store and show."""


class Channel(Protocol):
    name: str
    type: str

    async def send(self, alert: Mapping[str, Any], message_id: str) -> None: ...


def channel_name(cfg: AlertChannel) -> str:
    target = cfg.url or (f"{cfg.smtp}|{','.join(cfg.to)}" if cfg.smtp else "")
    if not target:
        return cfg.type
    return f"{cfg.type}:{hashlib.sha256(target.encode()).hexdigest()[:10]}"


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """The Standard Webhooks signature: v1,base64(HMAC-SHA256(key, id.timestamp.body)), the key
    being the base64 after ``whsec_``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def text_of(alert: Mapping[str, Any]) -> str:
    return f"[authgate] {alert['severity']}: {alert['message']} ({alert['kind']}, {alert['id']})"


def slack_escape(text: str) -> str:
    """Slack's documented escaping: only ``&``, ``<`` and ``>`` are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MARKDOWN = re.compile(r"([\\`*_~\[\]()<>#|])")
_LEADING = re.compile(r"^(\s*)([-+])", re.MULTILINE)  # a list item; a leading > is escaped above
ZWJ = "\u200d"


def markdown_escape(text: str) -> str:
    """Client text as literal markdown (Teams TextBlock, Discord): metacharacters backslashed,
    a leading ``-``/``+`` too, and every ``@`` followed by a zero-width joiner so no
    ``@everyone``/``@here``/``@name`` is a mention."""
    text = _LEADING.sub(r"\1\\\2", _MARKDOWN.sub(r"\\\1", text))
    return text.replace("@", "@" + ZWJ)


class _Http:
    """A JSON POST to a URL; 2xx is delivered, anything else a DeliveryError."""

    type = "http"

    def __init__(self, cfg: AlertChannel, session: HttpSession) -> None:
        assert cfg.url is not None
        self.name = channel_name(cfg)
        self.type = cfg.type
        self.url = cfg.url
        self.timeout_s = cfg.timeout_s
        self._session = session

    def body(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def headers(self, message_id: str, body: str) -> dict[str, str]:
        return {}

    async def send(self, alert: Mapping[str, Any], message_id: str) -> None:
        body = _encode(self.body(alert))
        headers = {"Content-Type": "application/json", **self.headers(message_id, body)}
        await self._session.post(self.url, body, headers, self.timeout_s)


class WebhookChannel(_Http):
    def __init__(self, cfg: AlertChannel, session: HttpSession) -> None:
        super().__init__(cfg, session)
        assert cfg.secret is not None
        self._secret = cfg.secret

    def body(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "authgate.alert", "alert": dict(alert)}

    def headers(self, message_id: str, body: str) -> dict[str, str]:
        ts = int(time.time())  # per attempt; the id stays the same on every attempt
        return {"webhook-id": message_id, "webhook-timestamp": str(ts),
                "webhook-signature": sign(self._secret, message_id, ts, body)}


class SlackChannel(_Http):
    def body(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        return {"text": slack_escape(text_of(alert))}


class DiscordChannel(_Http):
    def body(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        return {"content": markdown_escape(text_of(alert))[:2000],
                "allowed_mentions": {"parse": []}}


class TeamsChannel(_Http):
    """A Teams workflow ("When a Teams webhook request is received") takes an Adaptive Card."""

    def body(self, alert: Mapping[str, Any]) -> dict[str, Any]:
        facts = [{"title": k, "value": markdown_escape(str(alert[k]))} for k in (
            "kind", "severity", "token_id", "subject", "ip", "threshold", "window", "raised_at")
            if alert.get(k)]
        return {"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
            "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard", "version": "1.4", "body": [
                            {"type": "TextBlock", "weight": "Bolder", "wrap": True,
                             "text": f"authgate {alert['severity']}: {alert['kind']}"},
                            {"type": "TextBlock", "wrap": True,
                             "text": markdown_escape(alert["message"])},
                            {"type": "FactSet", "facts": facts}]}}]}


class LogChannel:
    type = "log"
    name = "log"

    async def send(self, alert: Mapping[str, Any], message_id: str) -> None:
        log.warning("alert %s", _encode({"webhook_id": message_id, **alert}))


class EmailChannel:
    type = "email"

    def __init__(self, cfg: AlertChannel) -> None:
        assert cfg.smtp is not None and cfg.from_ is not None
        self.name = channel_name(cfg)
        url = urlsplit(cfg.smtp)
        self._tls = url.scheme == "smtps"
        self._host = url.hostname or "localhost"
        self._port = url.port or (465 if self._tls else 25)
        self._user = unquote(url.username) if url.username else None
        self._password = unquote(url.password) if url.password else None
        self._from = cfg.from_
        self._to = list(cfg.to)
        self.timeout_s = cfg.timeout_s

    async def send(self, alert: Mapping[str, Any], message_id: str) -> None:
        import aiosmtplib  # only when an email channel sends

        msg = EmailMessage()
        msg["From"] = self._from
        msg["To"] = ", ".join(self._to)
        msg["Subject"] = f"[authgate] {alert['severity']}: {alert['kind']}"
        msg["Message-ID"] = f"<{message_id}@authgate>"
        msg.set_content(text_of(alert) + "\n\n" + json.dumps(dict(alert), indent=2) + "\n")
        try:
            await aiosmtplib.send(msg, hostname=self._host, port=self._port,
                                  username=self._user, password=self._password,
                                  use_tls=self._tls, timeout=self.timeout_s)
        except aiosmtplib.SMTPResponseException as e:
            raise DeliveryError(f"SMTP {e.code}") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as e:
            raise DeliveryError(f"SMTP failed: {type(e).__name__}") from None


class HttpSession:
    """One pooled aiohttp session for every HTTP channel, made on first use."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def post(self, url: str, body: str, headers: dict[str, str], timeout_s: float) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=timeout_s), trust_env=True)
        try:
            async with self._session.post(url, data=body.encode(), headers=headers,
                                          timeout=aiohttp.ClientTimeout(total=timeout_s),
                                          allow_redirects=False) as resp:
                await resp.read()
                if not 200 <= resp.status < 300:
                    raise DeliveryError(f"HTTP {resp.status}")
        except TimeoutError:
            raise DeliveryError(f"timed out after {timeout_s:g} s") from None
        except aiohttp.ClientError as e:  # the message may name the URL: only the type
            raise DeliveryError(f"connection failed: {type(e).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


_HTTP_TYPES: dict[str, type[_Http]] = {"webhook": WebhookChannel, "slack": SlackChannel,
                                       "teams": TeamsChannel, "discord": DiscordChannel}


def build_channels(configs: tuple[AlertChannel, ...], session: HttpSession) -> dict[str, Channel]:
    """The configured channels by name (two identical entries are one channel)."""
    out: dict[str, Channel] = {}
    for cfg in configs:
        channel: Channel
        if cfg.type == "log":
            channel = LogChannel()
        elif cfg.type == "email":
            channel = EmailChannel(cfg)
        else:
            channel = _HTTP_TYPES[cfg.type](cfg, session)
        out.setdefault(channel.name, channel)
    return out

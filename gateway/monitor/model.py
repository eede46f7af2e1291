"""What an alert is (SPEC §12), as stored, listed and delivered.

An alert names a token, subject or address and never carries a token's plaintext or hash: the
checks build it from record ids, subjects, names and counts only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gateway.authority import rfc3339

Severity = Literal["critical", "high", "medium", "low", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "high", "medium", "low", "info")
KINDS = ("token_expiring", "rotation_due", "inactive_token_revoked", "multi_ip", "rapid_use",
         "failed_auth", "rate_limit_breach", "creation_rate", "token_replay_detected",
         "store_unreachable")
ACTOR = "monitor"  # who revokes inactive tokens, in the audit log


def expiry_severity(days: int) -> Severity:
    """token_expiring by threshold: 1 d critical, 7 d high, 14 d medium, longer low."""
    if days <= 1:
        return "critical"
    if days <= 7:
        return "high"
    return "medium" if days <= 14 else "low"


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    kind: str
    severity: Severity
    message: str
    raised_at: datetime
    dedup_key: str = field(repr=False)
    token_id: str | None = None
    subject: str | None = None
    ip: str | None = None
    threshold: str | None = None
    window: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    seq: int = field(default=0, compare=False)

    def public(self) -> dict[str, Any]:
        """The alert as the API lists it and channels receive it."""
        return {"id": self.id, "kind": self.kind, "severity": self.severity,
                "message": self.message, "raised_at": rfc3339(self.raised_at),
                "token_id": self.token_id, "subject": self.subject, "ip": self.ip,
                "threshold": self.threshold, "window": self.window,
                "details": dict(self.details)}


def window_text(seconds: int) -> str:
    """3600 -> 1h, 600 -> 10m, 90 -> 90s: the window as the config writes it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"

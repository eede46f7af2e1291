"""The alerts key (SPEC §12): defaults, YAML and AUTHGATE_ALERTS JSON, and every bad value as one
line naming the key, never echoing a URL or secret."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.monitor.channels import channel_name, sign
from gateway.monitor.outbox import retry_delay

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def problems(alerts: Any) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_settings(env={"AUTHGATE_ALERTS": json.dumps(alerts)})
    return e.value.problems


def test_off_by_default_and_the_spec_example_loads(tmp_path: Any) -> None:
    assert Settings().alerts is None
    path = tmp_path / "a.yaml"
    path.write_text("""
alerts:
  check_interval_s: 300
  channels:
    - {type: webhook, url: https://hooks.example/authgate, secret: SECRET}
    - {type: slack, url: https://hooks.slack.com/services/T/B/X}
    - {type: teams, url: https://example.webhook.office.com/x}
    - {type: discord, url: https://discord.com/api/webhooks/1/x}
    - {type: email, smtp: smtp://user:pw@host:587, from: authgate@example, to: [ops@example]}
    - {type: log}
  expiry_days: [30, 14, 7, 1]
  rotation: {max_age_days: 90, high_usage: {requests_per_day: 1000, max_age_days: 30}}
  inactivity_revoke_days: null
  detectors:
    multi_ip: {distinct_ips: 5, window: 1h}
    rapid_use: {requests: 5, window: 10m}
    failed_auth: {count: 50, window: 5m}
    rate_limit_breach: {count: 20, window: 10m}
""".replace("SECRET", SECRET))
    alerts = load_settings(str(path), env={}).alerts
    assert alerts is not None
    assert [c.type for c in alerts.channels] == ["webhook", "slack", "teams", "discord", "email",
                                                 "log"]
    assert alerts.detectors.multi_ip is not None and alerts.detectors.multi_ip.window == 3600
    assert alerts.detectors.failed_auth is not None and alerts.detectors.failed_auth.window == 300
    assert alerts.channels[4].from_ == "authgate@example"
    assert SECRET not in repr(alerts) and "pw@" not in repr(alerts)
    assert "hooks.slack.com" not in repr(alerts)


def test_environment_json_and_small_intervals_for_tests() -> None:
    s = load_settings(env={"AUTHGATE_ALERTS": '{"check_interval_s": 1}'})
    assert s.alerts is not None and s.alerts.check_interval_s == 1
    assert s.alerts.channels == () and s.alerts.expiry_days == (30, 14, 7, 1)
    assert problems({"check_interval_s": 0.5}) == [
        "alerts.check_interval_s: Input should be greater than or equal to 1"]
    with pytest.raises(ConfigError) as e:
        load_settings(env={"AUTHGATE_ALERTS": "{nope"})
    assert e.value.problems[0].startswith("alerts: AUTHGATE_ALERTS is not valid JSON")


@pytest.mark.parametrize(("alerts", "key"), [
    ({"channels": [{"type": "pager", "url": "https://x"}]}, "alerts.channels.0.type"),
    ({"channels": [{"type": "slack", "url": "ftp://hooks.example/secretpath"}]},
     "alerts.channels.0.url"),
    ({"channels": [{"type": "slack", "url": "https://user:pw@hooks.example/x"}]},
     "alerts.channels.0.url"),
    ({"channels": [{"type": "slack"}]}, "alerts.channels.0"),
    ({"channels": [{"type": "webhook", "url": "https://h/x"}]}, "alerts.channels.0"),
    ({"channels": [{"type": "webhook", "url": "https://h/x", "secret": "hunter2hunter2"}]},
     "alerts.channels.0.secret"),
    ({"channels": [{"type": "webhook", "url": "https://h/x", "secret": "whsec_abcde!!!"}]},
     "alerts.channels.0.secret"),
    ({"channels": [{"type": "email", "smtp": "http://h", "from": "a@b", "to": ["c@d"]}]},
     "alerts.channels.0.smtp"),
    ({"channels": [{"type": "email", "smtp": "smtp://h", "from": "a@b", "to": ["nobody"]}]},
     "alerts.channels.0.to"),
    ({"channels": [{"type": "log", "colour": "red"}]}, "alerts.channels.0.colour"),
    ({"detectors": {"multi_ip": {"distinct_ips": 3, "window": "banana"}}},
     "alerts.detectors.multi_ip.window"),
    ({"detectors": {"failed_auth": {"count": 5, "window": "0s"}}},
     "alerts.detectors.failed_auth.window"),
    ({"detectors": {"brute": {}}}, "alerts.detectors.brute"),
    ({"expiry_days": [7, 0]}, "alerts.expiry_days"),
    ({"inactivity_revoke_days": -1}, "alerts.inactivity_revoke_days"),
    ({"rotation": {"max_age_days": "soon"}}, "alerts.rotation.max_age_days"),
    ({"check_interval": 5}, "alerts.check_interval"),
])
def test_bad_alerts_config_is_one_line_naming_the_key(alerts: dict[str, Any], key: str) -> None:
    found = problems(alerts)
    assert len(found) == 1 and found[0].startswith(key + ":"), found
    assert "secretpath" not in found[0] and "hunter2" not in found[0] and "pw@" not in found[0]


def test_the_standard_webhooks_signature_and_backoff() -> None:
    from standardwebhooks import Webhook

    body = '{"type":"authgate.alert","alert":{}}'
    signature = sign(SECRET, "alt_1", 1_700_000_000, body)
    assert signature.startswith("v1,")
    expected = Webhook(SECRET).sign("alt_1", __import__("datetime").datetime.fromtimestamp(
        1_700_000_000, tz=__import__("datetime").UTC), body)
    assert signature == expected
    assert [retry_delay(n) for n in range(1, 10)] == [5, 10, 20, 40, 80, 160, 320, 600, 600]
    assert retry_delay(10_000) == 600


def test_channel_names_never_hold_the_url_or_secret() -> None:
    s = load_settings(env={"AUTHGATE_ALERTS": json.dumps({"channels": [
        {"type": "slack", "url": "https://hooks.slack.com/services/T/B/SECRETPART"},
        {"type": "webhook", "url": "https://h/x", "secret": SECRET}, {"type": "log"}]})})
    assert s.alerts is not None
    names = [channel_name(c) for c in s.alerts.channels]
    assert names[0].startswith("slack:") and "SECRETPART" not in names[0]
    assert names[1].startswith("webhook:") and names[2] == "log"
    assert len(set(names)) == 3

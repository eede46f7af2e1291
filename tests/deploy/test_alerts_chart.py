"""The chart's alerts parts: AUTHGATE_ALERTS from the Secret (optional key) in every container,
and the `authgate watch --once` CronJob, off by default, whose rendering validates against the
Kubernetes schemas."""

from __future__ import annotations

import re

import kubernetes_validate
import yaml

from tests.deploy.test_chart_and_image import CHART, K8S_VERSION


def test_watch_cronjob_is_off_by_default_and_runs_watch_once() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["alerts"] == {"config": None, "watchCronJob": {
        "enabled": False, "schedule": "*/5 * * * *"}}
    template = (CHART / "templates" / "watch-cronjob.yaml").read_text()
    assert template.startswith("{{- if .Values.alerts.watchCronJob.enabled }}")
    assert 'args: ["watch", "--once"]' in template
    assert "concurrencyPolicy: Forbid" in template


def test_rendered_cronjob_validates_and_matches_the_template() -> None:
    [doc] = [d for d in yaml.safe_load_all(
        (CHART / "examples" / "rendered-watch-cronjob.yaml").read_text()) if d]
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    pod = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["watch", "--once"]
    env = {e["name"]: e for e in container["env"]}
    assert env["AUTHGATE_ALERTS"]["valueFrom"]["secretKeyRef"] == {
        "name": "authgate-authgate", "key": "alerts", "optional": True}
    assert {"AUTHGATE_STORE", "AUTHGATE_PEPPER"} <= set(env)


def test_alerts_config_goes_through_the_secret_never_a_plain_value() -> None:
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert re.search(r"AUTHGATE_ALERTS\n\s+valueFrom: \{secretKeyRef: .*key: alerts, "
                     r"optional: true", helpers)
    secret = (CHART / "templates" / "secret.yaml").read_text()
    assert "alerts: {{ .Values.alerts.config | toJson | quote }}" in secret

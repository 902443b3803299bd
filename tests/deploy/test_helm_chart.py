"""helm/rollout-gate: static checks, then `helm lint` and `helm template` for every values file in
the chart's ci/ directory, the rendered manifests against the worker's settings and the Kubernetes
schemas (kubernetes-validate, offline), the PrometheusRule through promtool, and the renders that
must fail with a clear message."""

from __future__ import annotations

import base64
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import (
    CHART,
    KUBE_VERSION,
    PROM_DIR,
    load_yaml,
    load_yaml_docs,
    load_yaml_text,
    require_tool,
    run,
)
from tests.deploy.test_settings_contract import assert_valid_settings

CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
TEMPLATES = {
    "_helpers.tpl",
    "deployment.yaml",
    "service.yaml",
    "configmap.yaml",
    "secret.yaml",
    "serviceaccount.yaml",
    "servicemonitor.yaml",
    "prometheusrule.yaml",
    "NOTES.txt",
}


# -- without helm ---------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = load_yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "rollout-gate"
    assert chart["type"] == "application"
    assert chart["version"] and chart["appVersion"]


def test_templates_present() -> None:
    assert {p.name for p in (CHART / "templates").iterdir()} >= TEMPLATES


def test_default_values() -> None:
    values = load_yaml(CHART / "values.yaml")
    assert values["replicaCount"] == 1
    assert values["metrics"]["port"] == 9108
    assert values["metrics"]["serviceMonitor"]["enabled"] is False
    assert values["metrics"]["prometheusRule"]["enabled"] is False
    assert values["kafka"]["sasl"]["password"] == "", "no default password"
    assert values["topics"] == {
        "events": "rollout.events",
        "decisions": "rollout.decisions",
        "dlq": "rollout.events.dlq",
        "commands": "rollout.commands",
        "partitions": 1,
        "replicationFactor": 3,
    }


def test_replica_comment_explains_partitioned_rollouts() -> None:
    text = (CHART / "values.yaml").read_text()
    comment = text[: text.index("\nreplicaCount:")].rsplit("\n\n", 1)[-1].lower()
    for word in ("partition", "rollout_id", "replica"):
        assert word in comment, f"the replicaCount comment should explain {word}"


def test_values_fit_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="pip install jsonschema (kubernetes-validate brings it)")
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    base = load_yaml(CHART / "values.yaml")
    jsonschema.validate(base, schema)
    for path in CI_VALUES:
        jsonschema.validate(_merge(base, load_yaml(path) or {}), schema)


def test_chart_policy_is_a_valid_policy() -> None:
    from gates.policy import load_policy

    policy = load_policy(CHART / "files" / "policy.yaml")
    assert policy.defaults.steps == [1.0, 10.0, 25.0, 50.0, 75.0, 100.0]
    assert policy.defaults.gates.cost.max_ratio == 1.2


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- helm -------------------------------------------------------------------------------------------


def _helm() -> str:
    return require_tool("helm")


@cache
def _render(values_name: str, *sets: str) -> list[dict[str, Any]]:
    argv = [_helm(), "template", "rg", str(CHART), "--namespace", "rollouts", "--kube-version", KUBE_VERSION]
    if values_name:
        argv += ["-f", str(CHART / "ci" / values_name)]
    for s in sets:
        argv += ["--set", s]
    result = run(argv)
    assert result.returncode == 0, result.stderr
    return load_yaml_docs(result.stdout)


def _kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        assert d["kind"] not in out, f"two {d['kind']} objects"
        out[d["kind"]] = d
    return out


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _kinds(docs)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint(values: Path) -> None:
    result = run([_helm(), "lint", "--strict", "--kube-version", KUBE_VERSION, "-f", str(values), str(CHART)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_worker_container(values: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render(values.name)
    c = _container(docs)
    assert c["args"] == ["worker"]
    (port,) = c["ports"]
    assert port["name"] == "metrics"
    env = _env(c)
    assert env["ROLLOUT_GATE_METRICS_PORT"] == str(port["containerPort"])
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"]["port"] == "metrics"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    pod = _kinds(docs)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # State and the policy: POLICY_FILE lies in the mounted ConfigMap, DATA_DIR is writable.
    assert not mounts[env["ROLLOUT_GATE_DATA_DIR"]].get("readOnly", False)
    policy_dir = str(Path(env["ROLLOUT_GATE_POLICY_FILE"]).parent)
    policy_volume = volumes[mounts[policy_dir]["name"]]
    assert policy_volume["configMap"]["items"] == [{"key": "policy.yaml", "path": Path(env["ROLLOUT_GATE_POLICY_FILE"]).name}]
    # The password never appears as a plain value.
    if "ROLLOUT_GATE_KAFKA_SASL_PASSWORD" in env:
        assert "secretKeyRef" in env["ROLLOUT_GATE_KAFKA_SASL_PASSWORD"]
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    plain.update({k: "from-a-secret" for k, v in env.items() if not isinstance(v, str)})
    assert_valid_settings(plain, monkeypatch, where=f"chart with {values.name}")


def test_default_render() -> None:
    kinds = _kinds(_render("default-values.yaml"))
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Service", "Deployment"}
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
    env = _env(_container(list(kinds.values())))
    assert env["ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"
    assert not any(k.startswith("ROLLOUT_GATE_KAFKA_SASL") for k in env)
    from gates.policy import parse_policy

    policy = parse_policy(kinds["ConfigMap"]["data"]["policy.yaml"], "ConfigMap")
    assert policy.for_rollout("chat-v7").shadow.enabled
    service = kinds["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_sasl_ssl_with_existing_secrets_and_monitoring() -> None:
    docs = _render("sasl-ssl-values.yaml")
    kinds = _kinds(docs)
    assert "Secret" not in kinds, "an existing Secret must not be duplicated"
    c = _container(docs)
    env = _env(c)
    assert env["ROLLOUT_GATE_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "rollout-gate-kafka-credentials", "key": "scram-password"}
    }
    assert env["ROLLOUT_GATE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    cafile = Path(env["ROLLOUT_GATE_KAFKA_SSL_CAFILE"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    tls_volume = mounts[str(cafile.parent)]["name"]
    volumes = {v["name"]: v for v in kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[tls_volume]["secret"]["secretName"] == "kafka-cluster-ca"
    assert c["image"].endswith("@sha256:" + "0123456789abcdef" * 4)
    # The policy from values replaces the default file.
    from gates.policy import parse_policy

    assert parse_policy(kinds["ConfigMap"]["data"]["policy.yaml"]).defaults.steps == [5, 25, 50, 100]
    # ServiceMonitor -> Service: selector, port name, and a job label that the alert rules expect.
    sm, svc = kinds["ServiceMonitor"], kinds["Service"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "rollout-gate-worker"
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["rollouts"]
    # PrometheusRule carries exactly deploy/prometheus/rules.yml.
    rule = kinds["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == load_yaml(PROM_DIR / "rules.yml")


def test_sasl_with_created_secret() -> None:
    docs = _render("sasl-created-secret-values.yaml")
    kinds = _kinds(docs)
    secret = kinds["Secret"]
    assert base64.b64decode(secret["data"]["password"]).decode() == "dev-only-password"
    env = _env(_container(docs))
    assert env["ROLLOUT_GATE_KAFKA_SASL_PASSWORD"] == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "password"}}
    assert "dev-only-password" not in yaml.safe_dump(kinds["Deployment"])
    assert "ConfigMap" not in kinds, "policy.existingConfigMap: the chart must not create one"
    volumes = {v["name"]: v for v in kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "rollout-gate-policy"
    assert kinds["Deployment"]["spec"]["replicas"] == 2
    assert env["ROLLOUT_GATE_TOPIC_PARTITIONS"] == "4"


def test_mutual_tls() -> None:
    env = _env(_container(_render("mtls-values.yaml")))
    assert env["ROLLOUT_GATE_KAFKA_SSL_CERTFILE"].endswith("/tls.crt")
    assert env["ROLLOUT_GATE_KAFKA_SSL_KEYFILE"].endswith("/tls.key")
    assert env["PYTHONFAULTHANDLER"] == "1"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ["kafka.securityProtocol=SASL_SSL", "kafka.sasl.username=u", "kafka.sasl.password=p"],
            "kafka.sasl.mechanism is required",
        ),
        (["kafka.securityProtocol=SASL_SSL", "kafka.sasl.mechanism=PLAIN", "kafka.sasl.username=u"], "SASL needs a password"),
        (
            ["kafka.securityProtocol=SASL_SSL", "kafka.sasl.mechanism=PLAIN", "kafka.sasl.password=p"],
            "kafka.sasl.username is required",
        ),
        (["kafka.securityProtocol=TLS"], "securityProtocol"),
        (["kafka.sasl.mechanism=GSSAPI"], "mechanism"),
        (["kafka.ssl.existingSecret=s", "kafka.ssl.certFile=tls.crt"], "go together"),
        (["kafka.ssl.certFile=tls.crt", "kafka.ssl.keyFile=tls.key"], "kafka.ssl.existingSecret"),
        (["topics.events=bad topic"], "events"),
        (["metrics.prometheusRule.enabled=true", "metrics.jobName=other"], "metrics.jobName"),
    ],
)
def test_bad_values_fail_with_a_clear_message(sets: list[str], message: str) -> None:
    argv = [_helm(), "template", "rg", str(CHART), "--kube-version", KUBE_VERSION]
    for s in sets:
        argv += ["--set", s]
    result = run(argv)
    assert result.returncode != 0, f"rendered although {sets}"
    assert message in result.stderr, result.stderr


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_kubernetes_schemas(values: Path, tmp_path: Path) -> None:
    """Built-in kinds against the Kubernetes OpenAPI schemas bundled in kubernetes-validate (strict:
    unknown fields fail). ServiceMonitor and PrometheusRule are CRDs without a bundled schema."""
    validator = require_tool("kubernetes-validate")
    docs = [d for d in _render(values.name) if d["apiVersion"] != "monitoring.coreos.com/v1"]
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    result = run([validator, "--strict", "--kubernetes-version", KUBE_VERSION, "--quiet", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_validate_catches_an_unknown_field(tmp_path: Path) -> None:
    validator = require_tool("kubernetes-validate")
    docs = _render("default-values.yaml")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = run([validator, "--strict", "--kubernetes-version", KUBE_VERSION, str(path)])
    assert result.returncode != 0


def test_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rule = _kinds(_render("sasl-ssl-values.yaml"))["PrometheusRule"]
    path = tmp_path / "prometheusrule-spec.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_load_yaml_text_is_strict() -> None:
    with pytest.raises(yaml.YAMLError):
        load_yaml_text("a: 1\na: 2\n")

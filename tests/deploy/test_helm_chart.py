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
    ROOT,
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
    "api-deployment.yaml",
    "api-service.yaml",
    "poddisruptionbudget.yaml",
    "networkpolicy.yaml",
    "dashboard-configmap.yaml",
    "NOTES.txt",
}
# Read by the operator-command authentication (worker and API), not by the worker's Settings model.
AUTH_ENV = {"ROLLOUT_GATE_COMMAND_HMAC_KEY", "ROLLOUT_GATE_API_TOKEN"}


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
def _render(values_name: str, *sets: str, release: str = "rg", namespace: str = "rollouts") -> list[dict[str, Any]]:
    argv = [_helm(), "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
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


def _component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"]["app.kubernetes.io/component"])


def _objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """The objects of one kind by component (worker, api, ...); at most one each."""
    out: dict[str, dict[str, Any]] = {}
    for d in docs:
        if d["kind"] == kind:
            assert _component(d) not in out, f"two {kind} objects for {_component(d)}"
            out[_component(d)] = d
    return out


def _container(docs: list[dict[str, Any]], component: str = "worker") -> dict[str, Any]:
    (container,) = _objects(docs, "Deployment")[component]["spec"]["template"]["spec"]["containers"]
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
    pod = _objects(docs, "Deployment")["worker"]["spec"]["template"]["spec"]
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
    assert "ROLLOUT_GATE_API_TOKEN" not in env, "the worker has no use for the API's token"
    assert_valid_settings({k: v for k, v in plain.items() if k not in AUTH_ENV}, monkeypatch,
                          where=f"chart with {values.name}")  # fmt: skip


def test_default_render() -> None:
    kinds = _kinds(_render("default-values.yaml"))
    assert set(kinds) == {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "NetworkPolicy"}
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
    # every component's client presents the certificate (connectors/config.py reads the same names)
    docs = _render("mtls-values.yaml", "api.enabled=true", "otelBridge.enabled=true")
    for component in ("worker", "api", "otel-bridge"):
        c = _container(docs, component)
        e = _env(c)
        assert (e["ROLLOUT_GATE_KAFKA_SSL_CERTFILE"], e["ROLLOUT_GATE_KAFKA_SSL_KEYFILE"]) == (
            env["ROLLOUT_GATE_KAFKA_SSL_CERTFILE"], env["ROLLOUT_GATE_KAFKA_SSL_KEYFILE"]), component
        assert any(m["name"] == "kafka-tls" for m in c["volumeMounts"]), component


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
    _assert_render_fails(sets, message)


def _assert_render_fails(sets: list[str], message: str) -> str:
    """helm template with ``sets`` must fail, saying ``message``; returns what it said."""
    argv = [_helm(), "template", "rg", str(CHART), "--kube-version", KUBE_VERSION]
    for s in sets:
        argv += ["--set", s]
    result = run(argv)
    assert result.returncode != 0, f"rendered although {sets}"
    assert message in result.stderr, result.stderr
    return result.stderr


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


# -- the whole service: verdict API, disruption budgets, network policies, spread, dashboard, auth ----

ALL = "all-enabled-values.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "rollout-gate.json"


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def test_values_keys_and_schema_keys_are_the_same() -> None:
    """Every top-level value has a schema entry and the schema admits no other: a misspelt key fails."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(load_yaml(CHART / "values.yaml")) == set(schema["properties"])
    for key in ("api", "podDisruptionBudget", "networkPolicy", "grafanaDashboard", "auth", "kafka", "topics", "metrics"):
        assert schema["properties"][key]["additionalProperties"] is False, key


@pytest.mark.parametrize(
    ("sets", "unknown"),
    [
        (["podDisruptionBuget.enabled=true"], "'podDisruptionBuget' not allowed"),
        (["podDisruptionBudget.enable=true"], "'enable' not allowed"),
        (["api.enable=true"], "'enable' not allowed"),
        (["networkPolicy.egress.kafak.ports={9092}"], "'kafak' not allowed"),
        (["grafanaDashboard.label.grafana_dashboard=1"], "'label' not allowed"),
        (["auth.apiToken=abc"], "'apiToken' not allowed"),
        (["replicas=2"], "'replicas' not allowed"),
    ],
)
def test_the_schema_rejects_unknown_keys(sets: list[str], unknown: str) -> None:
    stderr = _assert_render_fails(sets, unknown)
    assert "additional properties" in stderr, stderr
    jsonschema = pytest.importorskip("jsonschema")
    # the same answer without helm: the schema itself, on values.yaml plus the typo
    key, _, value = sets[0].partition("=")
    patch: dict[str, Any] = {}
    node = patch
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    schema = json.loads((CHART / "values.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_merge(load_yaml(CHART / "values.yaml"), patch), schema)


def test_all_enabled_renders_every_part() -> None:
    docs = _render(ALL)
    kinds = sorted((d["kind"], _component(d)) for d in docs)
    assert kinds == sorted([
        ("ServiceAccount", "worker"), ("ConfigMap", "worker"), ("ConfigMap", "dashboard"),
        ("Deployment", "worker"), ("Deployment", "api"), ("Service", "worker"), ("Service", "api"),
        ("PodDisruptionBudget", "worker"), ("PodDisruptionBudget", "api"),
        ("NetworkPolicy", "worker"), ("NetworkPolicy", "api"), ("ServiceMonitor", "worker"),
        ("PrometheusRule", "worker"), ("Deployment", "otel-bridge"), ("PodDisruptionBudget", "otel-bridge"),
        ("NetworkPolicy", "otel-bridge"), ("PodMonitor", "otel-bridge"),
    ])  # fmt: skip
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(set(names)) == len(names)


def test_the_api_serves_the_urls_of_the_argo_and_flagger_examples() -> None:
    """Installed as the examples assume (release rollout-gate, namespace rollout-gate), the API's
    Service is at the host and port that deploy/argo and deploy/flagger call, on paths it routes."""
    from urllib.parse import urlsplit

    docs = _render("", "api.enabled=true", release="rollout-gate", namespace="rollout-gate")
    service = _objects(docs, "Service")["api"]
    deployment = _objects(docs, "Deployment")["api"]
    host = f"{service['metadata']['name']}.rollout-gate.svc.cluster.local"
    (port,) = service["spec"]["ports"]
    assert _selects(service["spec"]["selector"], _pod_labels(deployment))
    assert not _selects(service["spec"]["selector"], _pod_labels(_objects(docs, "Deployment")["worker"]))
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (cport,) = container["ports"]
    assert port["targetPort"] == cport["name"] and port["port"] == cport["containerPort"]
    # the container runs `rollout-gate api` (the image's entrypoint is rollout-gate) on that port
    assert container["args"][:3] == ["api", "--port", str(cport["containerPort"])]
    assert 'ENTRYPOINT ["rollout-gate"]' in (ROOT / "Dockerfile").read_text()

    urls: list[tuple[str, str]] = []  # (method, url)
    for template in load_yaml_docs((ROOT / "deploy" / "argo" / "analysis-template.yaml").read_text()):
        api = next(a["value"] for a in template["spec"]["args"] if a["name"] == "api")
        for metric in template["spec"]["metrics"]:
            url = metric["provider"]["web"]["url"].replace("{{args.api}}", api)
            urls.append(("GET", url))
    canary = load_yaml(ROOT / "deploy" / "flagger" / "canary.yaml")
    urls += [("POST", w["url"]) for w in canary["spec"]["analysis"]["webhooks"]]
    assert len(urls) == 5
    from connectors.api import RolloutAPI

    class NoViews:
        def state(self, rollout_id: str) -> None:
            return None

        def rollouts(self) -> dict[str, Any]:
            return {}

    routes = {(r.method, r.resource.canonical) for r in RolloutAPI(NoViews()).app().router.routes()  # type: ignore[arg-type]
              if r.resource is not None}  # fmt: skip
    for method, url in urls:
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) == (host, port["port"]), url
        path = parts.path.replace("{{args.rollout-id}}", "{id}")
        assert (method, path) in routes, f"{method} {path} is not served by connectors/api.py"


def test_the_api_container_reads_kafka_and_its_token_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _render(ALL)
    c = _container(docs, "api")
    env = _env(c)
    assert c["args"] == ["api", "--port", "8090", "--decisions-topic", "rollout.decisions",
                         "--commands-topic", "rollout.commands"]  # fmt: skip
    assert env["ROLLOUT_GATE_API_TOKEN"] == {"secretKeyRef": {"name": "rollout-gate-auth", "key": "api-token"}}
    assert env["ROLLOUT_GATE_KAFKA_SASL_PASSWORD"] == {
        "secretKeyRef": {"name": "rollout-gate-kafka-credentials", "key": "scram-password"}
    }
    # the CA is mounted where the variable says
    cafile = Path(env["ROLLOUT_GATE_KAFKA_SSL_CAFILE"])
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in _objects(docs, "Deployment")["api"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts[str(cafile.parent)]["name"]]["secret"]["secretName"] == "kafka-cluster-ca"
    # every plain ROLLOUT_GATE_KAFKA_* value is one the API's client accepts
    from connectors.config import KafkaConfig

    for key in list(__import__("os").environ):
        if key.startswith("ROLLOUT_GATE_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("ROLLOUT_GATE_KAFKA_"):
            monkeypatch.setenv(key, value if isinstance(value, str) else "from-a-secret")
    kafka = KafkaConfig.from_env()
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert kafka.bootstrap_servers == "kafka-0.kafka.data:9093,kafka-1.kafka.data:9093,kafka-lb.data:9443"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_the_command_hmac_key_goes_to_worker_and_api_from_the_secret() -> None:
    docs = _render(ALL)
    ref = {"secretKeyRef": {"name": "rollout-gate-auth", "key": "command-hmac-key"}}
    assert _env(_container(docs, "worker"))["ROLLOUT_GATE_COMMAND_HMAC_KEY"] == ref
    assert _env(_container(docs, "api"))["ROLLOUT_GATE_COMMAND_HMAC_KEY"] == ref
    assert "Secret" not in {d["kind"] for d in docs}, "the chart references the auth Secret, never creates it"
    # without a Secret, no variable; a key name left empty leaves its variable out
    plain = _render("", "api.enabled=true")
    for component in ("worker", "api"):
        assert not AUTH_ENV & set(_env(_container(plain, component)))
    token_only = _render("", "api.enabled=true", "auth.existingSecret=s", "auth.commandHmacKeyKey=")
    assert set(_env(_container(token_only, "api"))) & AUTH_ENV == {"ROLLOUT_GATE_API_TOKEN"}
    assert not AUTH_ENV & set(_env(_container(token_only, "worker")))


@pytest.mark.parametrize("values", [*CI_VALUES, "api"], ids=lambda p: getattr(p, "name", p))
def test_pods_run_unprivileged_on_a_read_only_root(values: Path | str) -> None:
    docs = _render("", "api.enabled=true") if values == "api" else _render(values.name)  # type: ignore[union-attr]
    deployments = _objects(docs, "Deployment")
    for component, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod["volumes"]}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, component
            assert sc["allowPrivilegeEscalation"] is False, component
            assert sc["capabilities"] == {"drop": ["ALL"]}, component
            assert "privileged" not in sc or sc["privileged"] is False
            # whatever is writable is a volume of its own: an emptyDir or a claim
            for m in c["volumeMounts"]:
                v = volumes[m["name"]]
                if not m.get("readOnly"):
                    assert "emptyDir" in v or "persistentVolumeClaim" in v, (component, m)
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


def test_the_data_dir_can_be_an_existing_claim() -> None:
    docs = _render(ALL)
    c = _container(docs)
    pod = _objects(docs, "Deployment")["worker"]["spec"]["template"]["spec"]
    data = next(m for m in c["volumeMounts"] if m["mountPath"] == _env(c)["ROLLOUT_GATE_DATA_DIR"])
    volume = next(v for v in pod["volumes"] if v["name"] == data["name"])
    assert volume == {"name": data["name"], "persistentVolumeClaim": {"claimName": "rollout-gate-data"}}
    default = _render("default-values.yaml")
    pod = _objects(default, "Deployment")["worker"]["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == data["name"])["emptyDir"] == {"sizeLimit": "2Gi"}


@pytest.mark.parametrize(("values", "sets"), [("default-values.yaml", ()), (ALL, ())], ids=["default", "all"])
def test_each_component_has_a_disruption_budget_for_its_own_pods(values: str, sets: tuple[str, ...]) -> None:
    docs = _render(values, *sets)
    budgets, deployments = _objects(docs, "PodDisruptionBudget"), _objects(docs, "Deployment")
    assert set(budgets) == set(deployments)
    for component, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert _selects(selector, _pod_labels(deployments[component]))
        others = [d for c, d in deployments.items() if c != component]
        assert not any(_selects(selector, _pod_labels(d)) for d in others)
        if values == ALL:
            assert budget["spec"] == {"minAvailable": 1, "selector": budget["spec"]["selector"]}
        else:
            assert budget["spec"] == {"maxUnavailable": 1, "selector": budget["spec"]["selector"]}
    assert "PodDisruptionBudget" not in {d["kind"] for d in _render("", "podDisruptionBudget.enabled=false")}
    percent = _objects(_render("", "podDisruptionBudget.maxUnavailable=50%"), "PodDisruptionBudget")["worker"]
    assert percent["spec"]["maxUnavailable"] == "50%"


def _ports(rule: dict[str, Any]) -> list[tuple[int, str]]:
    return sorted((p["port"], p["protocol"]) for p in rule["ports"])


def test_network_policies_admit_only_the_service_ports_and_reach_only_kafka_and_dns() -> None:
    docs = _render("default-values.yaml", "api.enabled=true", "otelBridge.enabled=true")
    policies, deployments = _objects(docs, "NetworkPolicy"), _objects(docs, "Deployment")
    assert set(policies) == {"worker", "api", "otel-bridge"}
    for component, policy in policies.items():
        spec = policy["spec"]
        pods = _pod_labels(deployments[component])
        assert _selects(spec["podSelector"]["matchLabels"], pods)
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        (container,) = deployments[component]["spec"]["template"]["spec"]["containers"]
        (ingress,) = spec["ingress"]
        assert _ports(ingress) == [(p["containerPort"], "TCP") for p in container["ports"]]
        assert "from" not in ingress, "default: from anywhere, but to this port only"
        kafka, dns, *rest = spec["egress"]
        if component == "api":
            (to_worker,) = rest  # live views and command checks on the worker's metrics port
            assert _ports(to_worker) == [(9108, "TCP")]
            (peer,) = to_worker["to"]
            assert _selects(peer["podSelector"]["matchLabels"], _pod_labels(deployments["worker"]))
            assert not _selects(peer["podSelector"]["matchLabels"], pods)
        else:
            assert rest == [], "no notifications configured: no egress beyond Kafka and DNS"
        assert _ports(kafka) == [(9092, "TCP")], "the port of kafka.bootstrap (kafka:9092)"
        assert _ports(dns) == [(53, "TCP"), (53, "UDP")]
        assert "to" not in kafka and "to" not in dns
    assert "NetworkPolicy" not in {d["kind"] for d in _render("", "networkPolicy.enabled=false")}


def test_network_policy_peers_ports_and_extra_rules_are_configurable() -> None:
    docs = _render(ALL)
    values = load_yaml(CHART / "ci" / ALL)["networkPolicy"]
    policies = _objects(docs, "NetworkPolicy")
    assert policies["worker"]["spec"]["ingress"][0]["from"] == values["ingress"]["metrics"]
    assert policies["api"]["spec"]["ingress"][0]["from"] == values["ingress"]["api"]
    assert policies["otel-bridge"]["spec"]["ingress"][0]["from"] == values["ingress"]["metrics"]
    for policy in policies.values():
        kafka, dns, *_, extra = policy["spec"]["egress"]
        # the distinct ports of kafka.bootstrap, in order
        assert [p["port"] for p in kafka["ports"]] == [9093, 9443]
        assert kafka["to"] == values["egress"]["kafka"]["to"]
        assert dns["to"] == values["egress"]["dns"]["to"]
        assert extra == values["extraEgress"][0]
    named = _render("", "networkPolicy.egress.kafka.ports={9094,9095}")
    kafka = _objects(named, "NetworkPolicy")["worker"]["spec"]["egress"][0]
    assert _ports(kafka) == [(9094, "TCP"), (9095, "TCP")]


def test_pods_spread_over_zones_and_nodes_with_their_own_selector() -> None:
    for docs in (_render("default-values.yaml", "api.enabled=true"), _render(ALL)):
        deployments = _objects(docs, "Deployment")
        for deployment in deployments.values():
            constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
            keys = [c["topologyKey"] for c in constraints]
            assert keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
            for c in constraints:
                assert _selects(c["labelSelector"]["matchLabels"], _pod_labels(deployment))
    # the chart fills in each component's own selector; one given in the values is kept
    default = _objects(_render("default-values.yaml", "api.enabled=true"), "Deployment")
    for component in ("worker", "api"):
        for c in default[component]["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            assert c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component
            assert c["whenUnsatisfiable"] == "ScheduleAnyway"
    given = _objects(_render(ALL), "Deployment")["api"]["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert given[0]["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert given[1]["labelSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "rollout-gate"}}
    assert given[0]["whenUnsatisfiable"] == "DoNotSchedule"


def test_chart_ships_the_same_dashboard() -> None:
    assert (CHART / "files" / "dashboard.json").read_bytes() == DASHBOARD.read_bytes(), (
        "helm/rollout-gate/files/dashboard.json differs from deploy/grafana/rollout-gate.json: "
        "cp deploy/grafana/rollout-gate.json helm/rollout-gate/files/dashboard.json"
    )


def test_the_dashboard_config_map_is_for_the_grafana_sidecar() -> None:
    assert "ConfigMap" not in {k for k, c in ((d["kind"], _component(d)) for d in _render("default-values.yaml"))
                               if c == "dashboard"}  # fmt: skip
    cm = _objects(_render(ALL), "ConfigMap")["dashboard"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "rollout-gate"}
    assert cm["metadata"]["namespace"] == "monitoring"
    (key,) = cm["data"]
    assert key.endswith(".json")
    assert cm["data"][key] == DASHBOARD.read_text(encoding="utf-8").rstrip("\n")
    assert json.loads(cm["data"][key]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    other = _objects(_render("", "grafanaDashboard.enabled=true", "grafanaDashboard.labels.grafana_dashboard=yes"),
                     "ConfigMap")["dashboard"]  # fmt: skip
    assert other["metadata"]["labels"]["grafana_dashboard"] == "yes"
    assert "namespace" not in other["metadata"], "the release's namespace unless told otherwise"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["otelBridge.enabled=true", "otelBridge.traces.topic=", "otelBridge.logs.topic="], "would read nothing"),
        (["otelBridge.enabled=true", "otelBridge.traces.encoding=protobuf"], "encoding"),
        (["otelBridge.enabled=true", "otelBridge.arms.chat-v7=treatment"], "arms"),
        (["dataDir.existingClaim=data", "replicaCount=2"], "dataDir.existingClaim"),
        (["podDisruptionBudget.maxUnavailable=null"], "set podDisruptionBudget.maxUnavailable or minAvailable"),
        (["podDisruptionBudget.maxUnavailable=1x"], "maxUnavailable"),
        (["api.port=0"], "port"),
        (["topologySpreadConstraints[0].whenUnsatisfiable=Sometimes"], "whenUnsatisfiable"),
    ],
)  # fmt: skip
def test_bad_service_values_fail_with_a_clear_message(sets: list[str], message: str) -> None:
    _assert_render_fails(sets, message)


def _notes(tmp_path: Path, *sets: str, release: str = "rg", namespace: str = "rollouts") -> str:
    """NOTES.txt as `helm install` prints it (`helm template` skips it): rendered with tpl from a copy
    of the chart whose one extra template holds it in a ConfigMap."""
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((CHART / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n"
        '  notes: |\n    {{- tpl (.Files.Get "notes.txt") . | nindent 4 }}\n'
    )
    argv = [_helm(), "template", release, str(chart), "-n", namespace, "--kube-version", KUBE_VERSION,
            "--show-only", "templates/zz-notes.yaml"]  # fmt: skip
    for s in sets:
        argv += ["--set", s]
    result = run(argv)
    assert result.returncode == 0, result.stderr
    return str(load_yaml_text(result.stdout)["data"]["notes"])


def test_notes_give_the_api_address_and_say_when_the_examples_need_another(tmp_path: Path) -> None:
    assert "verdict API" not in _notes(tmp_path / "off")
    matching = _notes(tmp_path / "match", "api.enabled=true", "auth.existingSecret=s",
                      release="rollout-gate", namespace="rollout-gate")  # fmt: skip
    assert "http://rollout-gate-api.rollout-gate.svc.cluster.local:8090" in matching
    assert "NOTE: deploy/argo" not in matching and "no API token" not in matching
    other = _notes(tmp_path / "other", "api.enabled=true")
    assert "http://rg-rollout-gate-api.rollouts.svc.cluster.local:8090" in other
    assert "NOTE: deploy/argo and deploy/flagger use" in other
    assert "the API refuses operator commands" in other


def test_the_api_asks_the_worker_service_for_live_views_and_command_checks() -> None:
    docs = _render("default-values.yaml", "api.enabled=true", release="rollout-gate", namespace="rollout-gate")
    env = _env(_container(docs, "api"))
    (service,) = [d for d in docs if d["kind"] == "Service" and _component(d) == "worker"]
    (port,) = service["spec"]["ports"]
    assert env["ROLLOUT_GATE_WORKER_URLS"] == \
        f"http://{service['metadata']['name']}.rollout-gate.svc:{port['port']}"


def test_notification_urls_come_from_a_secret_and_open_their_egress() -> None:
    docs = _render("default-values.yaml", "notifications.existingSecret=notify", "notifications.actions=halt")
    env = _env(_container(docs))
    for var, key in (("ROLLOUT_GATE_NOTIFY_SLACK_URLS", "slack-urls"), ("ROLLOUT_GATE_NOTIFY_WEBHOOK_URLS", "webhook-urls")):
        assert env[var] == {"secretKeyRef": {"name": "notify", "key": key, "optional": True}}
    assert env["ROLLOUT_GATE_NOTIFY_ACTIONS"] == "halt"
    *_, webhooks = _objects(docs, "NetworkPolicy")["worker"]["spec"]["egress"]
    assert _ports(webhooks) == [(443, "TCP")] and "to" not in webhooks
    plain = _env(_container(_render("default-values.yaml")))
    assert not any(k.startswith("ROLLOUT_GATE_NOTIFY_") for k in plain)


def test_notification_values_are_checked_by_the_schema() -> None:
    for bad in (r"notifications.actions=halt\,rollback", "notifications.slackUrl=x"):
        argv = [_helm(), "template", "rg", str(CHART), "--set", bad]
        result = run(argv)
        assert result.returncode != 0 and "notifications" in result.stderr, (bad, result.stderr)


def test_the_otel_bridge_runs_the_cli_with_the_values_mapping() -> None:
    """The rendered arguments are what `rollout-gate otel-bridge` parses into the intended bridge."""
    from connectors.otel import parse_args

    docs = _render(ALL)
    values = load_yaml(CHART / "ci" / ALL)
    container = _container(docs, "otel-bridge")
    assert container["args"][0] == "otel-bridge"
    env = _env(container)
    bridge, _ = parse_args([*container["args"][1:], "--bootstrap", env["ROLLOUT_GATE_KAFKA_BOOTSTRAP"]])
    assert [(s.topic, s.signal, s.encoding) for s in bridge.sources.values()] == [("otel.spans", "traces", "otlp_json")]
    assert (bridge.events_topic, bridge.dlq_topic) == ("rollout.events", "rollout.events.dlq")
    assert dict(bridge.mapping.arms) == values["otelBridge"]["arms"]
    assert bridge.mapping.cost_attribute == "llm.cost_usd" and bridge.mapping.rollout_attribute == "rollout.id"
    assert container["ports"] == [{"name": "metrics", "containerPort": 9102, "protocol": "TCP"}]
    assert container["args"][container["args"].index("--metrics-port") + 1] == "9102"
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert _selects(monitor["spec"]["selector"]["matchLabels"], _pod_labels(_objects(docs, "Deployment")["otel-bridge"]))
    assert not _selects(monitor["spec"]["selector"]["matchLabels"], _pod_labels(_objects(docs, "Deployment")["worker"]))
    assert "otel-bridge" not in _objects(_render("default-values.yaml"), "Deployment")

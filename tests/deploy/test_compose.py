"""docker-compose.yml, checked without a Docker engine: structure, Kafka KRaft settings, the
worker's environment against its settings model, and every file the stack mounts or builds from.
`docker compose config` runs too when the Compose v2 plugin is installed (it needs no engine)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.deploy.conftest import ROOT, compose_cli, load_yaml, run
from tests.deploy.test_settings_contract import assert_known_settings

COMPOSE = ROOT / "docker-compose.yml"
TOPICS = {
    "ROLLOUT_GATE_EVENTS_TOPIC": "rollout.events",
    "ROLLOUT_GATE_DECISIONS_TOPIC": "rollout.decisions",
    "ROLLOUT_GATE_DLQ_TOPIC": "rollout.events.dlq",
    "ROLLOUT_GATE_COMMANDS_TOPIC": "rollout.commands",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, rest = item.split("://")
        host, _, port = rest.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_services(services: dict[str, Any]) -> None:
    assert {"kafka", "worker", "router", "api", "prometheus", "grafana"} <= set(services)


def test_kafka_is_apache_kafka_4_in_kraft_mode(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", kafka["image"]), kafka["image"]
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node_id = env["KAFKA_NODE_ID"]
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    assert set(listeners) == set(protocols), "every listener needs a security protocol"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    # The quorum voter is this node, on the controller listener's port, by the container's hostname.
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == node_id
    assert voter == f"{kafka['hostname']}:{listeners[controller][1]}"
    # One broker: every replication factor and min ISR is 1.
    for key, value in env.items():
        if key.endswith(("_REPLICATION_FACTOR", "_MIN_ISR", "MIN_INSYNC_REPLICAS")):
            assert value == "1", f"{key}={value} on a single broker"
    for key in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"):
        assert key in env
    # The image's start script requires CLUSTER_ID in KRaft mode; Kafka wants a base64url UUID.
    cluster_id = env["CLUSTER_ID"]
    raw = base64.urlsafe_b64decode(cluster_id + "==")
    assert len(raw) == 16 and base64.urlsafe_b64encode(raw).decode().rstrip("=") == cluster_id
    # Host clients reach the EXTERNAL listener on the worker's default bootstrap 127.0.0.1:19092.
    host_ports = {p.rsplit(":", 1)[1] for p in kafka["ports"]}
    external = [name for name, (host, _) in advertised.items() if host in {"127.0.0.1", "localhost"}]
    assert external and str(advertised[external[0]][1]) in host_ports
    assert advertised[external[0]][1] == 19092
    assert "healthcheck" in kafka


def test_containers_reach_kafka_on_its_internal_listener(services: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    internal = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    for name in ("worker", "router", "api"):
        bootstrap = services[name]["environment"]["ROLLOUT_GATE_KAFKA_BOOTSTRAP"]
        assert bootstrap == f"{internal[0]}:{internal[1]}", name
        assert services[name]["environment"]["ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"


def test_worker(services: dict[str, Any]) -> None:
    worker = services["worker"]
    build = worker["build"]
    assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
    assert worker["command"] == ["worker"]
    env = {k: str(v) for k, v in worker["environment"].items()}
    for key, topic in TOPICS.items():
        assert env[key] == topic
    assert_known_settings(env, where="docker-compose.yml worker")
    port = env["ROLLOUT_GATE_METRICS_PORT"]
    assert f"127.0.0.1:{port}:{port}" in worker["ports"]
    assert f"http://127.0.0.1:{port}/readyz" in json.dumps(worker["healthcheck"]["test"])
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    assert env["ROLLOUT_GATE_POLICY_FILE"] in mounts, "the policy file must be mounted where POLICY_FILE points"
    assert env["ROLLOUT_GATE_DATA_DIR"] in mounts, "state belongs in a volume"


def test_policy_file_is_a_valid_policy(services: dict[str, Any]) -> None:
    from gates.policy import load_policy

    worker = services["worker"]
    target = worker["environment"]["ROLLOUT_GATE_POLICY_FILE"]
    (source,) = [v.split(":")[0] for v in worker["volumes"] if v.split(":")[1] == target]
    policy = load_policy(ROOT / source)
    assert policy.for_rollout("chat-v7").shadow.enabled


def test_connectors_share_only_kafka_settings(services: dict[str, Any]) -> None:
    for name in ("router", "api"):
        env = services[name]["environment"]
        assert all(k.startswith("ROLLOUT_GATE_") for k in env), name
    assert services["router"]["command"][0] == "router"
    flags = " ".join(services["router"]["command"])
    for url_flag in ("--baseline-url=http://baseline:", "--canary-url=http://canary:"):
        assert url_flag in flags
    for upstream in ("baseline", "canary"):
        port = re.search(rf"--{upstream}-url=http://{upstream}:(\d+)", flags).group(1)
        assert port in services[upstream]["command"], f"{upstream} does not listen on {port}"


def test_router_command_exists_in_the_cli(services: dict[str, Any]) -> None:
    """compose runs `rollout-gate router`; the CLI (stream/commands.py) must register it."""
    from stream import commands, offline, operator  # noqa: F401  (registers the commands)
    from stream import services as _services
    from stream.cli import app

    assert _services.router is not None
    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    used = {s["command"][0] for s in services.values() if s.get("image") == "rollout-gate:local" and "entrypoint" not in s}
    assert used - names == set(), f"compose runs rollout-gate commands the CLI lacks: {sorted(used - names)}"


def test_router_flags_parse(services: dict[str, Any]) -> None:
    """The router service's flags are accepted by the router's own parser."""
    from connectors.router import parse_args

    command = services["router"]["command"]
    assert command[0] == "router"
    config, _, _ = parse_args(list(command[1:]))
    assert config.rollout_id


def test_python_modules_used_as_entrypoints_exist(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        entry = svc.get("entrypoint")
        if entry and entry[:2] == ["python", "-m"]:
            module = ROOT / (entry[2].replace(".", "/") + ".py")
            assert module.is_file(), f"{name}: {entry[2]} does not exist"


def test_only_the_worker_builds_and_the_others_use_its_image(services: dict[str, Any]) -> None:
    image = services["worker"]["image"]
    for name, svc in services.items():
        if svc.get("image") == image and name != "worker":
            assert "build" not in svc and svc.get("pull_policy") == "never", name
            depends = svc.get("depends_on", {})
            assert "worker" in depends, f"{name} must start after the image is built"


def test_every_bind_mount_source_exists(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"


def test_ports_are_published_on_loopback_only(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from the network"


def test_prometheus_and_grafana_mount_the_artifacts(services: dict[str, Any]) -> None:
    prom = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    grafana_sources = {v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert {"./deploy/grafana/provisioning", "./deploy/grafana/rollout-gate.json"} <= grafana_sources


def test_docker_compose_config() -> None:
    """The Compose v2 model loader and schema validation (no engine needed)."""
    argv = [*compose_cli(), "-f", str(COMPOSE), "config", "--format", "json"]
    result = run(argv, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["services"]["worker"]["command"] == ["worker"]
    assert model["services"]["worker"]["environment"]["ROLLOUT_GATE_TOPIC_PARTITIONS"] == "1"

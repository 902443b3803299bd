"""Dockerfile, checked without a Docker engine: its instructions, the files it copies and the
console script it runs; hadolint when installed."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.deploy.conftest import ROOT, require_tool, run

DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _args() -> dict[str, str]:
    return {k: v for instr, rest in _instructions() if instr == "ARG" and "=" in rest for k, v in [rest.split("=", 1)]}


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instr, rest in _instructions():
        if instr == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instr, rest))
    return stages


def test_base_image_is_python_311_slim() -> None:
    args = _args()
    for stage in _stages():
        image = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert image == "python:3.11-slim", image


def test_runtime_runs_the_console_script_as_non_root() -> None:
    runtime = _stages()[-1]
    users = [rest for instr, rest in runtime if instr == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-zero uid lets Kubernetes enforce runAsNonRoot"
    entry = [json.loads(rest) for instr, rest in runtime if instr == "ENTRYPOINT"]
    cmd = [json.loads(rest) for instr, rest in runtime if instr == "CMD"]
    assert entry[-1] == ["rollout-gate"]
    assert cmd[-1] == ["worker"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "rollout-gate" in scripts


def test_chart_runs_as_the_image_user() -> None:
    from tests.deploy.conftest import CHART, load_yaml

    runtime = _stages()[-1]
    uid = [rest for instr, rest in runtime if instr == "USER"][-1].split(":")[0]
    values = load_yaml(CHART / "values.yaml")
    assert str(values["podSecurityContext"]["runAsUser"]) == uid


def test_installs_the_project_with_pip_from_what_it_copies() -> None:
    text = " ".join(rest for _, rest in _instructions())
    assert "pip wheel" in text and "pip install" in text
    copied = set()
    for instr, rest in _instructions():
        if instr == "COPY" and "--from" not in rest:
            *sources, _dest = rest.split()
            copied.update(s.rstrip("/") for s in sources if not s.startswith("--"))
    assert "pyproject.toml" in copied
    for source in copied:
        if "*" not in source:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"the distribution includes {package}/ but the Dockerfile does not copy it"


def test_exposes_the_metrics_port() -> None:
    exposed = " ".join(rest for instr, rest in _instructions() if instr == "EXPOSE").split()
    assert "9108" in exposed


def test_hadolint() -> None:
    hadolint = require_tool("hadolint")
    result = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("needle", ["--no-install-recommends", "rm -rf /var/lib/apt/lists/*"])
def test_apt_hygiene(needle: str) -> None:
    assert needle in DOCKERFILE.read_text()


def test_installs_the_locked_versions() -> None:
    """The image installs what uv.lock pins, with pip checking the lock's hashes, never a fresh resolve."""
    text = " ".join(rest for _, rest in _instructions())
    copied = [rest for instr, rest in _instructions() if instr == "COPY" and "--from" not in rest]
    assert any("uv.lock" in rest.split() for rest in copied)
    assert "uv export --frozen" in text
    assert "--require-hashes" in text
    # the image runs every command of the CLI, the OpenTelemetry bridge's protobuf decoder included;
    # test tools and LiteLLM (which users add to their proxy's image) stay out
    export = text[text.index("uv export"):].split("&&")[0]
    assert "--extra otel" in export and "dev" not in export and "litellm" not in export
    uv_pin = [rest for instr, rest in _instructions() if instr == "ARG" and rest.startswith("UV_VERSION=")]
    setup = (ROOT / "scripts" / "setup").read_text()
    assert uv_pin and f"UV_VERSION={uv_pin[0].split('=', 1)[1]}" in setup, "the image and scripts/setup pin one uv"

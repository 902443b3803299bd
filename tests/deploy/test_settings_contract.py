"""The worker's environment, as docker-compose.yml and the Helm chart set it, against the worker's
settings model (stream/settings.py): every ROLLOUT_GATE_* name must be a setting and every value
must pass its validation. File settings point into the container, so they are checked by name only.
"""

from __future__ import annotations

from typing import Any

import pytest

PREFIX = "ROLLOUT_GATE_"
# The settings the brief fixes; the model may have more (tuning knobs), never fewer.
DOCUMENTED = {
    "KAFKA_BOOTSTRAP",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
    "EVENTS_TOPIC",
    "DECISIONS_TOPIC",
    "DLQ_TOPIC",
    "COMMANDS_TOPIC",
    "POLICY_FILE",
    "METRICS_PORT",
    "APP_ID",
    "DATA_DIR",
}
FILE_SETTINGS = {"POLICY_FILE", "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"}


def _settings_class() -> Any:
    try:
        from stream.settings import Settings
    except ImportError:  # the worker is built in stream/ by another team; fall back to the brief
        return None
    return Settings


def known_names() -> set[str]:
    settings = _settings_class()
    if settings is None:
        return set(DOCUMENTED)
    return {name.upper() for name in settings.model_fields}


def assert_known_settings(env: dict[str, str], *, where: str) -> None:
    names = {k.removeprefix(PREFIX) for k in env if k.startswith(PREFIX)}
    unknown = sorted(names - known_names())
    assert not unknown, f"{where}: {[PREFIX + n for n in unknown]} are not settings of the worker"


def assert_valid_settings(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, *, where: str) -> None:
    """Loads the worker's Settings from ``env`` (file settings replaced by None)."""
    assert_known_settings(env, where=where)
    settings_cls = _settings_class()
    if settings_cls is None:
        pytest.skip("stream.settings is not importable; names checked against the documented list only")
    from stream.settings import SettingsError, load_settings

    for key in list(__import__("os").environ):
        if key.startswith(PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(PREFIX) and key.removeprefix(PREFIX) not in FILE_SETTINGS:
            monkeypatch.setenv(key, value)
    overrides = {name.lower(): None for name in FILE_SETTINGS if PREFIX + name in env}
    try:
        load_settings(**overrides)
    except SettingsError as exc:
        pytest.fail(f"{where}: the worker would refuse these settings:\n{exc}")


def test_the_model_has_every_documented_setting() -> None:
    if _settings_class() is None:
        pytest.skip("stream.settings is not importable")
    assert known_names() >= DOCUMENTED, f"missing: {sorted(DOCUMENTED - known_names())}"


def test_compose_worker_env_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.deploy.conftest import ROOT, load_yaml

    env = {k: str(v) for k, v in load_yaml(ROOT / "docker-compose.yml")["services"]["worker"]["environment"].items()}
    env["ROLLOUT_GATE_TOPIC_PARTITIONS"] = "1"  # compose's ${...:-1} default, as `docker compose config` shows
    assert_valid_settings(env, monkeypatch, where="docker-compose.yml worker")

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import faust
import pytest
from pydantic import ValidationError

from stream.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("ROLLOUT_GATE_"):
            monkeypatch.delenv(k)


def test_defaults() -> None:
    s = load_settings()
    assert s.kafka_bootstrap == "127.0.0.1:19092"
    assert (s.events_topic, s.decisions_topic, s.dlq_topic, s.commands_topic) == (
        "rollout.events", "rollout.decisions", "rollout.events.dlq", "rollout.commands")
    assert s.metrics_port == 9108
    assert s.app_id == "rollout-gate"
    assert s.topic_partitions == 1
    assert s.aiokafka_auth() == {"security_protocol": "PLAINTEXT"}
    assert s.faust_credentials() is None


def test_env_prefix_and_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_GATE_EVENTS_TOPIC", "ev")
    monkeypatch.setenv("ROLLOUT_GATE_TOPIC_PARTITIONS", "3")
    s = load_settings()
    assert s.events_topic == "ev" and s.topic_partitions == 3
    with pytest.raises(ValidationError):
        s.events_topic = "other"  # type: ignore[misc]


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL", "TLS")
    monkeypatch.setenv("ROLLOUT_GATE_METRICS_PORT", "99999")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_CAFILE", "/nonexistent/ca.pem")
    with pytest.raises(SettingsError) as err:
        load_settings()
    msg = str(err.value)
    assert "ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT' or " \
           "'SASL_SSL'" in msg
    assert "ROLLOUT_GATE_METRICS_PORT: Input should be less than or equal to 65535" in msg
    assert "ROLLOUT_GATE_KAFKA_SSL_CAFILE: Path does not point to a file" in msg


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match="ROLLOUT_GATE_KAFKA_SASL_USERNAME and ROLLOUT_GATE_KAFKA_SASL_PASSWORD"):
        load_settings()


def _ca(tmp_path: Path) -> Path:
    # any PEM certificate works as a CA bundle for building the context
    import certifi  # shipped with pip/requests; fall back to the system bundle

    return Path(certifi.where())


def test_sasl_ssl_produces_faust_and_aiokafka_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = Path(ssl.get_default_verify_paths().cafile or "")
    if not ca.is_file():
        ca = _ca(tmp_path)
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SASL_USERNAME", "gate")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_CAFILE", str(ca))
    s = load_settings()
    assert "s3cret" not in repr(s)
    creds = s.faust_credentials()
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol.value == "SASL_SSL"
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert (creds.username, creds.password) == ("gate", "s3cret")
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED
    auth = s.aiokafka_auth()
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "gate" and auth["sasl_plain_password"] == "s3cret"
    assert isinstance(auth["ssl_context"], ssl.SSLContext)
    # what faust hands to aiokafka for its own producer and consumer
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    fa = credentials_to_aiokafka_auth(creds)
    assert fa["security_protocol"] == "SASL_SSL" and fa["sasl_mechanism"] == "SCRAM-SHA-512"


def test_ssl_only_uses_ssl_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL", "SSL")
    creds = Settings().faust_credentials()
    assert isinstance(creds, faust.SSLCredentials)
    assert creds.protocol.value == "SSL"


def test_cert_and_key_go_together(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_CERTFILE", str(cert))
    with pytest.raises(SettingsError, match="KAFKA_SSL_CERTFILE and ROLLOUT_GATE_KAFKA_SSL_KEYFILE go together"):
        load_settings()


def test_policy_errors_name_the_variable(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("defaults:\n  steps: [10, 5]\n")
    with pytest.raises(SettingsError, match=r"^ROLLOUT_GATE_POLICY_FILE: .*steps"):
        Settings(policy_file=bad).load_policy()


def test_worker_command_fails_cleanly_without_traceback(tmp_path: Path) -> None:
    env = {"ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL": "FOO", "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "stream.worker_main"], env=env, capture_output=True,
                       text=True, timeout=60, cwd=Path(__file__).resolve().parents[3])
    assert r.returncode == 2
    assert "ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL: Input should be" in r.stderr
    assert "Traceback" not in r.stderr

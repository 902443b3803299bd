from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest

from connectors.config import KafkaConfig


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rollout-gate",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    return cert, key


def test_mutual_tls_settings_load_the_client_certificate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_CAFILE", str(cert))
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_CERTFILE", str(cert))
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_KEYFILE", str(key))
    config = KafkaConfig.from_env()
    assert (config.ssl_certfile, config.ssl_keyfile) == (str(cert), str(key))
    context = config.client_kwargs()["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    # the chain is really loaded: a key that does not belong to the certificate is refused
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = self_signed(other)
    with pytest.raises(ssl.SSLError):
        KafkaConfig(security_protocol="SSL", ssl_certfile=str(cert), ssl_keyfile=str(other_key)).client_kwargs()


def test_certificate_and_key_go_together(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    monkeypatch.setenv("ROLLOUT_GATE_KAFKA_SSL_CERTFILE", str(cert))
    with pytest.raises(ValueError, match="SSL_CERTFILE and ROLLOUT_GATE_KAFKA_SSL_KEYFILE go together"):
        KafkaConfig.from_env()


def test_plaintext_has_no_tls_context() -> None:
    assert "ssl_context" not in KafkaConfig().client_kwargs()

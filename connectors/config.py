"""Connection settings shared by the publisher, the subscriber and the command sink."""

from __future__ import annotations

import os
import ssl
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"]

DEFAULT_BOOTSTRAP = "127.0.0.1:19092"
EVENTS_TOPIC = "rollout.events"
DECISIONS_TOPIC = "rollout.decisions"
COMMANDS_TOPIC = "rollout.commands"


class KafkaConfig(BaseModel):
    """How to reach the cluster. ``sasl_password`` is a SecretStr so it never lands in a log line."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    # mutual TLS: the client's certificate chain and its private key (PEM files)
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    client_id: str = "rollout-gate-connector"

    @classmethod
    def from_env(cls, prefix: str = "ROLLOUT_GATE_KAFKA_", **overrides: Any) -> KafkaConfig:
        """``ROLLOUT_GATE_KAFKA_BOOTSTRAP``, ``..._SECURITY_PROTOCOL``, ``..._SASL_MECHANISM``,
        ``..._SASL_USERNAME``, ``..._SASL_PASSWORD``, ``..._SSL_CAFILE``, ``..._SSL_CERTFILE``,
        ``..._SSL_KEYFILE`` (the worker's variables)."""
        env = {
            "bootstrap_servers": os.environ.get(prefix + "BOOTSTRAP"),
            "security_protocol": os.environ.get(prefix + "SECURITY_PROTOCOL"),
            "sasl_mechanism": os.environ.get(prefix + "SASL_MECHANISM"),
            "sasl_username": os.environ.get(prefix + "SASL_USERNAME"),
            "sasl_password": os.environ.get(prefix + "SASL_PASSWORD"),
            "ssl_cafile": os.environ.get(prefix + "SSL_CAFILE"),
            "ssl_certfile": os.environ.get(prefix + "SSL_CERTFILE"),
            "ssl_keyfile": os.environ.get(prefix + "SSL_KEYFILE"),
        }
        values: dict[str, Any] = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        config = cls.model_validate(values)  # validates the Literal choices with a clear error
        if (config.ssl_certfile is None) != (config.ssl_keyfile is None):
            raise ValueError(f"{prefix}SSL_CERTFILE and {prefix}SSL_KEYFILE go together")
        return config

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments understood by every aiokafka client (producer, consumer, admin)."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
            "client_id": self.client_id,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            context = ssl.create_default_context(cafile=self.ssl_cafile)
            if self.ssl_certfile:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile)
            kw["ssl_context"] = context
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password is not None else None
            )
        return kw


def as_config(kafka: KafkaConfig | str | None) -> KafkaConfig:
    if kafka is None:
        return KafkaConfig.from_env()
    if isinstance(kafka, str):
        return KafkaConfig(bootstrap_servers=kafka)
    return kafka

"""The worker's settings: one pydantic-settings root read from ``ROLLOUT_GATE_*`` variables, frozen.

A bad value fails at start with one line per problem that names the variable, e.g.
``ROLLOUT_GATE_KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT', 'SSL', ...`` (no traceback).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gates.policy import PolicyError, PolicySet, load_policy

ENV_PREFIX = "ROLLOUT_GATE_"
DEFAULT_MAX_LIVE_ROLLOUTS = 1000

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each offending environment variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # Kafka connection
    kafka_bootstrap: str = Field("127.0.0.1:19092", min_length=1, description="host:port[,host:port...]")
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: FilePath | None = None
    kafka_ssl_certfile: FilePath | None = None
    kafka_ssl_keyfile: FilePath | None = None
    kafka_replication_factor: int = Field(1, ge=1, description="for the topics this service creates")

    # Topics
    events_topic: str = Field("rollout.events", min_length=1)
    decisions_topic: str = Field("rollout.decisions", min_length=1)
    dlq_topic: str = Field("rollout.events.dlq", min_length=1)
    commands_topic: str = Field("rollout.commands", min_length=1)
    topic_partitions: int = Field(1, ge=1, description="events, commands and the state changelog share it")
    events_retention_seconds: int = Field(7 * 86400, ge=60)
    dlq_retention_seconds: int = Field(14 * 86400, ge=60)

    # The service
    policy_file: FilePath | None = None
    app_id: str = Field("rollout-gate", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    data_dir: Path = Path("rollout-gate-data")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9108, ge=0, le=65535, description="0 picks a free port")
    metrics_ended_retention_seconds: float = Field(
        86400.0, ge=0, description="how long a halted or complete rollout's series stay on /metrics")
    tick_seconds: float = Field(1.0, gt=0, le=300)
    batch_max_messages: int = Field(1000, ge=1, description="most events-topic messages per fetch; "
                                    "a batch folds up to 8 fetches")
    batch_within_seconds: float = Field(0.05, gt=0, le=10)
    fetch_max_wait_ms: int = Field(100, ge=1, le=5000, description="broker wait of an idle fetch")
    max_fetch_bytes: int = Field(8 * 2**20, ge=2**16, description="per partition and fetch")
    commit_interval_seconds: float = Field(2.8, gt=0, description="consumer offset commits (Faust)")
    # A worker restarted after a crash waits this long for the dead member's partitions (Faust's
    # default is 60 s; the broker's group.min.session.timeout.ms is 6 s).
    session_timeout_seconds: float = Field(10.0, ge=6, le=300)

    # Operators: where the CLI and the verdict API find the workers' live views (comma-separated
    # base URLs of the workers' metrics ports; each worker serves the rollouts of its partitions).
    worker_urls: str = Field("http://127.0.0.1:9108", min_length=1)

    # Notifications of decisions (stream/notify.py): comma-separated webhook URLs. Slack-compatible
    # sinks get {"text": ...}; generic sinks get {"text": ..., "decision": <the full decision>}.
    notify_slack_urls: str = ""
    notify_webhook_urls: str = ""
    notify_actions: str = Field("halt,hold,promote,complete", description="decision actions to notify")
    notify_retries: int = Field(5, ge=0, le=20, description="retries after the first attempt")
    notify_backoff_seconds: float = Field(1.0, gt=0, le=60, description="first retry delay; doubles each retry")
    notify_backoff_max_seconds: float = Field(60.0, gt=0, le=3600)
    notify_timeout_seconds: float = Field(5.0, gt=0, le=60, description="per HTTP attempt")
    notify_queue_size: int = Field(1000, ge=1, description="notifications waiting per sink; more are dropped")

    # Admission: what a publisher sending endless new rollout ids can make the worker hold
    max_live_rollouts: int = Field(DEFAULT_MAX_LIVE_ROLLOUTS, ge=1, description="rollouts neither halted nor complete; events of "
                                   "a new rollout beyond it go to the dead-letter topic (gates.admission)")
    metrics_max_rollouts: int = Field(2000, ge=1, description="rollouts with series on /metrics")

    # Trust. Operator commands are signed (HMAC-SHA256, gates.commands); without a key they are
    # refused unless COMMANDS_ALLOW_UNSIGNED is set (development only). The API token guards the
    # HTTP API's mutating calls (rollout-gate api). Both are secrets: never logged, never in repr.
    command_hmac_key: SecretStr | None = Field(None, min_length=16)
    commands_allow_unsigned: bool = False
    api_token: SecretStr | None = Field(None, min_length=16)

    @field_validator("command_hmac_key", "api_token", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, v: Any) -> Any:
        # an empty variable (a chart or compose file leaving it blank) means "not configured"
        return None if v == "" else v

    @model_validator(mode="after")
    def _security_consistent(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD are required "
                f"with {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SSL_CERTFILE and {ENV_PREFIX}KAFKA_SSL_KEYFILE go together"
            )
        return self

    @property
    def worker_base_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.worker_urls.split(",") if u.strip()]

    @property
    def command_key(self) -> bytes | None:
        return None if self.command_hmac_key is None else self.command_hmac_key.get_secret_value().encode()

    @property
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",") if s.strip()]

    @property
    def uses_ssl(self) -> bool:
        return self.kafka_security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for SSL and SASL_SSL (system CAs unless a CA file is given)."""
        if not self.uses_ssl:
            return None
        from aiokafka.helpers import create_ssl_context

        context: ssl.SSLContext = create_ssl_context(
            cafile=self.kafka_ssl_cafile,
            certfile=self.kafka_ssl_certfile,
            keyfile=self.kafka_ssl_keyfile,
        )
        return context

    def aiokafka_auth(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka clients (producer, consumer, admin)."""
        out: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.uses_ssl:
            out["ssl_context"] = self.ssl_context()
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None
            out["sasl_mechanism"] = self.kafka_sasl_mechanism
            out["sasl_plain_username"] = self.kafka_sasl_username
            out["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        return out

    def faust_credentials(self) -> Any:
        """``broker_credentials`` for faust: None, SSLCredentials or SASLCredentials."""
        import faust

        context = self.ssl_context()
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None
            # faust derives SASL_SSL from the presence of the context.
            return faust.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password.get_secret_value(),
                mechanism=self.kafka_sasl_mechanism,
                ssl_context=context,
            )
        if context is not None:
            return faust.SSLCredentials(context)
        return None

    def load_policy(self) -> PolicySet:
        try:
            return load_policy(self.policy_file)
        except PolicyError as exc:
            raise SettingsError(f"{ENV_PREFIX}POLICY_FILE: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        msg = err["msg"].removeprefix("Value error, ")
        if loc:
            lines.append(f"{ENV_PREFIX}{loc[0].upper()}: {msg}")
        else:
            lines.append(msg)
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and ``overrides``); raises SettingsError with a readable message."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None

"""The one settings object, read from ``FSSTREAM_*`` environment variables.

Frozen so that nothing changes configuration behind a running worker; secrets
are ``SecretStr`` so they never show in logs, reprs or ``fsstream config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Runtime configuration of every fsstream process."""

    model_config = SettingsConfigDict(env_prefix="FSSTREAM_", frozen=True, extra="ignore")

    # Kafka connection.
    broker_url: str = Field("kafka://127.0.0.1:9092", description="Comma-separated brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_keyfile_password: SecretStr | None = None

    # Topics.
    app_id: str = "fsstream"
    topic_raw: str = "fs.events.raw"
    topic_definitions: str = "fs.definitions"
    topic_events: str = "fs.events"
    topic_dlq: str = "fs.events.dlq"
    raw_partitions: int = Field(8, ge=1)
    events_partitions: int = Field(8, ge=1)
    definitions_partitions: int = Field(1, ge=1)
    dlq_partitions: int = Field(1, ge=1)
    replication_factor: int = Field(1, ge=1)

    raw_retention_s: float = Field(
        7 * 86_400.0, gt=0, description="Raw topic retention; replays reach back this far."
    )

    # Warehouse.
    warehouse_url: str = Field("file://./warehouse", description="file://DIR or s3://BUCKET/PREFIX")
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    org_id: str = "o-local"

    # Semantics.
    reorder_grace_s: float = Field(5.0, ge=0)
    view_ttl_s: float = Field(86_400.0, gt=0)
    allowed_lateness_s: float = Field(3_600.0, ge=0)
    max_event_age_s: float = Field(30 * 86_400.0, gt=0, description="Older events go to the DLQ.")
    max_clock_skew_s: float = Field(
        86_400.0, gt=0, description="Events this far ahead go to the DLQ."
    )
    max_record_bytes: int = Field(1_048_576, gt=0)
    tombstone_mode: Literal["rewrite", "append"] = "rewrite"

    # Budgets and intervals.
    sink_max_rows: int = Field(
        500_000, gt=0, description="Rows buffered per file before it is written."
    )
    sink_max_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Buffered bytes over all hours."
    )
    sink_flush_interval_s: float = Field(60.0, gt=0)
    seal_check_interval_s: float = Field(30.0, gt=0)
    view_cache_size: int = Field(50_000, gt=0, description="View states kept decoded in memory.")
    raw_cache_bytes: int = Field(
        128 * 1024 * 1024,
        gt=0,
        description="Memory for recent decoded raw records, kept for building rows.",
    )

    # Data Export bundles and the v1 export API.
    export_period_s: float = Field(
        86_400.0, ge=1_800, le=86_400, description="Bundle length; it must divide a day."
    )
    export_delay_s: float = Field(86_400.0, ge=0, description="Availability after the period.")
    export_api_keys: SecretStr | None = Field(None, description="API keys, comma-separated.")
    export_port: int = Field(6070, ge=0, le=65535)
    export_integer_ids: bool = Field(False, description="List bundle Ids as JSON numbers.")

    # Process.
    data_dir: Path = Path("./fsstream-data")
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    log_level: Literal["debug", "info", "warn", "error"] = "info"
    static_member_id: str | None = Field(
        None, description="group.instance.id: a restarted worker keeps its partitions."
    )
    session_timeout_s: float = Field(
        30.0, gt=0, description="How long a silent worker keeps its partitions."
    )
    reorder_batch_records: int = Field(
        2_000, gt=0, description="Raw records taken per transaction of the reorder worker."
    )
    dedup_horizon_s: float | None = Field(
        None,
        gt=0,
        description="How long an expired view still drops redelivered events"
        " (default: the longer of RAW_RETENTION_S and MAX_EVENT_AGE_S).",
    )
    crash_point: str | None = Field(
        None,
        pattern=r"^[a-z-]+:[0-9]+$",
        description="Resilience testing: 'POINT:N' makes the worker SIGKILL itself the Nth"
        " time it reaches POINT (reorder: after-send, before-commit, after-commit;"
        " sink: after-upload, after-record, after-rewrite).",
    )

    @field_validator("broker_url")
    @classmethod
    def _brokers_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("broker_url is empty")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL needs FSSTREAM_SASL_USERNAME and FSSTREAM_SASL_PASSWORD")
        return self

    @model_validator(mode="after")
    def _grace_within_ttl(self) -> Settings:
        if self.reorder_grace_s >= self.view_ttl_s:
            raise ValueError("REORDER_GRACE_S must be shorter than VIEW_TTL_S")
        return self

    @property
    def bootstrap_servers(self) -> list[str]:
        """Brokers as host:port, without the kafka:// scheme."""
        return [
            part.strip().removeprefix("kafka://")
            for part in self.broker_url.split(",")
            if part.strip()
        ]

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection keyword arguments shared by aiokafka producers, consumers and admin."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            options["ssl_context"] = create_ssl_context(
                cafile=str(self.ssl_cafile) if self.ssl_cafile else None,
                certfile=str(self.ssl_certfile) if self.ssl_certfile else None,
                keyfile=str(self.ssl_keyfile) if self.ssl_keyfile else None,
                password=(
                    self.ssl_keyfile_password.get_secret_value()
                    if self.ssl_keyfile_password
                    else None
                ),
            )
        if self.security_protocol.startswith("SASL"):
            assert self.sasl_password is not None
            options["sasl_mechanism"] = self.sasl_mechanism
            options["sasl_plain_username"] = self.sasl_username
            options["sasl_plain_password"] = self.sasl_password.get_secret_value()
        return options

    @property
    def topic_views_changelog(self) -> str:
        """The reorder worker's view-state changelog (compacted, one partition per raw one)."""
        return f"{self.app_id}-reorder-views-changelog"

    @property
    def dedup_horizon_ms(self) -> int:
        """How long after its last activity an expired view still recognises its events."""
        seconds = self.dedup_horizon_s or max(self.raw_retention_s, self.max_event_age_s)
        return int(seconds * 1000)

    @property
    def export_keys(self) -> tuple[str, ...]:
        """The configured export API keys."""
        if self.export_api_keys is None:
            return ()
        return tuple(self.export_api_keys.get_secret_value().replace(",", " ").split())

    def public_view(self) -> dict[str, Any]:
        """Every setting, with secrets masked, for printing."""
        return {
            key: ("**********" if isinstance(value, SecretStr) else value)
            for key, value in self.model_dump().items()
        }


def settings_from(overrides: Mapping[str, Any]) -> Settings:
    """Settings from the environment, with the given values (None ones ignored) on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})

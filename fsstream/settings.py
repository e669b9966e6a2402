"""The one settings object, read from ``FSSTREAM_*`` environment variables.

Frozen so that nothing changes configuration behind a running worker; secrets
are ``SecretStr`` so they never show in logs, reprs or ``fsstream config``, and a
validation error never quotes the values it was given. Everything that shapes object
keys (org id, bucket, prefix) is checked here, so a bad value stops a process at
start rather than at its first write.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ORG_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""An org id is one path part, ``fullstory_<org_id>``, that no reader mistakes for more."""
S3_BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
S3_PREFIX_MAX_BYTES = 512
"""Half of S3's 1024-byte key limit; the warehouse's own keys stay under 300 bytes."""
_PREFIX_AVOID = re.compile(r'[\x00-\x1f\x7f\\{}^%`\[\]"<>~#|*?]')
"""Characters S3 advises against in keys, and glob characters a query's path would misread."""


def _check_s3_location(location: str) -> None:
    bucket, _, prefix = location.partition("/")
    if not S3_BUCKET_PATTERN.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            "the S3 bucket name must be 3 to 63 lowercase letters, digits, dots or hyphens,"
            " starting and ending with a letter or digit"
        )
    prefix = prefix.strip("/")
    if not prefix:
        return
    if len(prefix.encode()) > S3_PREFIX_MAX_BYTES:
        raise ValueError(f"the S3 prefix is longer than {S3_PREFIX_MAX_BYTES} bytes")
    if any(part in ("", ".", "..") for part in prefix.split("/")):
        raise ValueError("the S3 prefix has an empty, '.' or '..' path part")
    found = _PREFIX_AVOID.search(prefix)
    if found:
        raise ValueError(f"the S3 prefix holds the character {found.group()!r}")


class Settings(BaseSettings):
    """Runtime configuration of every fsstream process."""

    model_config = SettingsConfigDict(
        env_prefix="FSSTREAM_",
        frozen=True,
        extra="ignore",
        hide_input_in_errors=True,
        env_ignore_empty=True,
    )

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
    max_view_events: int = Field(
        100_000,
        gt=0,
        le=150_000,
        description="Events one view may hold; records past it go to the DLQ (ViewFull).",
    )
    max_stream_lead_s: float = Field(
        60.0,
        ge=0,
        description="A record stamped further ahead of the clock moves stream time only this far.",
    )
    tombstone_mode: Literal["rewrite", "append"] = "rewrite"

    # Budgets and intervals.
    sink_max_rows: int = Field(
        500_000, gt=0, description="Rows buffered per file before it is written."
    )
    sink_max_bytes: int = Field(
        256 * 1024 * 1024, gt=0, description="Buffered bytes over all hours."
    )
    sink_flush_interval_s: float = Field(60.0, gt=0)
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
    export_header_timeout_s: float = Field(
        10.0, gt=0, description="A client's time to send a request's line and headers."
    )
    export_keepalive_timeout_s: float = Field(
        15.0, gt=0, description="How long an idle keep-alive connection stays open."
    )
    export_max_connections: int = Field(
        256, ge=1, description="Connections served at once; more get 503."
    )

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

    @field_validator("org_id")
    @classmethod
    def _org_id_is_one_path_part(cls, value: str) -> str:
        if not ORG_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return value

    @field_validator("warehouse_url")
    @classmethod
    def _warehouse_url_names_a_store(cls, value: str) -> str:
        scheme, separator, location = value.partition("://")
        if scheme == "file" and separator and location:
            return value
        if scheme == "s3" and separator:
            _check_s3_location(location)
            return value
        raise ValueError("must be file://DIR or s3://BUCKET/PREFIX")

    @model_validator(mode="after")
    def _sasl_complete(self) -> Settings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL needs FSSTREAM_SASL_USERNAME and FSSTREAM_SASL_PASSWORD")
        return self

    @model_validator(mode="after")
    def _tls_files_load(self) -> Settings:
        if self.security_protocol in ("SSL", "SASL_SSL"):
            self.ssl_context()
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

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every Kafka connection; ValueError names an unusable file.

        A key is never decrypted by prompting on a terminal: without a password, an
        encrypted key is refused.
        """
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(self.ssl_cafile) if self.ssl_cafile else None
            )
        except (OSError, ssl.SSLError) as error:
            raise ValueError(
                f"FSSTREAM_SSL_CAFILE cannot be read as PEM: {_reason(error)}"
            ) from None
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("FSSTREAM_SSL_KEYFILE needs FSSTREAM_SSL_CERTFILE")
        if self.ssl_certfile:
            password = self.ssl_keyfile_password
            try:
                context.load_cert_chain(
                    str(self.ssl_certfile),
                    str(self.ssl_keyfile) if self.ssl_keyfile else None,
                    password.get_secret_value() if password else "",
                )
            except (OSError, ssl.SSLError) as error:
                raise ValueError(
                    "FSSTREAM_SSL_CERTFILE / FSSTREAM_SSL_KEYFILE: no usable PEM certificate and"
                    " key (is the key encrypted and FSSTREAM_SSL_KEYFILE_PASSWORD missing or"
                    f" wrong?): {_reason(error)}"
                ) from None
        return context

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection keyword arguments shared by aiokafka producers, consumers and admin."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.ssl_context()
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

    def secret_values(self) -> list[str]:
        """Every configured secret in clear, each export API key on its own as well."""
        values = [
            value.get_secret_value()
            for value in (getattr(self, name) for name in type(self).model_fields)
            if isinstance(value, SecretStr) and value.get_secret_value()
        ]
        return values + [key for key in self.export_keys if key not in values]

    def public_view(self) -> dict[str, Any]:
        """Every setting, with secrets masked, for printing."""
        return {
            key: ("**********" if isinstance(value, SecretStr) else value)
            for key, value in self.model_dump().items()
        }


def _reason(error: BaseException) -> str:
    """An OS or TLS error without its file name (the message names the setting)."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def settings_problems(error: ValidationError) -> list[str]:
    """One line per problem, naming the environment variable and never the value given."""
    problems = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        message = str(item["msg"]).removeprefix("Value error, ")
        field = ".".join(str(part) for part in item["loc"])
        problems.append(f"FSSTREAM_{field.upper()}: {message}" if field else message)
    return problems


def settings_from(overrides: Mapping[str, Any]) -> Settings:
    """Settings from the environment, with the given values (None ones ignored) on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})

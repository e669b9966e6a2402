import pytest
from pydantic import ValidationError

from fsstream.settings import Settings


def test_reads_fsstream_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSSTREAM_BROKER_URL", "kafka://b1:9092,kafka://b2:9093")
    monkeypatch.setenv("FSSTREAM_REORDER_GRACE_S", "2.5")
    monkeypatch.setenv("FSSTREAM_TOPIC_EVENTS", "custom.events")
    monkeypatch.setenv("FSSTREAM_ORG_ID", "o-123")
    settings = Settings()
    assert settings.bootstrap_servers == ["b1:9092", "b2:9093"]
    assert settings.reorder_grace_s == 2.5
    assert settings.topic_events == "custom.events"
    assert settings.org_id == "o-123"
    assert settings.topic_raw == "fs.events.raw"


def test_is_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError):
        settings.org_id = "other"  # type: ignore[misc]


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSSTREAM_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FSSTREAM_SASL_USERNAME", "svc")
    monkeypatch.setenv("FSSTREAM_SASL_PASSWORD", "hunter2-kafka")
    monkeypatch.setenv("FSSTREAM_S3_SECRET_ACCESS_KEY", "hunter2-s3")
    settings = Settings()
    for text in (repr(settings), str(settings), str(settings.public_view())):
        assert "hunter2" not in text
    options = settings.kafka_client_options()
    assert options["sasl_plain_password"] == "hunter2-kafka"
    assert options["security_protocol"] == "SASL_SSL"
    assert "ssl_context" in options


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSSTREAM_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(ValidationError, match="SASL needs"):
        Settings()


def test_rejects_nonsense(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSSTREAM_REORDER_GRACE_S", "-1")
    with pytest.raises(ValidationError):
        Settings()

import io
import logging
import sys
import threading
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from fsstream.cli import main
from fsstream.infra.runtime import (
    MASK,
    WIRE_LOGGERS,
    RedactingFormatter,
    Redactor,
    quiet_wire_loggers,
    redact_output,
)
from fsstream.settings import Settings, settings_problems
from tests.conftest import make_test_pki


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


def test_a_validation_error_never_quotes_a_value() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(security_protocol="SASL_PLAINTEXT", sasl_password="hunter2-kafka", web_port=-1)
    assert "hunter2" not in str(raised.value)
    assert "hunter2" not in repr(raised.value.errors())
    assert settings_problems(raised.value) == [
        "FSSTREAM_WEB_PORT: Input should be greater than or equal to 0"
    ]
    with pytest.raises(ValidationError) as raised:
        Settings(security_protocol="SASL_PLAINTEXT", sasl_password="hunter2-kafka")
    assert "hunter2" not in str(raised.value)
    assert settings_problems(raised.value) == [
        "SASL needs FSSTREAM_SASL_USERNAME and FSSTREAM_SASL_PASSWORD"
    ]


def test_the_cli_lists_bad_settings_without_their_values() -> None:
    env = {
        "FSSTREAM_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "FSSTREAM_SASL_PASSWORD": "hunter2-kafka",
        "FSSTREAM_ORG_ID": "o/1",
    }
    result = CliRunner().invoke(main, ["worker", "sink"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("Error: invalid settings:\n")
    assert "FSSTREAM_ORG_ID: must be" in result.output
    assert "hunter2" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("org_id", ["o-local", "o-1ABC2-na1", "KWH", "a", "org_7.x"])
def test_accepts_org_ids(org_id: str) -> None:
    assert Settings(org_id=org_id).org_id == org_id


@pytest.mark.parametrize("org_id", ["", "a/b", "..", ".hidden", "-x", "o 1", "o*", "x" * 65])
def test_refuses_org_ids_that_are_not_one_path_part(org_id: str) -> None:
    with pytest.raises(ValidationError, match="org_id"):
        Settings(org_id=org_id)


@pytest.mark.parametrize(
    "url",
    [
        "file://./warehouse",
        "file:///data/wh",
        "s3://bucket-1",
        "s3://bucket-1/",
        "s3://bucket-1/some/prefix/",
        "s3://my.bucket/lake/team=a/x y",
    ],
)
def test_accepts_warehouse_urls(url: str) -> None:
    assert Settings(warehouse_url=url).warehouse_url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("warehouse", "file://DIR or s3://BUCKET/PREFIX"),
        ("http://x/y", "file://DIR or s3://BUCKET/PREFIX"),
        ("file://", "file://DIR or s3://BUCKET/PREFIX"),
        ("s3://", "bucket name"),
        ("s3://Bucket/x", "bucket name"),
        ("s3://ab/x", "bucket name"),
        ("s3://a..b/x", "bucket name"),
        ("s3://bucket-1/a//b", "path part"),
        ("s3://bucket-1/a/../b", "path part"),
        ("s3://bucket-1/./b", "path part"),
        ("s3://bucket-1/a*b", "'*'"),
        ("s3://bucket-1/a\\b", "'\\\\'"),
        ("s3://bucket-1/a\nb", "'\\n'"),
        ("s3://bucket-1/" + "p" * 513, "longer than 512 bytes"),
    ],
)
def test_refuses_warehouse_urls_at_load(url: str, problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(warehouse_url=url)
    [line] = settings_problems(raised.value)
    assert line.startswith("FSSTREAM_WAREHOUSE_URL: ")
    assert problem in line


def test_secret_values_lists_every_secret_and_each_api_key() -> None:
    settings = Settings(
        sasl_password="pw",
        s3_access_key_id="ak",
        s3_secret_access_key="sk",
        export_api_keys="k1,k2",
    )
    assert sorted(settings.secret_values()) == ["ak", "k1", "k1,k2", "k2", "pw", "sk"]
    assert Settings().secret_values() == []


def test_the_redactor_masks_secrets_in_every_usual_spelling() -> None:
    redact = Redactor(["pa'ss wörd/1", "AKIAEXAMPLE"])
    for text in (
        "password=pa'ss wörd/1",
        repr("pa'ss wörd/1"),
        repr(b"\x00svc\x00" + "pa'ss wörd/1".encode()),
        orjson.dumps({"p": "pa'ss wörd/1"}).decode(),
        "https://x/?p=pa%27ss%20w%C3%B6rd%2F1",
        "p=pa%27ss+w%C3%B6rd%2F1",
        "Credential=AKIAEXAMPLE/20240101/us-east-1/s3/aws4_request",
    ):
        masked = redact(text)
        assert MASK in masked
        assert "AKIAEXAMPLE" not in masked and "ss w" not in masked and "w%C3" not in masked
    assert Redactor([])("nothing to hide") == "nothing to hide"


def test_logs_and_uncaught_errors_mask_the_configured_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    settings = Settings(s3_access_key_id="AKIAEXAMPLE", sasl_password="hunter2-kafka")
    redact_output(settings)
    redact_output(settings)  # a second call wraps nothing twice
    log = logging.getLogger("botocore.endpoint")
    log.warning("headers: %s", {"Authorization": b"AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/"})
    try:
        raise RuntimeError("auth bytes b'\\x00svc\\x00hunter2-kafka'")
    except RuntimeError:
        log.exception("failed")
        sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    written = stream.getvalue() + capsys.readouterr().err
    assert "AKIAEXAMPLE" not in written and "hunter2" not in written
    assert f"Credential={MASK}/" in written
    # The error's line, in both the logged and the printed traceback.
    assert written.count(f"RuntimeError: auth bytes b'\\x00svc\\x00{MASK}'") == 2
    assert isinstance(handler.formatter, RedactingFormatter)
    assert not isinstance(handler.formatter.inner, RedactingFormatter)


def test_client_libraries_never_log_their_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.DEBUG)
    for name in WIRE_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    quiet_wire_loggers()
    assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.INFO)
    assert not logging.getLogger("botocore.endpoint").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("urllib3.connectionpool").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("fsstream.sink").isEnabledFor(logging.DEBUG)


def test_tls_files_are_loaded_at_start(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path, "key-pw-1")
    tls = {
        "security_protocol": "SSL",
        "ssl_cafile": pki["ca"],
        "ssl_certfile": pki["client"],
        "ssl_keyfile": pki["client-key"],
    }
    assert Settings(**tls, ssl_keyfile_password="key-pw-1").ssl_context().verify_mode
    cases = [
        ({"ssl_keyfile_password": "not-it"}, "FSSTREAM_SSL_KEYFILE_PASSWORD missing or wrong"),
        ({}, "FSSTREAM_SSL_KEYFILE_PASSWORD missing or wrong"),  # never a terminal prompt
        ({"ssl_cafile": tmp_path / "missing.pem"}, "FSSTREAM_SSL_CAFILE cannot be read"),
        ({"ssl_cafile": pki["client-key"]}, "FSSTREAM_SSL_CAFILE cannot be read"),
        ({"ssl_certfile": None}, "FSSTREAM_SSL_KEYFILE needs FSSTREAM_SSL_CERTFILE"),
    ]
    for overrides, problem in cases:
        with pytest.raises(ValidationError) as raised:
            Settings(**{**tls, **overrides})
        [line] = settings_problems(raised.value)
        assert problem in line
        assert "not-it" not in str(raised.value)


def test_an_empty_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSSTREAM_SSL_CERTFILE", "")
    monkeypatch.setenv("FSSTREAM_S3_ENDPOINT_URL", "")
    monkeypatch.setenv("FSSTREAM_ORG_ID", "")
    settings = Settings()
    assert (settings.ssl_certfile, settings.s3_endpoint_url, settings.org_id) == (
        None,
        None,
        "o-local",
    )

"""Authentication and encryption against a real broker; secrets never in any output.

Every command runs as its own process against the SASL_PLAINTEXT listener (PLAIN and
SCRAM-SHA-512) or the SSL listener (client certificate with an encrypted key) of the
``secure_kafka`` broker, the sink writing to the S3 server with access keys, the workers
logging at debug level. Whatever any of them prints, logs or serves is searched for
every secret they were given.
"""

from __future__ import annotations

import secrets
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from fsstream.devtools.localkafka import LocalKafka, free_port, scram_credential
from fsstream.devtools.processes import WorkerProcess
from fsstream.settings import Settings
from tests import scenario
from tests.conftest import SecureKafka, make_test_pki
from tests.warehouse import create_bucket, read_warehouse, wait_for_warehouse

VIEWS, EVENTS_PER_VIEW = 3, 4
PAGE_DEFINITION = {
    "kind": "page",
    "id": "pg-products",
    "name": "Products",
    "rule": {"url": "/products/**"},
}


@dataclass
class Outputs:
    """Everything the processes of one test wrote, to be searched for secrets."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, data: bytes | str) -> str:
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        self.texts[name] = self.texts.get(name, "") + text
        return text

    def assert_free_of(self, *secret_values: str) -> None:
        for name, text in self.texts.items():
            for secret in secret_values:
                assert secret not in text, f"a secret shows in {name}"


def run_cli(
    settings: Settings, outputs: Outputs, *args: str, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """``fsstream ARGS`` as a process, its output kept for the secrets check."""
    result = scenario.run_cli(settings, *args, stdin=stdin, timeout=90)
    outputs.add(f"{args[0]} stdout", result.stdout)
    outputs.add(f"{args[0]} stderr", result.stderr)
    return result


def events_ndjson(now_ms: int) -> bytes:
    lines = []
    at = time.gmtime(now_ms / 1000 - 60)
    for view in range(VIEWS):
        for n in range(EVENTS_PER_VIEW):
            lines.append(
                {
                    "device_id": 41,
                    "session_id": 7,
                    "view_id": view + 1,
                    "event_time": f"{time.strftime('%Y-%m-%dT%H:%M:%S', at)}.{n:03d}Z",
                    "event_type": "click",
                    "event_properties": {"target": {"raw_selector": "body > button"}},
                    "source_type": "web",
                    "source_properties": {"url": {"path": "/products/shoes"}},
                }
            )
    return b"\n".join(orjson.dumps(line) for line in lines)


def get_page(settings: Settings, path: str) -> bytes:
    url = f"http://{settings.web_host}:{settings.web_port}{path}"
    with urllib.request.urlopen(url, timeout=5) as response:
        page: bytes = response.read()
        return page


@pytest.fixture
def s3_keys() -> dict[str, str]:
    """Access keys of this test only (the S3 server takes any)."""
    return {
        "s3_access_key_id": f"AKIA{secrets.token_hex(8).upper()}",
        "s3_secret_access_key": secrets.token_urlsafe(30),
    }


@pytest.fixture
def base_values(
    unique: str, tmp_path: Path, s3_endpoint: str, s3_keys: dict[str, str]
) -> dict[str, Any]:
    """Topics, group, warehouse bucket and S3 keys of this test, short intervals."""
    bucket = f"secure-{unique}"
    create_bucket(s3_endpoint, bucket)
    return {
        "app_id": f"fsstream-{unique}",
        "topic_raw": f"raw-{unique}",
        "topic_definitions": f"definitions-{unique}",
        "topic_events": f"events-{unique}",
        "topic_dlq": f"dlq-{unique}",
        "raw_partitions": 2,
        "events_partitions": 2,
        "data_dir": tmp_path / "data",
        "warehouse_url": f"s3://{bucket}/lake",
        "s3_endpoint_url": s3_endpoint,
        **s3_keys,
        "org_id": "o-secure",
        "reorder_grace_s": 1.0,
        "sink_flush_interval_s": 1.0,
        "allowed_lateness_s": 0,
        "log_level": "debug",
    }


def connection(secure_kafka: SecureKafka, listener: str, **overrides: Any) -> dict[str, Any]:
    if listener == "SSL":
        return secure_kafka.ssl_settings(**overrides)
    return secure_kafka.sasl_settings(listener, **overrides)


def every_secret(secure_kafka: SecureKafka, s3_keys: dict[str, str]) -> list[str]:
    return [secure_kafka.password, secure_kafka.client_key_password, *s3_keys.values()]


@pytest.mark.parametrize("listener", ["PLAIN", "SCRAM-SHA-512", "SSL"])
async def test_the_whole_job_runs_over_an_authenticated_or_encrypted_listener(
    listener: str,
    secure_kafka: SecureKafka,
    base_values: dict[str, Any],
    s3_keys: dict[str, str],
    tmp_path: Path,
) -> None:
    settings = Settings(**base_values, **connection(secure_kafka, listener))
    outputs = Outputs()
    created = run_cli(settings, outputs, "topics", "create")
    assert created.returncode == 0, created.stderr.decode()
    assert created.stdout.count(b"created") == 5
    shown = run_cli(settings, outputs, "config")
    assert orjson.loads(shown.stdout)["s3_secret_access_key"] == "**********"

    workers = {
        role: WorkerProcess(
            settings.model_copy(
                update={"web_port": free_port(), "data_dir": tmp_path / "state" / role}
            ),
            role,
            tmp_path / f"{role}.log",
        )
        for role in ("reorder", "sink")
    }
    with workers["reorder"] as reorder, workers["sink"] as sink:
        loaded = run_cli(
            settings, outputs, "definitions", "load", "-", stdin=orjson.dumps([PAGE_DEFINITION])
        )
        assert loaded.returncode == 0, loaded.stderr.decode()
        reorder.wait_assigned()
        sink.wait_assigned()
        produced = run_cli(
            settings, outputs, "produce", "-", stdin=events_ndjson(int(time.time() * 1000))
        )
        assert produced.returncode == 0, produced.stderr.decode()
        total = VIEWS * EVENTS_PER_VIEW
        warehouse = await wait_for_warehouse(settings, lambda w: len(w.live()) == total, 60)
        assert len(warehouse.live()) == total
        for worker in (reorder, sink):
            outputs.add(f"{worker.role} /health", get_page(worker.settings, "/health"))
            outputs.add(f"{worker.role} /metrics", get_page(worker.settings, "/metrics"))
        tailed = run_cli(settings, outputs, "tail", "events", "--max", str(total))
        assert tailed.returncode == 0, tailed.stderr.decode()
        assert reorder.stop() == 0
        assert sink.stop() == 0

    rows = [orjson.loads(line) for line in tailed.stdout.splitlines()]
    assert len(rows) == total
    assert {orjson.loads(r["value"]["source_properties"])["page_definition_id"] for r in rows} == {
        "pg-products"
    }
    stored = (await read_warehouse(settings)).live().values()
    assert {orjson.loads(r["source_properties"])["page_definition_id"] for r in stored} == {
        "pg-products"
    }
    for worker in workers.values():
        log = outputs.add(f"{worker.role} log", worker.log_path.read_bytes())
        assert "[DEBUG]" in log, f"the {worker.role} worker did not log at debug level"
    outputs.assert_free_of(*every_secret(secure_kafka, s3_keys))


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
@pytest.mark.parametrize(
    "command", [("topics", "create"), ("worker", "reorder"), ("worker", "sink")], ids=" ".join
)
def test_a_wrong_password_is_refused_with_a_clear_message(
    mechanism: str,
    command: tuple[str, ...],
    secure_kafka: SecureKafka,
    base_values: dict[str, Any],
    s3_keys: dict[str, str],
) -> None:
    wrong = secrets.token_urlsafe(16)
    settings = Settings(
        **base_values,
        **secure_kafka.sasl_settings(mechanism, sasl_password=wrong),
        web_port=free_port(),
    )
    outputs = Outputs()
    started = time.monotonic()
    result = run_cli(settings, outputs, *command)
    assert result.returncode != 0
    assert time.monotonic() - started < 60
    stderr = result.stderr.decode()
    assert f"no connection to Kafka at {secure_kafka.broker.sasl_bootstrap}" in stderr
    assert f"{mechanism} as {secure_kafka.username!r}" in stderr
    assert "Authentication failed" in stderr
    assert "Traceback" not in stderr
    outputs.assert_free_of(wrong, *every_secret(secure_kafka, s3_keys))


@pytest.mark.parametrize("problem", ["untrusted broker", "no client certificate"])
def test_a_refused_tls_connection_ends_with_a_clear_message(
    problem: str,
    secure_kafka: SecureKafka,
    base_values: dict[str, Any],
    s3_keys: dict[str, str],
    tmp_path: Path,
) -> None:
    if problem == "untrusted broker":
        other_ca = make_test_pki(tmp_path, "unused")["ca"]
        overrides: dict[str, Any] = {"ssl_cafile": other_ca}
    else:
        overrides = {"ssl_certfile": None, "ssl_keyfile": None, "ssl_keyfile_password": None}
    settings = Settings(**base_values, **secure_kafka.ssl_settings(**overrides))
    outputs = Outputs()
    result = run_cli(settings, outputs, "topics", "create")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert f"no connection to Kafka at {secure_kafka.broker.ssl_bootstrap} (SSL)" in stderr
    if problem == "untrusted broker":
        assert "certificate verify failed" in stderr
    assert "Traceback" not in stderr
    outputs.assert_free_of(*every_secret(secure_kafka, s3_keys))


def test_scram_credentials_reach_the_broker_as_salted_hashes_only() -> None:
    argument = scram_credential("SCRAM-SHA-512", "svc", "pw-in-clear", bytes(16))
    assert argument.startswith("SCRAM-SHA-512=[name=svc,iterations=4096,salt=")
    assert "pw-in-clear" not in argument
    assert argument != scram_credential("SCRAM-SHA-512", "svc", "pw-in-clear", b"\x01" * 16)


@pytest.mark.parametrize("user", [("", "pw"), ("svc", ""), ("svc", 'p"w'), ("a b", "pw")])
def test_the_local_broker_refuses_credentials_its_config_cannot_hold(
    user: tuple[str, str],
) -> None:
    with pytest.raises(ValueError, match="SASL user names and passwords"):
        LocalKafka(sasl_users=dict([user]))

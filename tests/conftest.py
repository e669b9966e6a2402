"""Session fixtures: one real Kafka broker (KRaft, loopback) and one moto S3 server."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fsstream.localkafka import LocalKafka, free_port
from fsstream.settings import Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kill-suite-long",
        action="store_true",
        help="run the kill suite with more traffic and more kills (several minutes)",
    )


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """A broker shared by the whole session; tests keep apart by unique topic names."""
    with LocalKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def unique() -> str:
    """A short name part no other test uses."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_settings(kafka: LocalKafka, unique: str, tmp_path: Any) -> Callable[..., Settings]:
    """Settings on the session broker with this test's own topics, group and data dir."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "broker_url": f"kafka://{kafka.bootstrap}",
            "app_id": f"fsstream-{unique}",
            "topic_raw": f"raw-{unique}",
            "topic_definitions": f"definitions-{unique}",
            "topic_events": f"events-{unique}",
            "topic_dlq": f"dlq-{unique}",
            "raw_partitions": 4,
            "events_partitions": 4,
            "data_dir": tmp_path / "data",
            "warehouse_url": f"file://{tmp_path / 'warehouse'}",
            "web_port": free_port(),
        }
        values.update(overrides)
        return Settings(**values)

    return make

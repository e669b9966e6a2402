"""Topics, ``fsstream produce`` and ``fsstream tail`` against the real broker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from aiokafka import TopicPartition

from fsstream.contract import codec
from fsstream.contract.topics import create_topics, describe_topic_configs
from fsstream.infra import kafka_clients
from fsstream.settings import Settings
from tests.scenario import run_cli


async def test_topics_create_sets_cleanup_policies_and_is_idempotent(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(raw_partitions=3, events_partitions=5)
    first = run_cli(settings, "topics", "create")
    assert first.returncode == 0, first.stderr.decode()
    assert first.stdout.decode().count("created") == 5
    second = run_cli(settings, "topics", "create")
    assert second.returncode == 0, second.stderr.decode()
    assert second.stdout.decode().count("exists") == 5

    names = [
        settings.topic_raw,
        settings.topic_definitions,
        settings.topic_events,
        settings.topic_dlq,
        settings.topic_views_changelog,
    ]
    configs = await describe_topic_configs(settings, names)
    assert configs[settings.topic_raw]["cleanup.policy"] == "delete"
    assert configs[settings.topic_definitions]["cleanup.policy"] == "compact"
    assert configs[settings.topic_events]["cleanup.policy"] == "compact"
    assert configs[settings.topic_dlq]["cleanup.policy"] == "delete"
    # The reorder worker's view state: compacted, one partition per raw partition.
    assert configs[settings.topic_views_changelog]["cleanup.policy"] == "compact"

    admin = kafka_clients.admin(settings)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(names)}
    finally:
        await admin.close()
    assert described == {
        settings.topic_raw: 3,
        settings.topic_definitions: 1,
        settings.topic_events: 5,
        settings.topic_dlq: 1,
        settings.topic_views_changelog: 3,
    }


def _events() -> list[dict]:
    events = []
    for n in range(45):
        view = n % 3
        events.append(
            {
                "device_id": 100 + view,
                "session_id": 200 if view != 2 else None,
                "view_id": 300 + view if view != 2 else None,
                "event_time": f"2024-05-01T10:00:{n:02d}.{n:03d}Z",
                "event_type": ["click", "navigate", "custom"][n % 3],
                "event_properties": {"n": n, "nested": {"ok": True}, "text": "é✓"},
                "source_type": "web" if view else "mobile_app",
                "source_properties": {"url": {"path": f"/p/{n}"}},
                "ingested_time": 1714557600000 + (n // 10) * 1000,
            }
        )
    return events


async def test_produce_groups_per_view_and_every_field_arrives(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    # Records stamped in 2024: the raw topic must keep them (produce refuses them otherwise).
    settings = make_settings(raw_retention_s=10 * 365 * 86_400.0)
    assert run_cli(settings, "topics", "create").returncode == 0
    events = _events()
    source = tmp_path / "events.ndjson"
    source.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    result = run_cli(settings, "produce", str(source), "--batch-size", "4")
    assert result.returncode == 0, result.stderr.decode()
    assert "produced 45 events" in result.stderr.decode()

    consumer = await kafka_clients.start(kafka_clients.consumer(settings, settings.topic_raw))
    received: list[dict] = []
    records = 0
    try:
        while len(received) < len(events):
            batches = await consumer.getmany(timeout_ms=10_000)
            assert batches, f"only {len(received)} events arrived"
            for tp, messages in batches.items():
                for message in messages:
                    records += 1
                    key = message.key.decode()
                    assert dict(message.headers) == {"fs-view": message.key}
                    batch = codec.decode(message.value, expected=codec.RAW_EVENT_BATCH)
                    assert 1 <= len(batch["events"]) <= 4
                    assert message.timestamp == batch["ingested_time"]
                    for event in batch["events"]:
                        sid = "" if event["session_id"] is None else event["session_id"]
                        vid = "" if event["view_id"] is None else event["view_id"]
                        assert key == f"{event['device_id']}:{sid}:{vid}"
                        received.append(
                            {
                                **event,
                                "ingested_time": batch["ingested_time"],
                                "partition": tp.partition,
                            }
                        )
    finally:
        await consumer.stop()

    by_time = {e["event_time"]: e for e in received}
    assert len(by_time) == len(events) == len(received)
    for original in events:
        got = by_time[original["event_time"]]
        for field in (
            "device_id",
            "session_id",
            "view_id",
            "event_type",
            "source_type",
            "ingested_time",
        ):
            assert got[field] == original[field], field
        assert orjson.loads(got["event_properties"]) == original["event_properties"]
        assert orjson.loads(got["source_properties"]) == original["source_properties"]
    # One view always lands on one partition, and its events keep their input order.
    for device in (100, 101, 102):
        mine = [e for e in received if e["device_id"] == device]
        assert len({e["partition"] for e in mine}) == 1
        assert [e["event_time"] for e in mine] == sorted(e["event_time"] for e in mine)
    # A record holds up to 4 consecutive events of one view with one ingested time.
    expected_records = 0
    for device in (100, 101, 102):
        runs: list[int] = []
        last = None
        for event in (e for e in events if e["device_id"] == device):
            if event["ingested_time"] != last or runs[-1] == 4:
                runs.append(0)
            runs[-1] += 1
            last = event["ingested_time"]
        expected_records += len(runs)
    assert records == expected_records


async def test_produce_refuses_malformed_input_and_sends_nothing(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    assert run_cli(settings, "topics", "create").returncode == 0
    good = orjson.dumps(_events()[0])
    result = run_cli(settings, "produce", "-", stdin=good + b"\n{broken\n" + good + b"\n")
    assert result.returncode != 0
    assert "line 2: invalid JSON" in result.stderr.decode()
    consumer = await kafka_clients.start(kafka_clients.consumer(settings))
    try:
        tps = [TopicPartition(settings.topic_raw, p) for p in range(settings.raw_partitions)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    assert set(ends.values()) == {0}


async def test_tail_prints_decoded_records_and_tombstones(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    await create_topics(settings)
    row = {
        "event_id": "e1",
        "event_time": "2024-01-01T00:00:00.000000Z",
        "processed_time": "2024-01-01T00:00:05.000000Z",
        "updated_time": None,
        "device_id": 1,
        "session_id": 2,
        "view_id": 3,
        "event_type": "click",
        "event_properties": "{}",
        "source_type": "web",
        "source_properties": "{}",
        "ingested_time": 1704067200000,
    }
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        await producer.send_and_wait(
            settings.topic_events,
            codec.encode(codec.EVENT, row),
            key=b"e1",
            partition=2,
            headers=[("fs-view", b"1:2:3")],
        )
        await producer.send_and_wait(
            settings.topic_events, None, key=b"e1", partition=2, headers=[("fs-view", b"1:2:3")]
        )
        await producer.send_and_wait(settings.topic_events, b"\x00garbage", key=b"e2", partition=2)
    finally:
        await producer.stop()
    result = run_cli(settings, "tail", "events")
    assert result.returncode == 0, result.stderr.decode()
    lines = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert [line["offset"] for line in lines] == [0, 1, 2]
    assert lines[0]["value"] == row and lines[0]["schema"] == "io.fsstream.Event"
    assert lines[0]["headers"] == {"fs-view": "1:2:3"} and lines[0]["key"] == "e1"
    assert lines[1]["value"] is None and lines[1]["key"] == "e1" and "error" not in lines[1]
    assert "not an Avro single-object value" in lines[2]["error"]

    missing = run_cli(settings, "tail", "no-such-topic-xyz")
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr.decode()

"""Hostile input on the real broker: every record a worker cannot use goes to the DLQ with
its reason, and the worker goes on with everything else."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.contract.wire import HEARTBEAT_HEADER
from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import WorkerProcess
from fsstream.infra import kafka_clients
from fsstream.settings import Settings
from tests.scenario import RawRecord, expected_rows, live, make_views, produce, wait_for
from tests.warehouse import read_warehouse, wait_for_warehouse


def _reasons(dlq: list[Any]) -> list[str]:
    return sorted(dict(r.headers)["fs-error"].decode().split(":")[0] for r in dlq)


async def _send(settings: Settings, topic: str, records: list[dict[str, Any]]) -> None:
    """Send records as a careless or hostile producer would: any size, key, headers."""
    producer = kafka_clients.producer(settings, max_request_size=32 * 1024 * 1024)
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait(topic, **record)
    finally:
        await producer.stop()


def _nested(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


async def test_hostile_raw_records_go_to_the_dlq_and_the_worker_keeps_going(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=0.5, max_view_events=30)
    await create_topics(settings)
    now = int(time.time() * 1000)
    views = make_views(random.Random(13), count=8, per_view=3, start_ms=now - 60_000)
    template = dict(views[0].events[0])

    def batch(events: list[dict[str, Any]], ingested: int = now) -> bytes:
        return codec.encode(codec.RAW_EVENT_BATCH, {"ingested_time": ingested, "events": events})

    # 5 MB that compresses to almost nothing: the broker takes it, the worker must not choke.
    oversized = batch(
        [{**template, "event_properties": orjson.dumps({"x": "y" * 5_000_000}).decode()}]
    )
    deep = batch([{**template, "event_properties": '{"a":' + _nested(300) + "}"}])
    at_the_limit = {**template, "event_properties": '{"a":' + _nested(253) + "}"}
    far_ingested = batch([template], ingested=2**62)
    overlong = bytearray(batch([{**template, "device_id": 0}]))
    device_id = len(batch([]))  # past the ingested time and the block count: branch, value
    assert overlong[device_id : device_id + 2] == b"\x02\x00"
    overlong[device_id + 1 : device_id + 2] = b"\x80" * 10 + b"\x00"
    long_view = make_views(random.Random(14), count=1, per_view=40, start_ms=now - 60_000)[0]
    long_view.key = "77:1:1"
    for event in long_view.events:
        event.update(device_id=77, session_id=1, view_id=1)

    hostile = [
        {"value": oversized, "key": views[0].key.encode(), "timestamp_ms": now},
        {"value": deep, "key": views[0].key.encode(), "timestamp_ms": now},
        {"value": far_ingested, "key": views[0].key.encode(), "timestamp_ms": now},
        {"value": bytes(overlong), "key": b"0::", "timestamp_ms": now},
        # The heartbeat header on anything but a heartbeat: data (so checked), not a heartbeat.
        {"value": b"", "key": b"1:2:3", "timestamp_ms": now, "headers": [(HEARTBEAT_HEADER, b"1")]},
    ]
    forged_heartbeat_batch = RawRecord(views[1].key, now, views[1].events)
    good = [RawRecord(v.key, now + i, v.events) for i, v in enumerate(views) if v is not views[1]]
    good.append(RawRecord(views[0].key, now, [at_the_limit]))
    long_records = [RawRecord(long_view.key, now + i, [e]) for i, e in enumerate(long_view.events)]
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await _send(settings, settings.topic_raw, hostile)
        await _send(
            settings,
            settings.topic_raw,
            [
                {
                    "value": forged_heartbeat_batch.encode(),
                    "key": views[1].key.encode(),
                    "timestamp_ms": now,
                    "headers": [(HEARTBEAT_HEADER, b"1")],
                }
            ],
        )
        await produce(settings, good + long_records)
        views[0].events.append(at_the_limit)
        long_view.events = long_view.events[:30]
        expected = set(expected_rows([*views, long_view]))
        out = await wait_for(settings, settings.topic_events, lambda rs: set(live(rs)) >= expected)
        dlq = await wait_for(settings, settings.topic_dlq, lambda rs: len(rs) >= 15)
        assert worker.alive()
        metrics_text = worker.metrics()
    assert set(live(out)) == expected
    assert _reasons(dlq) == sorted(
        [
            "OversizedRecord",
            "PropertiesTooDeep",
            "AbsurdIngestedTime",
            "CorruptBodyError",
            "NotSingleObjectError",
            *["ViewFull"] * 10,
        ]
    )
    by_reason = {_reasons([r])[0]: r for r in dlq}
    big = dict(by_reason["OversizedRecord"].headers)
    assert by_reason["OversizedRecord"].value is None
    assert big["fs-dlq-size"] == str(len(oversized)).encode()
    assert big["fs-dlq-sha256"] == hashlib.sha256(oversized).hexdigest().encode()
    assert big["fs-dlq-dropped"] == b"value"
    assert by_reason["PropertiesTooDeep"].value == deep
    assert (
        b"long encoded in more than ten bytes"
        in dict(by_reason["CorruptBodyError"].headers)["fs-error"]
    )
    assert 'fsstream_dlq_records_total{reason="ViewFull"} 10.0' in metrics_text


async def test_a_record_stamped_far_ahead_does_not_move_stream_time(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A record stamped ten minutes ahead would expire every view with a two-minute TTL, and
    a late event of a view would then be published without its correction."""
    settings = make_settings(reorder_grace_s=0.5, view_ttl_s=120, max_stream_lead_s=30)
    await create_topics(settings)
    now = int(time.time() * 1000)
    # The second view has no identify event, whose row would keep its id.
    other, view = make_views(random.Random(21), count=2, per_view=3, start_ms=now - 60_000)
    first, late = view.events[1:], view.events[:1]
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await produce(settings, [RawRecord(view.key, now, first)])
        await wait_for(settings, settings.topic_events, lambda rs: len(rs) >= len(first))
        ahead = now + 600_000
        await produce(settings, [RawRecord(other.key, ahead, [])])  # empty: to the DLQ
        await _send(
            settings,
            settings.topic_raw,
            [
                {
                    "value": RawRecord(other.key, now, other.events).encode(),
                    "key": other.key.encode(),
                    "timestamp_ms": ahead,
                }
            ],
        )
        await produce(settings, [RawRecord(view.key, now + 1, late)])
        expected = set(expected_rows([view, other]))
        out = await wait_for(settings, settings.topic_events, lambda rs: set(live(rs)) == expected)
        metrics_text = worker.metrics()
    assert set(live(out)) == expected
    tombstones = [r for r in out if r.value is None]
    assert len(tombstones) == 1  # the late event superseded the row after it
    assert "fsstream_reorder_future_records_total 2.0" in metrics_text


async def test_the_sink_dead_letters_rows_the_warehouse_cannot_hold(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(sink_flush_interval_s=1.0)
    await create_topics(settings)
    now = int(time.time() * 1000)

    def row(event_id: str, **changes: Any) -> bytes:
        value = {
            "event_id": event_id,
            "event_time": "2026-01-01T00:00:00.000000Z",
            "processed_time": "2026-01-01T00:00:01.000000Z",
            "updated_time": None,
            "device_id": 1,
            "session_id": 2,
            "view_id": 3,
            "event_type": "click",
            "event_properties": "{}",
            "source_type": "web",
            "source_properties": "{}",
            "ingested_time": now,
        }
        return codec.encode(codec.EVENT, {**value, **changes})

    good = [f"{i:032x}" for i in range(1, 6)]
    records = [
        {"value": row(good[0]), "key": good[0].encode(), "partition": 0},
        {"value": row("a" * 32, ingested_time=2**62), "key": b"a" * 32, "partition": 0},
        {"value": row("b" * 32, ingested_time=-1), "key": b"b" * 32, "partition": 0},
        {"value": row("c" * 32, event_time="soon"), "key": b"c" * 32, "partition": 0},
        {"value": b"\xc3\x01" + b"\x01" * 8 + b"body", "key": b"d" * 32, "partition": 0},
        {"value": None, "key": b"e" * 32, "partition": 0},  # a tombstone without headers
        {"value": None, "key": b"f" * 32, "partition": 0, "headers": [("fs-ingested", b"x")]},
        *({"value": row(i), "key": i.encode(), "partition": 0} for i in good[1:]),
    ]
    sink_settings = settings.model_copy(update={"web_port": free_port()})
    with WorkerProcess(sink_settings, "sink", tmp_path / "sink.log") as sink:
        sink.wait_assigned()
        await _send(settings, settings.topic_events, records)
        dlq = await wait_for(settings, settings.topic_dlq, lambda rs: len(rs) >= 6)
        warehouse = await wait_for_warehouse(settings, lambda w: set(w.live()) >= set(good))
        assert sink.alive()
    assert set(warehouse.live()) == set(good)
    assert _reasons(dlq) == sorted(["UnwritableRow"] * 5 + ["UnknownSchemaError"])
    for record in dlq:
        assert dict(record.headers)["fs-source"].decode().startswith(f"{settings.topic_events}/0/")
    assert (await read_warehouse(settings)).nulled() == set()

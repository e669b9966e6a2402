"""The reorder worker on the real broker: order, corrections, crashes and bad input."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from fsstream.contract import codec
from fsstream.contract.partitioning import partition_for
from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.devtools.processes import WorkerProcess, metric_value
from fsstream.settings import Settings
from tests.scenario import (
    RawRecord,
    View,
    expected_rows,
    live,
    make_views,
    produce,
    read_all,
    settled_metric,
    wait_for,
    without_enrichment,
)


@dataclass
class Plan:
    """Phase A: most events, shuffled, split into random batches, all within one grace.
    Phase B, 30 s of stream time later: the held-back events (late) and some redeliveries."""

    phase_a: list[RawRecord]
    phase_b: list[RawRecord]
    redelivered: int
    """Events sent a second time."""
    late_before_released: int
    """Late events that sort before an event of their view released in phase A."""


def plan_records(rng: random.Random, views: list[View], t0: int) -> Plan:
    phase_a: list[RawRecord] = []
    phase_b: list[RawRecord] = []
    late_before_released = 0
    for view in views:
        events = list(view.events)
        rng.shuffle(events)
        late_count = max(1, len(events) // 5)
        early, late = events[late_count:], events[:late_count]
        position = 0
        while position < len(early):
            size = rng.randint(1, 5)
            phase_a.append(RawRecord(view.key, 0, early[position : position + size]))
            position += size
        phase_b.extend(RawRecord(view.key, 0, [e]) for e in late)
        last_early = max(parse_rfc3339_us(e["event_time"]) for e in early)
        late_before_released += sum(parse_rfc3339_us(e["event_time"]) < last_early for e in late)
    redeliveries = rng.sample(phase_a, len(phase_a) // 10)
    phase_b.extend(redeliveries)
    rng.shuffle(phase_a)
    rng.shuffle(phase_b)
    a = [RawRecord(r.key, t0 + i * 2, r.events) for i, r in enumerate(phase_a)]
    b = [RawRecord(r.key, t0 + 30_000 + i * 2, r.events) for i, r in enumerate(phase_b)]
    return Plan(a, b, sum(len(r.events) for r in redeliveries), late_before_released)


def check_output(
    records: list, views: list[View], settings: Settings, *, in_order_until_corrected: bool = True
) -> None:
    expected = expected_rows(views)
    rows = live(records)
    assert set(rows) == set(expected), (
        f"missing {len(set(expected) - set(rows))}, unexpected {len(set(rows) - set(expected))}"
    )
    for event_id, record in rows.items():
        value = codec.decode(record.value, expected=codec.EVENT)
        raw = expected[event_id]
        assert value["event_id"] == event_id
        assert value["event_time"] == raw["event_time"]
        assert value["event_type"] == raw["event_type"]
        assert without_enrichment(value["event_properties"]) == orjson.loads(
            raw["event_properties"]
        )
        # No definitions are loaded: the properties are exactly what the source sent.
        assert orjson.loads(value["event_properties"]) == orjson.loads(raw["event_properties"])
        assert (value["device_id"], value["session_id"], value["view_id"]) == (
            raw["device_id"],
            raw["session_id"],
            raw["view_id"],
        )
    by_view: dict[str, list] = {}
    published: set[bytes] = set()
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        view = dict(record.headers)["fs-view"].decode()
        assert record.partition == partition_for(view, settings.events_partitions)
        by_view.setdefault(view, []).append(record)
        if record.value is None:
            assert record.key in published, "a tombstone names an id never published"
        else:
            published.add(record.key)
    with_identify = {v.key for v in views if any(e["event_type"] == "identify" for e in v.events)}
    for view, view_records in by_view.items() if in_order_until_corrected else ():
        # Until the first correction, a view's rows first come out in event order (a row
        # published again after a crash repeats an earlier id). An identify row keeps its
        # id whatever lands before it, so a late event there comes without a tombstone.
        if view in with_identify:
            continue
        times = []
        seen: set[bytes] = set()
        for record in view_records:
            if record.value is None:
                break
            if record.key not in seen:
                seen.add(record.key)
                times.append(codec.decode(record.value)["event_time"])
        assert times == sorted(times), view


async def test_shuffled_views_with_late_events_come_out_ordered_and_corrected(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings(reorder_grace_s=2.0)
    await create_topics(settings)
    rng = random.Random(11)
    t0 = int(time.time() * 1000) - 60_000
    views = make_views(rng, count=40, per_view=15, start_ms=t0 - 600_000)
    plan = plan_records(rng, views, t0)
    sent = plan.phase_a + plan.phase_b
    events_sent = sum(len(r.events) for r in sent)
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await produce(settings, plan.phase_a)
        await produce(settings, plan.phase_b)
        expected = set(expected_rows(views))
        records = await wait_for(
            settings, settings.topic_events, lambda rs: set(live(rs)) == expected
        )
        events_in = await settled_metric(worker, "fsstream_events_in_total", events_sent)
        records = await read_all(settings, settings.topic_events)
        tombstones = [r for r in records if r.value is None]
        counted_tombstones = await settled_metric(
            worker, "fsstream_tombstones_total", len(tombstones)
        )
        counted_rows = await settled_metric(
            worker, "fsstream_events_out_total", len(records) - len(tombstones)
        )
        metrics_text = worker.metrics()
    check_output(records, views, settings)
    assert tombstones, "late events must have superseded published rows"
    # Every event sent was counted in, each redelivered one as a duplicate; every record
    # published was counted out.
    assert events_in == events_sent
    assert metric_value(metrics_text, "fsstream_raw_records_in_total") == len(sent)
    assert metric_value(metrics_text, "fsstream_duplicate_events_total") == plan.redelivered
    assert counted_tombstones == len(tombstones)
    assert counted_rows == len(records) - len(tombstones)
    # A late event is counted when it sorts before what its view released already: at
    # least those sorting before an event of phase A, at most every held-back event.
    late = metric_value(metrics_text, "fsstream_late_events_total")
    held_back = sum(len(r.events) for r in plan.phase_b) - plan.redelivered
    assert 0 < plan.late_before_released <= late <= held_back
    assert metric_value(metrics_text, "fsstream_dlq_records_total") == 0


async def test_worker_killed_at_random_moments_loses_and_duplicates_nothing(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings(
        reorder_grace_s=1.0, static_member_id="reorder-1", session_timeout_s=10.0
    )
    await create_topics(settings)
    rng = random.Random(23)
    t0 = int(time.time() * 1000) - 60_000
    views = make_views(rng, count=120, per_view=20, start_ms=t0 - 600_000)
    plan = plan_records(rng, views, t0)
    records_in = plan.phase_a + plan.phase_b
    chunks = [records_in[i : i + 150] for i in range(0, len(records_in), 150)]
    worker = WorkerProcess(settings, "reorder", tmp_path / "reorder.log").start()
    kills = 0
    try:
        worker.wait_assigned()
        for number, chunk in enumerate(chunks):
            await produce(settings, chunk)
            if number % 3 == 1 and kills < 4:
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                worker.kill()
                kills += 1
                worker = WorkerProcess(settings, "reorder", tmp_path / "reorder.log").start()
                worker.wait_assigned()
        expected = set(expected_rows(views))
        records = await wait_for(
            settings, settings.topic_events, lambda rs: set(live(rs)) == expected, timeout=180
        )
    finally:
        worker.stop()
    assert kills >= 3
    # Phase A spans more than the grace here, so late events already occur in it.
    check_output(records, views, settings, in_order_until_corrected=False)
    # Each event is live under exactly one id.
    events = [(v.key, e["event_time"], e["event_properties"]) for v in views for e in v.events]
    live_events = []
    for record in live(records).values():
        value = codec.decode(record.value)
        view = dict(record.headers)["fs-view"].decode()
        properties = orjson.dumps(without_enrichment(value["event_properties"])).decode()
        live_events.append((view, value["event_time"], properties))
    assert sorted(live_events) == sorted(events)


async def test_bad_records_go_to_the_dlq_with_their_reason_and_good_ones_flow(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings(reorder_grace_s=0.5, max_record_bytes=64_000)
    await create_topics(settings)
    now = int(time.time() * 1000)
    rng = random.Random(5)
    views = make_views(rng, count=6, per_view=4, start_ms=now - 120_000)
    good = [RawRecord(v.key, now + i, v.events) for i, v in enumerate(views)]
    template = dict(views[0].events[0])

    def bad(key: str, **changes: object) -> RawRecord:
        return RawRecord(key, now, [{**template, **changes}])

    wrong_fp = bytearray(
        codec.encode(codec.RAW_EVENT_BATCH, {"ingested_time": now, "events": [template]})
    )
    wrong_fp[2:10] = b"\x01" * 8
    truncated = codec.encode(codec.RAW_EVENT_BATCH, {"ingested_time": now, "events": [template]})
    huge = {**template, "event_properties": orjson.dumps({"blob": "x" * 100_000}).decode()}
    bad_records = {
        "NotSingleObjectError": RawRecord("1:2:3", now, [], value=b"\x00garbage bytes"),
        "UnknownSchemaError": RawRecord("1:2:3", now, [], value=bytes(wrong_fp)),
        "CorruptBodyError": RawRecord("1:2:3", now, [], value=truncated[:-7]),
        "MissingDeviceId": bad(views[0].key, device_id=None),
        "BadEventTime": bad(views[0].key, event_time="last tuesday"),
        "AbsurdEventTime": bad(views[0].key, event_time="2999-01-01T00:00:00Z"),
        "PropertiesNotObject": bad(views[0].key, event_properties="[1, 2]"),
        "OversizedRecord": RawRecord(views[0].key, now, [huge]),
        "ViewKeyMismatch": bad("9:9:9"),
        "EmptyBatch": RawRecord(views[0].key, now, []),
    }
    interleaved: list[RawRecord] = []
    for i, record in enumerate(bad_records.values()):
        interleaved.append(record)
        if i < len(good):
            interleaved.append(good[i])
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await produce(settings, interleaved)
        dlq = await wait_for(settings, settings.topic_dlq, lambda rs: len(rs) >= len(bad_records))
        expected = set(expected_rows(views))
        out = await wait_for(settings, settings.topic_events, lambda rs: set(live(rs)) == expected)
        assert worker.alive()
        dead_lettered = await settled_metric(worker, "fsstream_dlq_records_total", len(bad_records))
        good_events = sum(len(v.events) for v in views)
        events_in = await settled_metric(worker, "fsstream_events_in_total", good_events)
        metrics_text = worker.metrics()
    assert set(live(out)) == expected
    assert len(dlq) == len(bad_records)
    values_by_reason = {}
    for record in dlq:
        headers = dict(record.headers)
        reason = headers["fs-error"].decode()
        name = reason.split(":")[0]
        assert headers["fs-source"].decode().startswith(f"{settings.topic_raw}/")
        values_by_reason[name] = record.value
        assert len(reason) > len(name) + 5, reason
    assert set(values_by_reason) == set(bad_records)
    for name, record in bad_records.items():
        assert values_by_reason[name] == record.encode(), f"{name}: DLQ bytes changed"
    # Each bad record was counted once, under its reason; only the good events counted in.
    assert dead_lettered == len(bad_records)
    for name in bad_records:
        assert metric_value(metrics_text, "fsstream_dlq_records_total", reason=name) == 1, name
    assert events_in == good_events
    assert metric_value(metrics_text, "fsstream_raw_records_in_total") == len(interleaved)

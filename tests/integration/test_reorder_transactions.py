"""The reorder worker's transactions on the real broker: what a crash inside one leaves
visible, and backfills of old data with redeliveries before and after their views expire."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fsstream.contract.topics import create_topics
from fsstream.devtools.processes import WorkerProcess, metric_value
from fsstream.infra import kafka_clients
from fsstream.settings import Settings
from tests.integration.test_reorder_worker import check_output, plan_records
from tests.scenario import RawRecord, expected_rows, live, make_views, produce, read_all, wait_for

DAY_MS = 86_400_000


async def read_uncommitted(settings: Settings, topic: str) -> list[Any]:
    """Every record of ``topic``, those of open and aborted transactions included."""
    consumer = await kafka_clients.start(
        kafka_clients.consumer(settings, isolation_level="read_uncommitted")
    )
    try:
        tps = await kafka_clients.assign_from_beginning(consumer, topic)
        ends = await consumer.end_offsets(tps)
        out: list[Any] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out.extend(records)
        return out
    finally:
        await consumer.stop()


@pytest.mark.parametrize("point", ["after-send", "before-commit"])
async def test_a_crash_inside_a_transaction_leaves_nothing_visible_and_the_restart_publishes_once(
    make_settings: Callable[..., Settings], tmp_path: Path, point: str
) -> None:
    settings = make_settings(
        reorder_grace_s=1.0, raw_partitions=1, events_partitions=2, session_timeout_s=6.0
    )
    await create_topics(settings)
    rng = random.Random(3)
    t0 = int(time.time() * 1000) - 60_000
    views = make_views(rng, count=20, per_view=8, start_ms=t0 - 600_000)
    # Spread over 20 s of stream time, so the first batch already releases rows.
    records = [
        RawRecord(v.key, t0 + n * 200 + i * 20, [e])
        for n, v in enumerate(views)
        for i, e in enumerate(v.events)
    ]
    records.sort(key=lambda r: r.timestamp_ms)
    await produce(settings, records)
    crashing = settings.model_copy(update={"crash_point": f"{point}:1"})
    worker = WorkerProcess(crashing, "reorder", tmp_path / "crash.log").start()
    assert worker.process is not None
    assert worker.process.wait(60) == -9, "the worker did not reach its crash point"

    sent = await read_uncommitted(settings, settings.topic_events)
    changelog_sent = await read_uncommitted(settings, settings.topic_views_changelog)
    assert [r for r in sent if r.value is not None], "the crashed batch sent no rows"
    assert changelog_sent, "the crashed batch sent no state"
    assert await read_all(settings, settings.topic_events) == []
    assert await read_all(settings, settings.topic_views_changelog) == []

    expected = set(expected_rows(views))
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as restarted:
        restarted.wait_assigned()  # its heartbeats release what the stream time holds back
        committed = await wait_for(
            settings, settings.topic_events, lambda rs: set(live(rs)) == expected
        )
    rows = Counter(r.key for r in committed if r.value is not None)
    assert set(live(committed)) == expected
    assert max(rows.values()) == 1, "a row of the crashed batch was published twice"
    # The aborted batch's rows are in the log, and a read-committed reader skips them.
    again = {r.key for r in sent if r.value is not None}
    assert again <= set(rows)
    assert len(await read_uncommitted(settings, settings.topic_events)) > len(committed)


async def test_a_backfill_of_two_day_old_views_is_reordered_and_redeliveries_are_dropped(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=2.0, view_ttl_s=60.0)
    await create_topics(settings)
    rng = random.Random(17)
    t0 = int(time.time() * 1000) - 300_000
    views = make_views(rng, count=30, per_view=12, start_ms=t0 - 2 * DAY_MS)
    plan = plan_records(rng, views, t0)
    backfill, late_and_redelivered = plan.phase_a, plan.phase_b
    # Late events come 30 s of stream time later, within the TTL; four minutes later every
    # view has expired, and some of its events come again.
    after_expiry = [
        RawRecord(r.key, t0 + 240_000 + i, r.events)
        for i, r in enumerate(rng.sample(backfill, len(backfill) // 5))
    ]
    expected = set(expected_rows(views))
    sent = backfill + late_and_redelivered + after_expiry
    redelivered = sum(len(r.events) for r in sent) - len(expected)
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await produce(settings, backfill)
        await produce(settings, late_and_redelivered)
        corrected = await wait_for(
            settings, settings.topic_events, lambda rs: set(live(rs)) == expected
        )
        assert set(live(corrected)) == expected, "the backfill was not reordered"
        await produce(settings, after_expiry)
        deadline = time.monotonic() + 60
        while worker.metric("fsstream_duplicate_events_total") < redelivered:
            assert time.monotonic() < deadline, "the redeliveries were not all recognised"
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # anything they wrongly caused would be published by now
        records = await read_all(settings, settings.topic_events)
        metrics_text = worker.metrics()
    check_output(records, views, settings)
    assert any(r.value is None for r in records), "late events must have corrected the backfill"
    rows = Counter(r.key for r in records if r.value is not None)
    assert max(rows.values()) == 1
    assert metric_value(metrics_text, "fsstream_duplicate_events_total") == redelivered
    assert metric_value(metrics_text, "fsstream_expired_views_total") >= len(
        {r.key for r in after_expiry}
    )

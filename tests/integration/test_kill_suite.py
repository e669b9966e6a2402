"""Exactly once under SIGKILLs: two reorder and two sink workers as separate processes,
killed from outside mid-publish and mid-rebalance and from inside at crash points (between
a transaction's send and its commit, between an upload and its record), while a day of
traffic with late and redelivered events flows through. Afterwards the warehouse's live
rows and the events topic's committed live set are exactly the distinct input events.

``--kill-suite-long`` runs a larger variant (more traffic, more kills).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.settings import Settings
from tests.chaos import Cluster
from tests.scenario import (
    RawRecord,
    View,
    expected_rows,
    live,
    produce,
    read_all,
    traffic_day,
    wait_for,
    without_enrichment,
)
from tests.warehouse import Warehouse, holds_live, wait_for_warehouse

DAY_START_MS = parse_rfc3339_us("2024-03-01T00:00:00Z") // 1000
REORDER_POINTS = ("after-send", "before-commit", "after-commit")
SINK_POINTS = ("after-upload", "after-record", "after-rewrite")


def with_redeliveries(
    rng: random.Random, records: list[RawRecord], share: float
) -> list[RawRecord]:
    """``records`` with a ``share`` of them sent again a little later, as ingest retries do."""
    later: dict[int, list[RawRecord]] = {}
    for index in rng.sample(range(len(records)), int(len(records) * share)):
        later.setdefault(index + rng.randint(1, 300), []).append(records[index])
    out: list[RawRecord] = []
    for index, record in enumerate(records):
        out.append(record)
        out.extend(later.pop(index, []))
    out.extend(r for rs in later.values() for r in rs)
    return out


def kill_plan(rng: random.Random, actions: int) -> list[str]:
    """Every kind of kill at least once, then random ones: shuffled."""
    kinds = [
        *(f"reorder {p}" for p in REORDER_POINTS),
        *(f"sink {p}" for p in SINK_POINTS),
        "reorder mid-publish",
        "sink mid-publish",
        "reorder mid-rebalance",
        "sink mid-rebalance",
    ]
    plan = kinds + [rng.choice(kinds) for _ in range(max(0, actions - len(kinds)))]
    rng.shuffle(plan)
    return plan


async def act(cluster: Cluster, rng: random.Random, action: str, chunk: list[RawRecord]) -> None:
    """Produce ``chunk`` while carrying out one kill action; then wait for a settled group."""
    role, how = action.split(" ", 1)
    members = cluster.of(role)
    victim = rng.choice(members)
    if how in REORDER_POINTS or how in SINK_POINTS:
        # Restarted to kill itself at the point, within its first steps of this chunk.
        cluster.kill(victim)
        victim.start(crash_point=f"{how}:{rng.randint(1, 2)}")
        await cluster.settle()
        await produce(cluster.settings, chunk)
        await cluster.died(victim, timeout=10.0)
    elif how == "mid-publish":
        sending = asyncio.create_task(produce(cluster.settings, chunk))
        await asyncio.sleep(rng.uniform(0.05, 0.8))
        cluster.kill(victim)
        victim.start()
        await sending
    else:  # mid-rebalance: the restart makes the group rebalance; kill the other one in it
        other = next(m for m in members if m is not victim)
        cluster.kill(victim)
        victim.start()
        await produce(cluster.settings, chunk)
        await asyncio.sleep(rng.uniform(1.5, 5.0))  # the new process is joining the group
        cluster.kill(other)
        other.start()
    await cluster.settle()


def live_events(rows: list[tuple[str, dict]]) -> list[tuple[str, str, str, object]]:
    """(view, event time, properties without enrichment, event type) of each live row."""
    return sorted(
        (
            view,
            row["event_time"],
            orjson.dumps(without_enrichment(row["event_properties"])).decode(),
            row["event_type"],
        )
        for view, row in rows
    )


def check_exactly_once(
    views: list[View], events_topic: list, warehouse: Warehouse, dlq: list
) -> None:
    expected = expected_rows(views)
    inputs = sorted(
        (
            v.key,
            e["event_time"],
            orjson.dumps(orjson.loads(e["event_properties"])).decode(),
            e["event_type"],
        )
        for v in views
        for e in v.events
    )
    assert len(expected) == len(inputs), "the generated input has content-identical events"

    topic_live = live(events_topic)
    missing, extra = set(expected) - set(topic_live), set(topic_live) - set(expected)
    assert not missing and not extra, f"topic: {len(missing)} missing, {len(extra)} extra"
    topic_rows = [
        (dict(r.headers)["fs-view"].decode(), codec.decode(r.value, expected=codec.EVENT))
        for r in topic_live.values()
    ]
    assert live_events(topic_rows) == inputs

    warehouse_live = warehouse.live()  # fails on a duplicate live row
    missing, extra = set(expected) - set(warehouse_live), set(warehouse_live) - set(expected)
    assert not missing and not extra, f"warehouse: {len(missing)} missing, {len(extra)} extra"
    warehouse_rows = [
        (f"{r['device_id']}:{r['session_id']}:{r['view_id']}", r) for r in warehouse_live.values()
    ]
    assert live_events(warehouse_rows) == inputs
    published = {r.key.decode() for r in events_topic}
    assert warehouse.nulled() <= published - set(expected)
    assert not dlq, f"{len(dlq)} good records went to the DLQ"


async def test_workers_killed_between_send_state_and_commit_lose_and_duplicate_nothing(
    make_settings: Callable[..., Settings], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    long = request.config.getoption("--kill-suite-long")
    seed = 20261204
    rng = random.Random(seed)
    settings = make_settings(
        reorder_grace_s=1.0,
        sink_flush_interval_s=1.0,
        allowed_lateness_s=0,
        raw_retention_s=10 * 365 * 86_400.0,
        session_timeout_s=6.0,
        org_id="o-kills",
        warehouse_url=f"file://{tmp_path / 'lake'}",
    )
    await create_topics(settings)
    views, records = traffic_day(
        seed=seed, sessions=2_000 if long else 450, day_start_ms=DAY_START_MS
    )
    sent = with_redeliveries(rng, records, share=0.01)
    plan = kill_plan(rng, actions=36 if long else 12)
    size = -(-len(sent) // (len(plan) + 2))
    chunks = [sent[i : i + size] for i in range(0, len(sent), size)]

    cluster = Cluster(settings, tmp_path)
    for name in ("reorder-a", "reorder-b"):
        cluster.add(name, "reorder")
    for name in ("sink-a", "sink-b"):
        cluster.add(name, "sink")
    expected = set(expected_rows(views))
    try:
        cluster.start_all()
        await produce(settings, chunks[0])
        for action, chunk in zip(plan, chunks[1:], strict=False):
            await act(cluster, rng, action, chunk)
        for chunk in chunks[len(plan) + 1 :]:
            await produce(settings, chunk)
        await asyncio.sleep(3)  # pending crash points get their chance
        cluster.disarm()
        await cluster.settle()
        events = await wait_for(
            settings, settings.topic_events, lambda rs: set(live(rs)) == expected, timeout=300
        )
        warehouse = await wait_for_warehouse(settings, holds_live(expected), timeout=300)
        await cluster.settle()  # nobody died while converging
    finally:
        cluster.stop_all()
    dlq = await read_all(settings, settings.topic_dlq)
    print(
        f"\nkill suite: {len(expected)} events, {len(sent)} raw records,"
        f" deaths {dict(cluster.deaths)}"
    )
    assert cluster.kills >= 10, cluster.deaths
    assert cluster.deaths["after-send"] + cluster.deaths["before-commit"] >= 1, cluster.deaths
    check_exactly_once(views, events, warehouse, dlq)

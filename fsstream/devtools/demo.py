"""``fsstream demo``: the whole job on a local broker, narrated, with a summary at the end.

Generated traffic from the last few hours goes through the reorder and sink workers into
a warehouse (a local directory unless S3 settings are given); the partitions are sealed
at once (allowed lateness 0), and the documented rage-click query runs over the result.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

from fsstream.commands.load_definitions import load as load_definitions
from fsstream.commands.produce import (
    ViewBatch,
    encoded,
    group_batches,
    produce_batches,
    raw_event,
)
from fsstream.contract.topics import create_topics
from fsstream.core.layout import events_prefix, manifest_key
from fsstream.core.timefmt import MS_PER_HOUR, format_event_time, hour_floor_ms
from fsstream.devtools import traffic
from fsstream.devtools.embedded import EmbeddedPipeline
from fsstream.infra.object_store import open_store
from fsstream.settings import Settings

DEFINITIONS: list[dict[str, Any]] = [
    {
        "kind": "element",
        "id": "el-add-to-cart",
        "name": "Add to cart",
        "rule": {"selector": "button.add-to-cart"},
    },
    {
        "kind": "element",
        "id": "el-checkout-submit",
        "name": "Checkout submit",
        "rule": {"selector": "form#checkout button[type=submit]"},
    },
    {
        "kind": "element",
        "id": "el-primary-button",
        "name": "Primary button",
        "rule": {"selector": "button.btn-primary"},
    },
    {"kind": "element", "id": "el-logo", "name": "Logo", "rule": {"selector": "header a.logo"}},
    {
        "kind": "element",
        "id": "el-search",
        "name": "Search box",
        "rule": {"selector": "input.search-box"},
    },
    {
        "kind": "page",
        "id": "pg-home",
        "name": "Home",
        "rule": {"url": "/"},
        "is_user_defined": True,
        "fs_link_id": "home",
    },
    {
        "kind": "page",
        "id": "pg-catalog",
        "name": "Catalog",
        "rule": {"url": "/products/**"},
        "is_user_defined": True,
        "fs_link_id": "catalog",
    },
    {
        "kind": "page",
        "id": "pg-product",
        "name": "Product",
        "rule": {"url": "/products/*/*"},
        "is_user_defined": True,
        "fs_link_id": "product",
    },
    {
        "kind": "page",
        "id": "pg-checkout",
        "name": "Checkout",
        "rule": {"url": "/checkout"},
        "is_user_defined": True,
        "fs_link_id": "checkout",
    },
    {
        "kind": "page",
        "id": "pg-cart",
        "name": "Cart",
        "rule": {"url": "/cart"},
        "is_user_defined": False,
        "fs_link_id": "cart",
    },
    {
        "kind": "event",
        "id": "ev-add-to-cart",
        "name": "Added to cart",
        "rule": {"event_type": "click", "element_definition_id": "el-add-to-cart"},
    },
    {
        "kind": "event",
        "id": "ev-checkout-rage",
        "name": "Rage on checkout",
        "rule": {
            "event_type": "click",
            "page_definition_id": "pg-checkout",
            "properties": [{"path": "fs_rage_count", "op": "gt", "value": 0}],
        },
    },
    {
        "kind": "event",
        "id": "ev-order",
        "name": "Order completed",
        "rule": {
            "event_type": "custom",
            "properties": [{"path": "event_name", "op": "equals", "value": "Order Completed"}],
        },
    },
    {
        "kind": "event",
        "id": "ev-big-order",
        "name": "Big order",
        "rule": {
            "event_type": "custom",
            "properties": [
                {"path": "event_name", "op": "equals", "value": "Order Completed"},
                {"path": "event_properties.amount", "op": "gt", "value": 200},
            ],
        },
    },
]


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def demo_traffic(sessions: int, seed: int, now_ms: int) -> tuple[list[ViewBatch], int, int]:
    """Batches of generated traffic from three hours ago, the event and late-event counts."""
    start = hour_floor_ms(now_ms) - 3 * MS_PER_HOUR
    generated = sorted(
        traffic.generate(
            seed=seed,
            sessions=sessions,
            start_ms=start,
            duration_ms=100 * 60_000,
            late_fraction=0.02,
            idle_bursts=3,
        ),
        key=lambda t: t.ingested_time,
    )
    parsed = [raw_event(t.event, t.ingested_time) for t in generated]
    batches = sorted(group_batches(parsed, 20), key=lambda b: b.ingested_time)
    return batches, len(parsed), sum(t.late for t in generated)


async def _bad_records(settings: Settings, at_ms: int) -> int:
    """A few records the worker must send to the DLQ: garbage, wrong schema, no device."""
    from fsstream.contract import codec
    from fsstream.infra import kafka_clients

    bad_event = {
        "device_id": None,
        "session_id": 1,
        "view_id": 1,
        "event_time": format_event_time(at_ms * 1000),
        "event_type": "click",
        "event_properties": "{}",
        "source_type": "web",
        "source_properties": "{}",
    }
    values = [
        b"not avro at all",
        codec.encode(
            codec.EVENT,
            {
                "event_id": "x",
                "event_time": None,
                "processed_time": "",
                "updated_time": None,
                "device_id": 1,
                "session_id": None,
                "view_id": None,
                "event_type": "click",
                "event_properties": "{}",
                "source_type": "web",
                "source_properties": "{}",
                "ingested_time": at_ms,
            },
        ),
        codec.encode(codec.RAW_EVENT_BATCH, {"ingested_time": at_ms, "events": [bad_event]}),
    ]
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(
                settings.topic_raw, value, key=b"1:1:1", timestamp_ms=at_ms
            )
    finally:
        await producer.stop()
    return len(values)


async def _warehouse_state(settings: Settings, hours: set[int]) -> tuple[int, int, int, int]:
    """(files, live rows, nulled rows, sealed hours) of the warehouse right now."""
    from fsstream.sink.parquet_format import read_event_columns

    store = open_store(settings)
    try:
        files = live = nulled = 0
        for info in await store.list(events_prefix(settings.org_id)):
            if info.key.endswith(".parquet"):
                data = await store.get(info.key)
                if data is None:
                    continue
                files += 1
                types = read_event_columns(data, ["event_type"])["event_type"]
                nulled += sum(1 for t in types if t is None)
                live += sum(1 for t in types if t is not None)
        sealed = 0
        for hour in hours:
            if await store.get(manifest_key(settings.org_id, hour)) is not None:
                sealed += 1
        return files, live, nulled, sealed
    finally:
        await store.close()


def _rage_clicks(settings: Settings, workdir: Path, day: str) -> list[tuple[Any, ...]]:
    from fsstream.commands import queries

    root = Path(settings.warehouse_url.removeprefix("file://"))
    if not settings.warehouse_url.startswith("file://"):
        root = workdir / "warehouse-copy"
        asyncio.run(_copy_events(settings, root))
    rows: list[tuple[Any, ...]] = (
        queries.connect()
        .execute(queries.rage_clicks_query(queries.events_table(root, settings.org_id), day))
        .fetchall()
    )
    # The documented query orders by count alone; ties are shown by browser and path.
    return sorted(rows, key=lambda row: (-row[2], str(row[0]), str(row[1])))


async def _copy_events(settings: Settings, root: Path) -> None:
    store = open_store(settings)
    try:
        for info in await store.list(events_prefix(settings.org_id)):
            if info.key.endswith(".parquet"):
                data = await store.get(info.key)
                if data is not None:
                    path = root / info.key
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
    finally:
        await store.close()


def run_demo(overrides: dict[str, Any], *, sessions: int, seed: int, workdir: Path) -> None:
    """Run the pipeline end to end and print what it did and where the output is."""
    started = time.monotonic()
    demo_settings = {
        "app_id": "fsstream-demo",
        "org_id": "o-demo",
        "reorder_grace_s": 2.0,
        "allowed_lateness_s": 0.0,
        "sink_flush_interval_s": 2.0,
        "raw_partitions": 4,
        "events_partitions": 4,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    with EmbeddedPipeline(workdir.resolve(), overrides=demo_settings) as pipeline:
        _say("starting a local Kafka broker (the first run fetches it from Maven Central)")
        settings = pipeline.start_broker()
        _say(
            f"broker ready at {settings.bootstrap_servers[0]} after "
            f"{time.monotonic() - started:.1f}s; warehouse: {settings.warehouse_url}"
        )
        for spec, status in asyncio.run(create_topics(settings)):
            _say(f"topic {spec.name}: {status}, {spec.partitions} partitions, {spec.configs}")
        count = asyncio.run(load_definitions(settings, DEFINITIONS))
        _say(f"loaded {count} element, page and event definitions")
        now_ms = time.time_ns() // 1_000_000
        batches, events, late = demo_traffic(sessions, seed, now_ms)
        hours = {hour_floor_ms(b.ingested_time) for b in batches}
        _say(
            f"generated {events} events of {sessions} sessions ({late} arrive late, three "
            f"views get a burst after going idle) in {len(batches)} raw records over "
            f"{len(hours)} hours"
        )
        reorder = pipeline.start_worker("reorder")
        sink = pipeline.start_worker("sink")
        reorder.wait_assigned()
        sink.wait_assigned()
        _say(
            f"workers up: reorder (web {reorder.settings.web_port}), "
            f"sink (web {sink.settings.web_port}); logs in {workdir / 'logs'}"
        )
        asyncio.run(produce_batches(settings, encoded(batches)))
        bad = asyncio.run(_bad_records(settings, batches[-1].ingested_time))
        _say(f"produced {len(batches)} raw records and {bad} bad ones")
        deadline = time.monotonic() + 600
        state = (0, 0, 0, 0)
        with click.progressbar(
            length=max(events, 1),
            label="[demo] live rows in the warehouse",
            show_pos=True,
            file=sys.stdout,
        ) as bar:
            while time.monotonic() < deadline:
                state = asyncio.run(_warehouse_state(settings, hours))
                bar.update(state[1] - bar.pos)
                if state[1] >= events and state[3] == len(hours):
                    break
                time.sleep(2)
        summary = {
            "events in": pipeline.metric("fsstream_events_in_total"),
            "rows published": pipeline.metric("fsstream_events_out_total"),
            "late events": pipeline.metric("fsstream_late_events_total"),
            "tombstones": pipeline.metric("fsstream_tombstones_total"),
            "DLQ records": pipeline.metric("fsstream_dlq_records_total"),
            "files written": pipeline.metric("fsstream_sink_files_written_total"),
            "files recreated": pipeline.metric("fsstream_sink_files_recreated_total"),
        }
        files, live, nulled, sealed = state
        day = format_event_time(min(hours) * 1000)[:10]
        rage = _rage_clicks(settings, workdir, day)
    _say("summary")
    for name, value in summary.items():
        print(f"  {name:<22} {int(value)}")
    print(f"  {'parquet files':<22} {files} in {len(hours)} hourly partitions, {sealed} sealed")
    print(f"  {'warehouse rows':<22} {live} live, {nulled} nulled out")
    print(f"  rage clicks on {day} (the documented query, in DuckDB):")
    for browser, path, clicks in rage[:10]:
        print(f"    {browser!s:<10} {path!s:<24} {clicks}")
    location = settings.warehouse_url
    _say(
        f"done in {time.monotonic() - started:.0f}s; warehouse at {location}/"
        f"{events_prefix(settings.org_id)}; worker logs in {workdir.resolve() / 'logs'}"
    )
    if live != events or sealed != len(hours):
        raise SystemExit(f"incomplete: {live} of {events} rows, {sealed} of {len(hours)} sealed")

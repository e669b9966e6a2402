"""Generated views, their raw records and the rows fsstream must publish for them."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from fsstream.commands.tail import read_topic
from fsstream.contract import codec
from fsstream.core.ids import event_id, fingerprint, identify_event_id
from fsstream.core.models import view_key
from fsstream.core.timefmt import format_event_time, parse_rfc3339_us
from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import WorkerProcess, settings_env
from fsstream.infra import kafka_clients
from fsstream.settings import Settings


@dataclass
class View:
    key: str
    events: list[dict[str, Any]] = field(default_factory=list)


def make_views(rng: random.Random, count: int, per_view: int, start_ms: int) -> list[View]:
    views = []
    for n in range(count):
        device, session, view_id = 5000 + n % 7, 100 + n, n % 3 + 1
        view = View(view_key(device, session, view_id))
        moment_us = (start_ms + rng.randrange(60_000)) * 1000
        for i in range(per_view):
            moment_us += rng.randrange(1, 3_000_000)
            event_type = (
                "identify"
                if i == 1 and n % 4 == 0
                else rng.choice(["click", "navigate", "custom", "change"])
            )
            view.events.append(
                {
                    "device_id": device,
                    "session_id": session,
                    "view_id": view_id,
                    "event_time": format_event_time(moment_us),
                    "event_type": event_type,
                    "event_properties": orjson.dumps({"i": i, "n": n}).decode(),
                    "source_type": "web",
                    "source_properties": orjson.dumps({"url": {"path": f"/v/{n}"}}).decode(),
                }
            )
        views.append(view)
    return views


def expected_rows(views: list[View]) -> dict[str, dict[str, Any]]:
    """event id → raw event, for the full ordered set of every view."""
    out: dict[str, dict[str, Any]] = {}
    for view in views:
        keyed = []
        for e in view.events:
            us = parse_rfc3339_us(e["event_time"])
            fp = fingerprint(
                us, e["event_type"], e["event_properties"], e["source_type"], e["source_properties"]
            )
            keyed.append((us, fp, e))
        previous = None
        for _, fp, e in sorted(keyed, key=lambda t: (t[0], t[1])):
            eid = (
                identify_event_id(view.key, fp)
                if e["event_type"] == "identify"
                else event_id(view.key, fp, previous)
            )
            out[eid] = e
            previous = fp
    return out


@dataclass
class RawRecord:
    key: str
    timestamp_ms: int
    events: list[dict[str, Any]]
    value: bytes | None = None

    def encode(self) -> bytes:
        if self.value is not None:
            return self.value
        return codec.encode(
            codec.RAW_EVENT_BATCH, {"ingested_time": self.timestamp_ms, "events": self.events}
        )


async def produce(settings: Settings, records: list[RawRecord]) -> None:
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.topic_raw, r.encode(), key=r.key.encode(), timestamp_ms=r.timestamp_ms
            )
            for r in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_all(settings: Settings, topic: str) -> list[Any]:
    return [record async for record in read_topic(settings, topic)]


def live(records: list[Any]) -> dict[str, Any]:
    """The compacted topic: last record per key, tombstones removed."""
    last: dict[bytes, Any] = {}
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        last[record.key] = record
    return {k.decode(): r for k, r in last.items() if r.value is not None}


async def wait_for(settings: Settings, topic: str, done: Any, timeout: float = 120.0) -> list[Any]:
    """Read ``topic`` until ``done(records)`` holds; return the records."""
    deadline = time.monotonic() + timeout
    while True:
        records = await read_all(settings, topic)
        if done(records) or time.monotonic() > deadline:
            return records
        await asyncio.sleep(1.0)


def run_cli(
    settings: Settings, *args: str, stdin: bytes | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """``fsstream ARGS`` as an operator runs it, the settings in its environment; a hang
    fails the test instead of blocking it."""
    return subprocess.run(
        [sys.executable, "-m", "fsstream", *args],
        input=stdin,
        capture_output=True,
        env=settings_env(settings),
        timeout=timeout,
        check=False,
    )


@asynccontextmanager
async def running_pipeline(
    settings: Settings, tmp_path: Path, *, sink_settings: Settings | None = None
) -> AsyncIterator[tuple[WorkerProcess, WorkerProcess]]:
    """A reorder worker with ``settings`` and a sink worker (``sink_settings``, else the
    same on a port of its own), both owning partitions; stopped on the way out. Their
    logs are ``reorder.log`` and ``sink.log`` in ``tmp_path``."""
    if sink_settings is None:
        sink_settings = settings.model_copy(update={"web_port": free_port()})
    with (
        WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as reorder,
        WorkerProcess(sink_settings, "sink", tmp_path / "sink.log") as sink,
    ):
        await asyncio.to_thread(reorder.wait_assigned)
        await asyncio.to_thread(sink.wait_assigned)
        yield reorder, sink


async def settled_metric(
    worker: WorkerProcess, name: str, expected: float, timeout: float = 30.0, **labels: str
) -> float:
    """A worker's metric once it equals ``expected``, or its value when ``timeout`` is over.

    Counters move just after the commit whose records a reader sees, so a test waits for
    them rather than reading them once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(worker.metric, name, **labels)
        if value == expected or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.2)


def traffic_day(
    seed: int, sessions: int, day_start_ms: int, hours: int = 22
) -> tuple[list[View], list[RawRecord]]:
    """Generated traffic over most of a day (or ``hours``), late events included: its views
    and the raw records to send, in ingestion order."""
    from fsstream.commands.produce import group_batches, raw_event
    from fsstream.devtools import traffic

    generated = sorted(
        traffic.generate(
            seed=seed,
            sessions=sessions,
            start_ms=day_start_ms,
            duration_ms=hours * 3_600_000,
            late_fraction=0.03,
        ),
        key=lambda t: t.ingested_time,
    )
    parsed = [raw_event(t.event, t.ingested_time) for t in generated]
    views: dict[str, View] = {}
    for key, _, record in parsed:
        views.setdefault(key, View(key)).events.append(record)
    records = [RawRecord(b.key, b.ingested_time, b.events) for b in group_batches(parsed, 20)]
    records.sort(key=lambda r: r.timestamp_ms)
    return list(views.values()), records


ENRICHMENT_KEYS = ("event_definition_id", "additional_event_definition_ids")


def without_enrichment(event_properties: str) -> dict[str, Any]:
    """Published event_properties minus the definition ids enrichment added."""
    props = orjson.loads(event_properties)
    for key in ENRICHMENT_KEYS:
        props.pop(key, None)
    target = props.get("target")
    if isinstance(target, dict):
        target.pop("element_definition_id", None)
        target.pop("additional_element_definition_ids", None)
    return props

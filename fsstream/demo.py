"""``fsstream demo``: the whole job on a local broker, narrated."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import orjson

from fsstream import traffic
from fsstream.localkafka import LocalKafka
from fsstream.produce import group_batches, parse_ndjson, produce_batches
from fsstream.settings import Settings
from fsstream.tail import describe_record, read_topic
from fsstream.topics import create_topics


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def write_sample(path: Path, *, sessions: int, seed: int, start_ms: int) -> int:
    """Write generated traffic as NDJSON (with ingested times); return the event count."""
    events = sorted(
        traffic.generate(seed=seed, sessions=sessions, start_ms=start_ms, duration_ms=600_000),
        key=lambda item: item.ingested_time,
    )
    with path.open("wb") as out:
        for item in events:
            out.write(orjson.dumps({**item.event, "ingested_time": item.ingested_time}) + b"\n")
    return len(events)


async def _produce_and_tail(settings: Settings, sample: Path, tail_path: Path) -> dict[str, Any]:
    created = await create_topics(settings)
    for spec, status in created:
        _say(f"topic {spec.name}: {status} ({spec.partitions} partitions, {spec.configs})")
    with sample.open("rb") as lines:
        events = parse_ndjson(lines, ingested_time=0)
    records, count = await produce_batches(settings, group_batches(events, 20))
    _say(f"produced {count} events in {records} records to {settings.topic_raw}")
    seen = 0
    with tail_path.open("wb") as out:
        async for record in read_topic(settings, settings.topic_raw):
            out.write(orjson.dumps(describe_record(record)) + b"\n")
            seen += 1
    return {"records": records, "events": count, "tailed": seen}


def run_demo(overrides: dict[str, Any], *, sessions: int, seed: int, workdir: Path) -> None:
    """Start a broker, create the topics, produce generated traffic and read it back."""
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    _say("starting a local Kafka broker (the first run fetches it from Maven Central)")
    with LocalKafka() as broker:
        _say(f"broker ready at {broker.bootstrap} in {time.monotonic() - started:.1f}s")
        settings = Settings(
            **{k: v for k, v in overrides.items() if v is not None},
            broker_url=f"kafka://{broker.bootstrap}",
        )
        sample = workdir / "sample-events.ndjson"
        count = write_sample(sample, sessions=sessions, seed=seed, start_ms=int(time.time() * 1000))
        _say(f"generated {count} events from {sessions} sessions into {sample}")
        tail_path = workdir / "raw-topic.jsonl"
        result = asyncio.run(_produce_and_tail(settings, sample, tail_path))
        _say(f"read back {result['tailed']} records from {settings.topic_raw} into {tail_path}")
    _say(f"done in {time.monotonic() - started:.1f}s; output in {workdir.resolve()}")

"""``fsstream bench``: what the pipeline costs, measured on this machine.

One run starts a local broker and a local S3 server, then for each input shape
(about 20 events per raw record, and one event per record):

1. produces N generated events to a fresh raw topic (a backlog);
2. runs the floor, a bare aiokafka consume + Avro decode loop over that topic, in its
   own process;
3. runs the reorder and sink workers over the backlog until every row is in a sealed
   parquet partition on S3, and reads their CPU time and peak RSS from /proc;
4. produces a live stream at a fixed rate and measures, for each row, the time from
   its raw record to its publication on the events topic;
5. times the pure core in this process, without Kafka: decoding and checking the raw
   records, ordering them with the ``Reorderer``, and enriching them (50 element, 20
   page and 20 event definitions, one matcher per raw record).

Last, in this process, it times one uncached element match against paths up to 8,000
elements deep and up to 1,000 definitions, which must grow linearly with both.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition

from fsstream.commands.produce import (
    ViewBatch,
    encoded,
    group_batches,
    produce_batches,
    raw_event,
)
from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.core.layout import events_prefix
from fsstream.core.timefmt import MS_PER_HOUR, hour_floor_ms
from fsstream.devtools import traffic
from fsstream.devtools.embedded import EmbeddedPipeline
from fsstream.devtools.processes import settings_env
from fsstream.infra import kafka_clients
from fsstream.infra.object_store import open_store
from fsstream.infra.runtime import tune_collector
from fsstream.reorder.agent import OutputRecord
from fsstream.reorder.worker import send_batches
from fsstream.settings import Settings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TRANSACTION_COST_ROWS = 500
"""Rows per batch in the transaction cost measurement: a few raw records' worth."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """The process's high-water resident set size."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class ProcessCost:
    """CPU and memory of one process over a measured interval."""

    name: str
    cpu_s: float
    peak_rss_mib: float


@dataclass
class ModeResult:
    """The figures of one input shape."""

    mode: str
    events: int
    records: int
    events_per_s: float = 0.0
    cpu_s_per_million: float = 0.0
    processes: list[ProcessCost] = field(default_factory=list)
    p99_latency_s: float = 0.0
    p50_latency_s: float = 0.0
    parquet_bytes_per_event: float = 0.0
    floor_events_per_s: float = 0.0
    floor_cpu_s_per_million: float = 0.0
    floor_peak_rss_mib: float = 0.0
    core_check_us_per_event: float = 0.0
    core_reorder_events_per_s: float = 0.0
    core_enrich_us_per_event: float = 0.0
    transactions: int = 0
    transaction_mean_ms: float = 0.0


@dataclass
class TransactionCost:
    """One batch of rows published with and without a transaction around it."""

    rows_per_batch: int
    plain_cpu_us: float
    plain_ms: float
    transaction_cpu_us: float
    transaction_ms: float


def bench_batches(
    events: int, per_record: int, start_ms: int, seed: int = 42
) -> tuple[list[ViewBatch], int]:
    """Generated traffic of about ``events`` events, ``per_record`` events per raw record."""
    sessions = max(1, events // 100)
    generated = traffic.generate(
        seed=seed,
        sessions=sessions,
        start_ms=start_ms,
        duration_ms=MS_PER_HOUR // 2,
        late_fraction=0.01,
        view_events=(30, 50),
        batch_window_ms=(600_000, 600_001) if per_record > 1 else (1, 2),
        batch_events=per_record,
    )
    parsed = [raw_event(t.event, t.ingested_time) for t in generated][:events]
    batches = sorted(group_batches(parsed, per_record), key=lambda b: b.ingested_time)
    return batches, len(parsed)


async def floor_loop(settings: Settings, expected_events: int) -> dict[str, float]:
    """Consume the raw topic and decode every record: the cost no pipeline can beat."""
    consumer = await kafka_clients.start(kafka_clients.consumer(settings, max_poll_records=5_000))
    started = time.monotonic()
    cpu_started = time.process_time()
    events = 0
    try:
        await kafka_clients.assign_from_beginning(consumer, settings.topic_raw)
        while events < expected_events:
            for records in (await consumer.getmany(timeout_ms=1_000)).values():
                for record in records:
                    if record.value:
                        events += len(codec.decode(record.value, codec.RAW_EVENT_BATCH)["events"])
    finally:
        await consumer.stop()
    return {
        "events": events,
        "seconds": time.monotonic() - started,
        "cpu_s": time.process_time() - cpu_started,
    }


def run_floor(settings: Settings, events: int) -> tuple[dict[str, float], float]:
    """The floor loop in a process of its own; (figures, peak RSS MiB)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fsstream.devtools.bench", "floor", str(events)],
        env=settings_env(settings),
        stdout=subprocess.PIPE,
    )
    output, _ = process.communicate(timeout=3_600)
    figures = json.loads(output.decode().strip().splitlines()[-1])
    return figures, figures.pop("peak_rss_mib")


async def warehouse_rows(settings: Settings) -> tuple[int, int, int]:
    """(rows, parquet bytes, sealed partitions) in the warehouse now."""
    from fsstream.sink.parquet_format import read_event_columns

    store = open_store(settings)
    rows = size = sealed = 0
    try:
        for info in await store.list(events_prefix(settings.org_id)):
            if info.key.endswith(".parquet"):
                data = await store.get(info.key)
                if data is not None:
                    size += len(data)
                    rows += sum(
                        1 for t in read_event_columns(data, ["event_type"])["event_type"] if t
                    )
            elif info.key.endswith("_manifest.json"):
                sealed += 1
    finally:
        await store.close()
    return rows, size, sealed


async def live_latency(settings: Settings, rate: int, seconds: int) -> list[float]:
    """Produce events at ``rate`` per second; return raw-to-published delays of their rows."""
    now_ms = time.time_ns() // 1_000_000
    batches, _ = bench_batches(rate * seconds, 20, now_ms - 1, seed=7)
    started_ms = time.time_ns() // 1_000_000
    producer = kafka_clients.producer(settings)
    await producer.start()
    sent_events = 0
    try:
        for batch in batches:
            due = started_ms + sent_events * 1000 // rate
            delay = due - time.time_ns() // 1_000_000
            if delay > 0:
                await asyncio.sleep(delay / 1000)
            at = time.time_ns() // 1_000_000
            batch.ingested_time = at
            await producer.send(
                settings.topic_raw, batch.encode(), key=batch.key.encode(), timestamp_ms=at
            )
            sent_events += len(batch.events)
        await producer.flush()
    finally:
        await producer.stop()
    await asyncio.sleep(settings.reorder_grace_s + 3)
    delays: list[float] = []
    consumer = await kafka_clients.start(kafka_clients.consumer(settings, max_poll_records=5_000))
    try:
        reading = await kafka_clients.read_from_beginning(consumer, settings.topic_events)
        seen: set[bytes] = set()
        async for records in reading.batches(timeout_ms=1_000):
            for record in records:
                if record.value is None or record.key in seen:
                    continue
                seen.add(record.key)
                ingested = codec.decode(record.value, codec.EVENT)["ingested_time"]
                if ingested >= started_ms:
                    delays.append((record.timestamp - ingested) / 1000)
    finally:
        await consumer.stop()
    return delays


def time_core(settings: Settings, batches: list[ViewBatch], per_record: int) -> dict[str, float]:
    """The pure core's cost, in this process: µs per event to decode and check raw records,
    events/s through the Reorderer, and µs per event to enrich."""
    import random

    from fsstream.core.raw import Limits, check_batch
    from fsstream.core.reorder import Arrival, DictViewStore, Reorderer
    from fsstream.devtools import enrich_bench

    values = [(b.key, b.encode(), b.ingested_time) for b in batches]
    limits = Limits(
        max_age_ms=int(settings.max_event_age_s * 1000),
        max_skew_ms=int(settings.max_clock_skew_s * 1000),
    )
    # Timed a batch at a time, each dropped before the next as the worker does; what
    # the Reorderer needs of each event is kept aside, untimed.
    step = settings.reorder_batch_records
    check_s = 0.0
    ordered: list[tuple[str, list[tuple[int, int, bool]]]] = []
    for first in range(0, len(values), step):
        started = time.perf_counter()
        checked = [
            check_batch(codec.decode(value, expected=codec.RAW_EVENT_BATCH), key, ts, limits)
            for key, value, ts in values[first : first + step]
        ]
        check_s += time.perf_counter() - started
        ordered.extend(
            (view_key, [(e.time_us, e.fp, e.event_type == "identify") for e in raw_events])
            for view_key, raw_events in checked
        )
        del checked
    events = sum(len(record_events) for _, record_events in ordered)
    reorderer = Reorderer(
        DictViewStore(),
        grace_ms=int(settings.reorder_grace_s * 1000),
        ttl_ms=int(settings.view_ttl_s * 1000),
    )
    started = time.perf_counter()
    for offset, ((view_key, record_events), (_, _, ts)) in enumerate(
        zip(ordered, values, strict=True)
    ):
        arrivals = [
            Arrival(time_us, fp, i, identify)
            for i, (time_us, fp, identify) in enumerate(record_events)
        ]
        reorderer.on_record(view_key, arrivals, offset=offset, record_ts_ms=ts, ingested_ms=ts)
    reorderer.advance(2**62)
    reorder_s = time.perf_counter() - started
    rng = random.Random(7)
    sample = enrich_bench.encoded(
        enrich_bench.events(rng, enrich_bench.workload(rng), min(events, 100_000))
    )
    catalog = enrich_bench.benchmark_catalog()
    enrich_bench.run_enrichment(catalog, sample, per_record)  # warm the caches
    enrich_s = enrich_bench.run_enrichment(catalog, sample, per_record)
    enrich_s -= enrich_bench.run_enrichment(None, sample, per_record)  # JSON parsing
    return {
        "check_us": check_s / events * 1e6,
        "reorder_per_s": events / reorder_s,
        "enrich_us": max(enrich_s, 0.0) / len(sample) * 1e6,
    }


def fresh_topics(settings: Settings, name: str) -> Settings:
    """``settings`` with an app id, topics and org of their own, the topics created."""
    tag = f"{name}-{os.getpid()}"
    settings = settings.model_copy(
        update={
            "app_id": f"bench-{tag}",
            "topic_raw": f"bench.{tag}.raw",
            "topic_events": f"bench.{tag}.events",
            "topic_dlq": f"bench.{tag}.dlq",
            "topic_definitions": f"bench.{tag}.definitions",
            "org_id": f"bench-{tag}",
        }
    )
    asyncio.run(create_topics(settings))
    return settings


async def publish_cost(
    settings: Settings, *, transactional: bool, batches: int, rows: int
) -> tuple[float, float]:
    """(CPU µs, wall ms) per batch of ``rows`` rows published as the reorder worker does.

    With ``transactional``, each batch is one transaction holding the rows and an input
    offset; without it, the same rows go through an idempotent producer and are awaited.
    """
    options: dict[str, Any] = {"linger_ms": 0, "client_id": f"{settings.app_id}-txn-cost"}
    if transactional:
        options["transactional_id"] = f"{settings.app_id}-txn-cost"
    else:
        options["enable_idempotence"] = True
    producer = kafka_clients.producer(settings, **options)
    value = b"x" * 300
    records: list[OutputRecord] = [
        OutputRecord(n % settings.events_partitions, b"%d" % n, value, []) for n in range(rows)
    ]
    raw = TopicPartition(settings.topic_raw, 0)
    await producer.start()
    try:
        cpu = wall = 0.0
        for n in range(batches + 5):  # five to warm up
            cpu_at, wall_at = time.process_time(), time.perf_counter()
            if transactional:
                await producer.begin_transaction()
            await asyncio.gather(*await send_batches(producer, settings.topic_events, records))
            if transactional:
                await producer.send_offsets_to_transaction({raw: n}, f"{settings.app_id}-cost")
                await producer.commit_transaction()
            if n >= 5:
                cpu += time.process_time() - cpu_at
                wall += time.perf_counter() - wall_at
    finally:
        await producer.stop()
    return cpu / batches * 1e6, wall / batches * 1e3


def transaction_cost(settings: Settings, rows: int, batches: int = 200) -> TransactionCost:
    """What a transaction adds to publishing one batch, in this process, on fresh topics."""
    settings = fresh_topics(settings, "txn")
    plain = asyncio.run(publish_cost(settings, transactional=False, batches=batches, rows=rows))
    txn = asyncio.run(publish_cost(settings, transactional=True, batches=batches, rows=rows))
    return TransactionCost(rows, *plain, *txn)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run_mode(
    pipeline: EmbeddedPipeline,
    mode: str,
    events: int,
    per_record: int,
    rate: int,
    live_seconds: int,
    say: Any,
) -> ModeResult:
    assert pipeline.settings is not None
    settings = pipeline.settings = fresh_topics(pipeline.settings, mode)
    start_ms = hour_floor_ms(time.time_ns() // 1_000_000) - 3 * MS_PER_HOUR
    say(f"{mode}: generating {events} events, {per_record} per raw record")
    batches, produced = bench_batches(events, per_record, start_ms)
    result = ModeResult(mode, produced, len(batches))
    say(f"{mode}: producing {produced} events in {len(batches)} records")
    asyncio.run(produce_batches(settings, encoded(batches), linger_ms=20, max_batch_size=1_048_576))
    say(f"{mode}: the pure core in this process, collected as in a worker")
    tune_collector()
    core = time_core(settings, batches, per_record)
    result.core_check_us_per_event = core["check_us"]
    result.core_reorder_events_per_s = core["reorder_per_s"]
    result.core_enrich_us_per_event = core["enrich_us"]
    del batches
    say(f"{mode}: floor (bare consume + Avro decode)")
    floor, floor_rss = run_floor(settings, produced)
    result.floor_events_per_s = floor["events"] / floor["seconds"]
    result.floor_cpu_s_per_million = floor["cpu_s"] / produced * 1e6
    result.floor_peak_rss_mib = floor_rss
    say(f"{mode}: running the reorder and sink workers over the backlog")
    workers = [
        pipeline.start_worker("reorder", f"{mode}-reorder"),
        pipeline.start_worker("sink", f"{mode}-sink"),
    ]
    for worker in workers:
        worker.wait_assigned()
    pids = {w.role: w.pid for w in workers}
    cpu_before = {role: cpu_seconds(pid) for role, pid in pids.items() if pid}
    started = time.monotonic()
    while True:
        rows, size, sealed = asyncio.run(warehouse_rows(settings))
        if rows >= produced and sealed:
            break
        if time.monotonic() - started > 7_200:
            raise TimeoutError(f"{mode}: only {rows} of {produced} rows after two hours")
        time.sleep(1.0)
    elapsed = time.monotonic() - started
    cpu = {role: cpu_seconds(pid) - cpu_before[role] for role, pid in pids.items() if pid}
    result.transactions = int(pipeline.metric("fsstream_reorder_transaction_seconds_count"))
    result.transaction_mean_ms = (
        pipeline.metric("fsstream_reorder_transaction_seconds_sum")
        / max(result.transactions, 1)
        * 1e3
    )
    result.events_per_s = produced / elapsed
    result.cpu_s_per_million = sum(cpu.values()) / produced * 1e6
    result.parquet_bytes_per_event = size / max(rows, 1)
    say(f"{mode}: live stream at {rate} events/s for {live_seconds}s")
    delays = asyncio.run(live_latency(settings, rate, live_seconds))
    result.p99_latency_s = percentile(delays, 0.99)
    result.p50_latency_s = percentile(delays, 0.50)
    result.processes = [
        ProcessCost(role, cpu[role], peak_rss_bytes(pid) / 2**20)
        for role, pid in pids.items()
        if pid
    ]
    for worker in workers:
        worker.stop()
    return result


def report(
    results: list[ModeResult],
    cost: TransactionCost | None = None,
    matching: dict[str, Any] | None = None,
) -> str:
    lines = []
    for r in results:
        lines += [
            f"== {r.mode}: {r.events} events in {r.records} raw records "
            f"({r.events / max(r.records, 1):.1f} per record)",
            f"  CPU-s per million events (all fsstream processes): {r.cpu_s_per_million:8.1f}",
            f"  events/s end to end:                               {r.events_per_s:8.0f}",
        ]
        for p in r.processes:
            rate = r.events / p.cpu_s if p.cpu_s else 0.0
            lines.append(
                f"  {p.name:<8} CPU {p.cpu_s:7.1f}s = {rate:8.0f} events per CPU-s,"
                f" peak RSS {p.peak_rss_mib:7.1f} MiB"
            )
        lines += [
            f"  p50 / p99 raw → events topic latency:              "
            f"{r.p50_latency_s:5.2f}s / {r.p99_latency_s:5.2f}s",
            f"  parquet bytes per event:                           "
            f"{r.parquet_bytes_per_event:8.1f}",
            f"  floor (consume + Avro decode): {r.floor_events_per_s:8.0f} events/s, "
            f"{r.floor_cpu_s_per_million:6.1f} CPU-s per million, "
            f"peak RSS {r.floor_peak_rss_mib:6.1f} MiB",
            f"  pipeline / floor CPU: "
            f"{r.cpu_s_per_million / max(r.floor_cpu_s_per_million, 1e-9):5.1f}x",
            f"  pure core, no Kafka: decode + check {r.core_check_us_per_event:5.1f} µs/event,"
            f" Reorderer {r.core_reorder_events_per_s:8.0f} events/s,"
            f" enrichment {r.core_enrich_us_per_event:5.1f} µs/event",
            f"  reorder transactions over the backlog: {r.transactions},"
            f" {r.events / max(r.transactions, 1):.0f} events and"
            f" {r.transaction_mean_ms:.1f} ms each",
        ]
    if cost is not None:
        lines += [
            f"== publishing {cost.rows_per_batch} rows, in this process:",
            f"  without a transaction: {cost.plain_cpu_us:8.0f} CPU-µs, {cost.plain_ms:6.2f} ms",
            f"  in one transaction:    {cost.transaction_cpu_us:8.0f} CPU-µs,"
            f" {cost.transaction_ms:6.2f} ms",
        ]
    if matching is not None:
        from fsstream.devtools import enrich_bench

        lines.append("== one uncached element match, every definition matching, in this process:")
        lines += enrich_bench.describe_matching(matching)
    return "\n".join(lines)


def run_bench(
    overrides: dict[str, Any],
    *,
    events: int,
    rate: int,
    live_seconds: int,
    workdir: Path,
    modes: list[str],
) -> list[ModeResult]:
    def say(message: str) -> None:
        print(f"[bench] {message}", flush=True)

    results: list[ModeResult] = []
    settings = {
        "reorder_grace_s": 5.0,
        "allowed_lateness_s": 0.0,
        "sink_flush_interval_s": 5.0,
        "raw_partitions": 4,
        "events_partitions": 4,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    with EmbeddedPipeline(workdir.resolve(), overrides=settings, s3=True) as pipeline:
        say("starting the local broker and S3 server")
        pipeline.start_broker()
        for mode in modes:
            per_record = 20 if mode == "batched" else 1
            results.append(run_mode(pipeline, mode, events, per_record, rate, live_seconds, say))
        say("the cost of a transaction around one published batch")
        assert pipeline.settings is not None
        cost = transaction_cost(pipeline.settings, rows=TRANSACTION_COST_ROWS)
    say("element matching against deep paths and many definitions")
    from fsstream.devtools import enrich_bench

    matching = enrich_bench.matching_costs()
    print(report(results, cost, matching), flush=True)
    figures = {
        "modes": [asdict(r) for r in results],
        "transaction": asdict(cost),
        "matching_us": matching,
    }
    (workdir / "bench.json").write_text(json.dumps(figures, indent=2))
    return results


def _floor_main(events: int) -> None:
    figures = asyncio.run(floor_loop(Settings(), events))
    figures["peak_rss_mib"] = peak_rss_bytes(os.getpid()) / 2**20
    print(json.dumps(figures))


if __name__ == "__main__":
    if sys.argv[1] == "floor":
        _floor_main(int(sys.argv[2]))

"""Operating fsstream: the demo, replay, health and metrics, two workers per role."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import orjson
from prometheus_client.parser import text_string_to_metric_families

from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import WorkerProcess, metric_value, settings_env
from fsstream.settings import Settings
from tests.scenario import (
    expected_rows,
    live,
    produce,
    read_all,
    running_pipeline,
    settled_metric,
    traffic_day,
    wait_for,
)
from tests.warehouse import holds_live, read_warehouse, wait_for_warehouse

DAY_START_MS = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000


def pipeline_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, **extra: Any
) -> Settings:
    return make_settings(
        reorder_grace_s=1.0,
        sink_flush_interval_s=1.0,
        allowed_lateness_s=0,
        raw_retention_s=10 * 365 * 86_400.0,
        org_id="o-ops",
        warehouse_url=f"file://{tmp_path / 'lake'}",
        **extra,
    )


def with_port(settings: Settings, name: str, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={"web_port": free_port(), "data_dir": tmp_path / "state" / name}
    )


def live_rows_without_updates(warehouse: Any) -> dict[str, dict[str, Any]]:
    """Live rows minus bookkeeping columns a file recreation may set."""
    return {
        k: {c: v for c, v in row.items() if c not in ("updated_time", "_file", "_hour")}
        for k, row in warehouse.live().items()
    }


async def test_replay_rebuilds_the_same_live_rows_twice(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = pipeline_settings(make_settings, tmp_path)
    await create_topics(settings)
    views, records = traffic_day(seed=9, sessions=60, day_start_ms=DAY_START_MS)
    expected = set(expected_rows(views))
    async with running_pipeline(
        with_port(settings, "reorder", tmp_path),
        tmp_path,
        sink_settings=with_port(settings, "sink", tmp_path),
    ):
        await produce(settings, records)
        original = await wait_for_warehouse(settings, holds_live(expected))
    assert set(original.live()) == expected

    replays = []
    for number in (1, 2):
        target = f"file://{tmp_path / 'replayed'}"
        result = subprocess.run(
            [sys.executable, "-m", "fsstream", "replay", "--to", target],
            env=settings_env(settings),
            capture_output=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode()
        assert b"replayed" in result.stdout
        replays.append(await read_warehouse(settings.model_copy(update={"warehouse_url": target})))
        assert set(replays[-1].live()) == expected, f"replay {number}"
    first, second = replays
    assert first.live() == second.live()
    assert sorted(first.files) == sorted(second.files)
    assert live_rows_without_updates(first) == live_rows_without_updates(original)
    # Replaying rebuilt the manifests as well.
    assert {m["partition"] for m in first.manifests.values()} == {
        m["partition"] for m in original.manifests.values()
    }


async def test_health_and_metrics_endpoints_serve_the_documented_names_and_counts(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = pipeline_settings(make_settings, tmp_path)
    await create_topics(settings)
    views, records = traffic_day(seed=4, sessions=10, day_start_ms=DAY_START_MS)
    expected = set(expected_rows(views))
    events_sent = sum(len(r.events) for r in records)
    sink_settings = with_port(settings, "sink", tmp_path)
    async with running_pipeline(
        with_port(settings, "reorder", tmp_path), tmp_path, sink_settings=sink_settings
    ) as (reorder, sink):
        health = reorder.health()
        assert health is not None and health["status"] == "ok"
        assert any(p.startswith(f"{settings.topic_raw}/") for p in health["assigned"])
        await produce(settings, records)
        await wait_for_warehouse(settings, holds_live(expected))
        events_in = await settled_metric(reorder, "fsstream_events_in_total", events_sent)
        await asyncio.sleep(6)  # one lag sample, and every hour sealed
        published = await read_all(settings, settings.topic_events)
        warehouse = await read_warehouse(settings)
        rows_out = sum(1 for r in published if r.value is not None)
        tombstones_out = len(published) - rows_out
        events_out = await settled_metric(reorder, "fsstream_events_out_total", rows_out)
        tombstones = await settled_metric(reorder, "fsstream_tombstones_total", tombstones_out)
        files_written = await settled_metric(
            sink, "fsstream_sink_files_written_total", len(warehouse.files)
        )
        rows_written = await settled_metric(
            sink, "fsstream_sink_rows_written_total", len(warehouse.rows())
        )
        reorder_metrics, sink_metrics = reorder.metrics(), sink.metrics()
        with urllib.request.urlopen(
            f"http://127.0.0.1:{sink_settings.web_port}/health", timeout=2
        ) as response:
            assert orjson.loads(response.read())["status"] == "ok"
    for family, kind in (
        ("fsstream_events_in", "counter"),
        ("fsstream_events_out", "counter"),
        ("fsstream_late_events", "counter"),
        ("fsstream_tombstones", "counter"),
        ("fsstream_dlq_records", "counter"),
        ("fsstream_consumer_lag", "gauge"),
        ("fsstream_open_views", "gauge"),
        ("fsstream_raw_to_events_latency_seconds", "histogram"),
        ("fsstream_definitions_applied", "counter"),
    ):
        assert re.search(rf"^# TYPE {family}(_total)? {kind}$", reorder_metrics, re.M), family
    for family, kind in (
        ("fsstream_sink_buffered_rows", "gauge"),
        ("fsstream_sink_buffered_bytes", "gauge"),
        ("fsstream_sink_buffered_bytes_peak", "gauge"),
        ("fsstream_sink_files_written", "counter"),
        ("fsstream_sink_files_recreated", "counter"),
        ("fsstream_sink_rows_written", "counter"),
        ("fsstream_s3_retries", "counter"),
        ("fsstream_sink_seal_lag_seconds", "gauge"),
        ("fsstream_sink_sync_latency_seconds", "histogram"),
        ("fsstream_consumer_lag", "gauge"),
    ):
        assert re.search(rf"^# TYPE {family}(_total)? {kind}$", sink_metrics, re.M), family

    def reorder_value(name: str, **labels: str) -> float:
        return metric_value(reorder_metrics, name, **labels)

    def sink_value(name: str, **labels: str) -> float:
        return metric_value(sink_metrics, name, **labels)

    # The reorder worker counted the work it was given and the records it published.
    assert events_in == events_sent
    assert reorder_value("fsstream_raw_records_in_total") == len(records)
    assert reorder_value("fsstream_duplicate_events_total") == 0  # nothing sent twice
    assert events_out == rows_out >= len(expected)
    assert tombstones == tombstones_out
    late = reorder_value("fsstream_late_events_total")
    assert late <= events_sent and (tombstones == 0 or late > 0)
    assert reorder_value("fsstream_dlq_records_total") == 0
    assert reorder_value("fsstream_definitions_applied_total") == 0
    assert reorder_value("fsstream_open_views") == len(views)
    assert reorder_value("fsstream_raw_to_events_latency_seconds_count") > 0
    assert lagged(reorder_metrics, settings.topic_raw) == set(range(settings.raw_partitions))
    # The sink counted the files and rows the warehouse holds, and holds nothing back.
    assert files_written == len(warehouse.files) >= 1
    assert rows_written == len(warehouse.rows()) >= len(expected)
    assert sink_value("fsstream_sink_buffered_rows") == 0
    assert sink_value("fsstream_sink_buffered_bytes") == 0
    assert sink_value("fsstream_sink_buffered_bytes_peak") > 0
    assert sink_value("fsstream_s3_retries_total") == 0
    assert sink_value("fsstream_sink_seal_lag_seconds") == 0
    assert sink_value("fsstream_sink_sync_latency_seconds_count") > 0
    assert lagged(sink_metrics, settings.topic_events) == set(range(settings.events_partitions))


def lagged(exposition: str, topic: str) -> set[int]:
    """The partitions of ``topic`` a worker reports its consumer lag for."""
    return {
        int(sample.labels["partition"])
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "fsstream_consumer_lag" and sample.labels["topic"] == topic
    }


async def settled_shares(
    workers: dict[str, WorkerProcess], settings: Settings, timeout: float = 60.0
) -> dict[str, int]:
    """Partitions each worker owns once both roles' groups have settled: every partition
    owned by one member (a rebalance in progress shows fewer)."""
    totals = {"reorder": settings.raw_partitions, "sink": settings.events_partitions}
    deadline = time.monotonic() + timeout
    while True:
        shares = {name: len((w.health() or {}).get("assigned", [])) for name, w in workers.items()}
        owned = {
            role: sum(n for name, n in shares.items() if name.startswith(role)) for role in totals
        }
        if owned == totals or time.monotonic() > deadline:
            return shares
        await asyncio.sleep(0.5)


async def test_stopping_one_of_two_workers_per_role_moves_its_partitions(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = pipeline_settings(make_settings, tmp_path, session_timeout_s=10.0)
    await create_topics(settings)
    views, records = traffic_day(seed=12, sessions=80, day_start_ms=DAY_START_MS)
    expected = set(expected_rows(views))
    half = len(records) // 2
    workers = {
        name: WorkerProcess(
            with_port(settings, name, tmp_path), name.split("-")[0], tmp_path / f"{name}.log"
        ).start()
        for name in ("reorder-a", "reorder-b", "sink-a", "sink-b")
    }
    try:
        for worker in workers.values():
            worker.wait_assigned()
        shares = await settled_shares(workers, settings)
        await produce(settings, records[:half])
        await asyncio.sleep(2)
        assert workers["reorder-b"].stop() == 0
        assert workers["sink-b"].stop() == 0
        await produce(settings, records[half:])
        events = await wait_for(
            settings, settings.topic_events, lambda rs: set(live(rs)) == expected
        )
        warehouse = await wait_for_warehouse(settings, holds_live(expected))
        # The survivors own every partition now.
        survivors = {name: w.health()["assigned"] for name, w in workers.items() if w.alive()}
    finally:
        for worker in workers.values():
            worker.stop()
    assert all(n > 0 for n in shares.values()), f"partitions were not shared: {shares}"
    assert (
        sum(1 for p in survivors["reorder-a"] if p.startswith(f"{settings.topic_raw}/"))
        == settings.raw_partitions
    )
    assert (
        sum(1 for p in survivors["sink-a"] if p.startswith(f"{settings.topic_events}/"))
        == settings.events_partitions
    )
    assert set(live(events)) == expected
    assert set(warehouse.live()) == expected
    all_ids = {r.key.decode() for r in await read_all(settings, settings.topic_events)}
    assert warehouse.nulled() <= all_ids - expected


def test_demo_runs_end_to_end_on_a_small_scale(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fsstream",
            "demo",
            "--sessions",
            "40",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        timeout=600,
        check=False,
    )
    output = result.stdout.decode()
    assert result.returncode == 0, output[-3000:] + result.stderr.decode()[-3000:]
    for line in ("summary", "DLQ records", "parquet files", "rage clicks on", "done in"):
        assert line in output, line
    dlq = [line for line in output.splitlines() if "DLQ records" in line]
    assert dlq[0].split()[-1] == "3"
    assert list((tmp_path / "demo" / "warehouse").rglob("*.parquet"))
    assert list((tmp_path / "demo" / "warehouse").rglob("_manifest.json"))
    # A clean first run: no ERROR line from the demo or its workers, transient start-up
    # states included, and every rage-click row names a browser and a path.
    logs = [result.stderr.decode(), output]
    logs += [p.read_text() for p in (tmp_path / "demo" / "logs").glob("*.log")]
    errors = [line for text in logs for line in text.splitlines() if "ERROR" in line]
    assert not errors, errors[:5]
    rage = output.split("rage clicks on", 1)[1].split("[demo] done", 1)[0].splitlines()[1:]
    assert rage
    assert not [row for row in rage if "None" in row.split()], rage
    # The README's plain-DuckDB rage-click query runs verbatim over the demo's warehouse.
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    query = readme.split("<<'SQL'\n", 1)[1].split("\nSQL\n", 1)[0]
    rows = duckdb.connect().sql(query.replace("demo-output/", f"{tmp_path / 'demo'}/")).fetchall()
    assert rows and all(browser and path for browser, path, _ in rows)
    assert rows == sorted(rows, key=lambda r: (-r[2], r[0], r[1]))

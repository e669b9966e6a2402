"""``fsstream export build`` and ``serve`` argument handling, on a local warehouse."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from pathlib import Path

import orjson
from click.testing import CliRunner

from fsstream.core.layout import event_file_key
from fsstream.core.timefmt import format_event_time, parse_rfc3339_us
from fsstream.export.bundles import list_bundles
from fsstream.export.cli import export
from fsstream.export.config import HOUR_MS, parse_duration_ms
from fsstream.infra.object_store import LocalStore
from fsstream.sink.parquet_format import serialize_events

ORG = "o-cli"
DAY = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000


def warehouse(tmp_path: Path) -> tuple[LocalStore, dict[str, str]]:
    store = LocalStore(tmp_path / "lake")
    row = {
        "event_id": "e1",
        "event_time": format_event_time((DAY + 7 * HOUR_MS) * 1000),
        "processed_time": format_event_time((DAY + 7 * HOUR_MS) * 1000),
        "updated_time": None,
        "device_id": 7,
        "session_id": 8,
        "view_id": 9,
        "event_type": "navigate",
        "event_properties": "{}",
        "source_type": "web",
        "source_properties": "{}",
    }
    key = event_file_key(ORG, DAY + 7 * HOUR_MS, "events", 0, 0)
    asyncio.run(store.put(key, serialize_events([row])))
    env = {"FSSTREAM_WAREHOUSE_URL": f"file://{tmp_path / 'lake'}", "FSSTREAM_ORG_ID": ORG}
    return store, env


def test_build_a_range_with_a_period(tmp_path: Path) -> None:
    store, env = warehouse(tmp_path)
    result = CliRunner().invoke(
        export, ["build", "--period", "6h", "--from", "2024-01-01", "--to", "2024-01-02"], env=env
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert lines[1].split()[:3] == [
        str((DAY + 6 * HOUR_MS) // 1000 * 100 + 12),
        "2024-01-01T06:00:00+00:00",
        "1",
    ]
    bundles = asyncio.run(list_bundles(store, ORG))
    assert [b.period.start_ms for b in bundles] == [DAY + n * 6 * HOUR_MS for n in range(4)]
    data = asyncio.run(store.get(bundles[1].key))
    assert data is not None
    assert orjson.loads(gzip.decompress(data))[0]["EventType"] == "navigate"


def test_build_without_a_range_builds_the_due_bundles(tmp_path: Path) -> None:
    store, env = warehouse(tmp_path)
    result = CliRunner().invoke(
        export, ["build", "--limit", "2"], env={**env, "FSSTREAM_EXPORT_PERIOD_S": "43200"}
    )
    assert result.exit_code == 0, result.output
    bundles = asyncio.run(list_bundles(store, ORG))
    assert [(b.period.start_ms, b.period.length_ms) for b in bundles] == [
        (DAY, 12 * HOUR_MS),
        (DAY + 12 * HOUR_MS, 12 * HOUR_MS),
    ]


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    _, env = warehouse(tmp_path)
    runner = CliRunner()
    bad_period = runner.invoke(export, ["build", "--period", "7h", "--from", "2024-01-01"], env=env)
    assert bad_period.exit_code == 2 and "divid" in bad_period.output
    bad_time = runner.invoke(export, ["build", "--from", "yesterday"], env=env)
    assert bad_time.exit_code == 2 and "ISO 8601" in bad_time.output
    unfinished = runner.invoke(
        export, ["build", "--from", "2024-01-01", "--to", "2999-01-01"], env=env
    )
    assert unfinished.exit_code == 1 and "has not ended" in unfinished.output
    every_with_range = runner.invoke(
        export, ["build", "--from", "2024-01-01", "--every", "5m"], env=env
    )
    assert every_with_range.exit_code == 2
    no_key = runner.invoke(export, ["serve"], env={**env, "FSSTREAM_EXPORT_API_KEYS": ""})
    assert no_key.exit_code == 2 and "API key" in no_key.output


def test_durations() -> None:
    assert parse_duration_ms("30m") == 1_800_000
    assert parse_duration_ms("1h30m") == 5_400_000
    assert parse_duration_ms("1d") == parse_duration_ms("24h") == parse_duration_ms("86400")


def test_build_without_a_range_exports_events_older_than_the_first_ingested_hour(
    tmp_path: Path,
) -> None:
    """A warehouse loaded at once with days of history: every event is in one bundle."""
    store = LocalStore(tmp_path / "lake")
    loaded_at = DAY + 7 * HOUR_MS
    times = [DAY - 3 * 24 * HOUR_MS, DAY - 30 * HOUR_MS, DAY - 5 * HOUR_MS, DAY + 6 * HOUR_MS]
    rows = [
        {
            "event_id": f"e{n}",
            "event_time": format_event_time(at * 1000),
            "processed_time": format_event_time(loaded_at * 1000),
            "updated_time": None,
            "device_id": n + 1,
            "session_id": 8,
            "view_id": 9,
            "event_type": "click",
            "event_properties": "{}",
            "source_type": "web",
            "source_properties": "{}",
        }
        for n, at in enumerate(times)
    ]
    for hour in (loaded_at, loaded_at + HOUR_MS):
        key = event_file_key(ORG, hour, "events", 0, hour)
        asyncio.run(store.put(key, serialize_events(rows[:2] if hour == loaded_at else rows[2:])))
    env = {
        "FSSTREAM_WAREHOUSE_URL": f"file://{tmp_path / 'lake'}",
        "FSSTREAM_ORG_ID": ORG,
        "FSSTREAM_EXPORT_PERIOD_S": "43200",
    }
    # Every row is in the first bundles: the limit only spares building the years since.
    result = CliRunner().invoke(export, ["build", "--limit", "6"], env=env)
    assert result.exit_code == 0, result.output
    bundles = asyncio.run(list_bundles(store, ORG))
    # The first bundle still reading the load's hour (its cutoff is 23 h after its end),
    # through the last due one, with no gap.
    assert bundles[0].period.start_ms == DAY - 24 * HOUR_MS
    assert all(a.period.stop_ms == b.period.start_ms for a, b in itertools.pairwise(bundles))
    exported = []
    for bundle in bundles:
        data = asyncio.run(store.get(bundle.key))
        assert data is not None
        exported += [event["UserId"] for event in orjson.loads(gzip.decompress(data))]
    assert sorted(exported) == [1, 2, 3, 4]

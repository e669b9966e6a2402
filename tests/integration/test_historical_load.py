"""Loading history through ``fsstream produce``: dbt_fullstory-style sessions from 2023
land in the hourly partitions of their original ingested times with the settings the
README documents, and with the defaults ``produce`` refuses them and says why."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import format_event_time, parse_rfc3339_us
from fsstream.settings import Settings
from tests.scenario import View, expected_rows, read_all, run_cli, running_pipeline
from tests.warehouse import holds_live, wait_for_warehouse

START_US = parse_rfc3339_us("2023-03-15T10:40:00Z")
FOUR_YEARS_S = 4 * 365 * 86_400
HISTORY = {
    # README "Loading history": events up to four years old, kept as long on the raw
    # topic, and views open across the whole load.
    "max_event_age_s": FOUR_YEARS_S,
    "raw_retention_s": FOUR_YEARS_S,
    "view_ttl_s": 7 * 86_400,
}


def sessions_2023() -> tuple[list[View], list[dict[str, Any]]]:
    """A few sessions of a dbt_fullstory seed's shape, each event with its original
    ingested_time (seconds to minutes after it, so the load spans several hours)."""
    views: list[View] = []
    lines: list[dict[str, Any]] = []
    for session in range(3):
        for page in range(2):
            view = View(f"{9000 + session}:{700 + session}:{page + 1}")
            for i, event_type in enumerate(["navigate", "click", "click", "change"]):
                time_us = START_US + ((session * 50 + page * 20 + i) * 60 + i) * 1_000_000
                line = {
                    "device_id": 9000 + session,
                    "session_id": 700 + session,
                    "view_id": page + 1,
                    "event_time": format_event_time(time_us),
                    "event_type": event_type,
                    "event_properties": {"target": {"raw_selector": f"div > a.n{i}"}},
                    "source_type": "web",
                    "source_properties": {"url": {"path": f"/p/{page}"}},
                    "ingested_time": format_event_time(time_us + 20_000_000),
                }
                lines.append(line)
                view.events.append(
                    {
                        **{k: v for k, v in line.items() if k != "ingested_time"},
                        "event_properties": orjson.dumps(line["event_properties"]).decode(),
                        "source_properties": orjson.dumps(line["source_properties"]).decode(),
                    }
                )
            views.append(view)
    return views, lines


def hour_of(rfc3339: str) -> str:
    return format_event_time(parse_rfc3339_us(rfc3339) // 3_600_000_000 * 3_600_000_000)[
        :19
    ].replace("T", " ")


def run_produce(
    settings: Settings, lines: list[dict[str, Any]], *args: str
) -> subprocess.CompletedProcess[str]:
    """``fsstream produce`` as an operator runs it, the settings in its environment."""
    ndjson = b"\n".join(orjson.dumps(line) for line in lines)
    result = run_cli(settings, "produce", *args, "-", stdin=ndjson)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


async def test_a_2023_load_lands_in_the_hours_of_its_ingested_times(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        reorder_grace_s=1.0, sink_flush_interval_s=1.0, allowed_lateness_s=0, **HISTORY
    )
    await create_topics(settings)
    views, lines = sessions_2023()
    assert len({hour_of(line["ingested_time"]) for line in lines}) >= 3
    async with running_pipeline(settings, tmp_path):
        result = run_produce(settings, lines)
        assert result.returncode == 0, result.stderr
        assert f"produced {len(lines)} events" in result.stderr
        expected = expected_rows(views)
        warehouse = await wait_for_warehouse(settings, holds_live(set(expected)))
    live = warehouse.live()
    assert set(live) == set(expected)
    ingested_hour = {
        (line["device_id"], line["session_id"], line["view_id"], line["event_time"]): hour_of(
            line["ingested_time"]
        )
        for line in lines
    }
    for event_id, row in live.items():
        event = expected[event_id]
        key = (event["device_id"], event["session_id"], event["view_id"], event["event_time"])
        assert row["_hour"] == ingested_hour[key], row
        assert row["event_time"] == event["event_time"]
    assert await read_all(settings, settings.topic_dlq) == []


async def test_with_default_settings_produce_refuses_history_and_says_why(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    await create_topics(settings)
    _, lines = sessions_2023()
    # Stamped now, the events are three years older than their records.
    stamped_now = [{k: v for k, v in line.items() if k != "ingested_time"} for line in lines]
    result = run_produce(settings, stamped_now)
    assert result.returncode == 1
    assert f"refused {len(lines)} events ({len(lines)} AbsurdEventTime); not sent" in result.stderr
    assert "event 1 (view 9000:700:1): AbsurdEventTime: event_time 2023-03-15T10:40:00" in (
        result.stderr
    )
    assert "raise FSSTREAM_MAX_EVENT_AGE_S" in result.stderr
    # With their original ingested times, the raw topic would not keep the records.
    result = run_produce(settings, lines)
    assert result.returncode == 1
    assert f"({len(lines)} PastRawRetention); not sent" in result.stderr
    assert "raise FSSTREAM_RAW_RETENTION_S" in result.stderr
    assert await read_all(settings, settings.topic_raw) == []

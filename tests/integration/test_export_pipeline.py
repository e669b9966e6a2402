"""A day of traffic through the real workers into the warehouse, out as Data Export bundles."""

from __future__ import annotations

import gzip
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import parse_rfc3339_us
from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import settings_env
from fsstream.export.bundles import build_bundles
from fsstream.export.config import HOUR_MS, ExportConfig
from fsstream.export.mapping import EVENT_TYPES, event_start
from fsstream.infra.object_store import open_store
from fsstream.settings import Settings
from tests.integration.test_sink_worker import complete
from tests.scenario import expected_rows, produce, read_all, running_pipeline, traffic_day
from tests.warehouse import wait_for_warehouse, warehouse_settings

DAY_START_MS = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000
PERIOD_MS = 6 * HOUR_MS
API_KEY = "test-export-key"

Key = tuple[int, int | None, int | None, str, str, str | None]


def export_key(event: dict[str, Any]) -> Key:
    """What identifies a Data Export event: device, session, page, start, type and name."""
    return (
        event["UserId"],
        event.get("SessionId"),
        event.get("PageId"),
        event["EventStart"],
        event["EventType"],
        event.get("EventCustomName"),
    )


def row_key(row: dict[str, Any]) -> Key:
    """The Data Export fields a raw event or warehouse row maps to, as ``export_key`` reads
    them."""
    event_type = row["event_type"]
    name = orjson.loads(row["event_properties"]).get("event_name")
    return (
        row["device_id"],
        row["session_id"],
        row["view_id"],
        event_start(row["event_time"]),
        EVENT_TYPES.get(event_type, event_type),
        name if event_type == "custom" and isinstance(name, str) else None,
    )


def call(base: str, path: str) -> tuple[int, str, bytes]:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Basic {API_KEY}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def replicate(base: str) -> list[dict[str, Any]]:
    """What a Data Export client does: page by Stop, gunzip each bundle itself."""
    events: list[dict[str, Any]] = []
    start = 0
    while True:
        status, _, body = call(base, f"/api/v1/export/list?start={start}")
        assert status == 200
        page = orjson.loads(body)["exports"]
        for bundle in page:
            status, content_type, data = call(base, f"/api/v1/export/get?id={bundle['Id']}")
            assert (status, content_type) == (200, "application/gzip")
            events.extend(orjson.loads(gzip.decompress(data)))
            start = bundle["Stop"]
        if len(page) < 20:
            return events


def wait_until_serving(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"export serve exited:\n{log.read_text()}")
        try:
            call(base, "/api/v1/export/list?start=0")
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise TimeoutError(f"export serve did not answer:\n{log.read_text()}")


async def test_a_day_of_traffic_becomes_bundles_of_its_live_events(
    make_settings: Callable[..., Settings], s3_endpoint: str, unique: str, tmp_path: Path
) -> None:
    settings = warehouse_settings("local", make_settings, s3_endpoint, unique, tmp_path)
    await create_topics(settings)
    views, records = traffic_day(seed=11, sessions=100, day_start_ms=DAY_START_MS)
    expected = expected_rows(views)
    async with running_pipeline(settings, tmp_path):
        await produce(settings, records)
        warehouse = await wait_for_warehouse(settings, complete(set(expected)))
    assert set(warehouse.live()) == set(expected)
    # Late events superseded published rows; the bundles below must leave those out.
    events = await read_all(settings, settings.topic_events)
    tombstoned = {r.key.decode() for r in events if r.value is None}
    assert tombstoned, "the traffic has late events, so rows must have been superseded"
    assert warehouse.nulled() <= tombstoned and not tombstoned & set(warehouse.live())

    # Bundles of 6 h for the day and the next, which holds the sessions running past midnight.
    config = ExportConfig.from_settings(settings, period_ms=PERIOD_MS)
    store = open_store(settings)
    try:
        built = await build_bundles(
            store, config, start_ms=DAY_START_MS, stop_ms=DAY_START_MS + 2 * 24 * HOUR_MS
        )
        bundles = {}
        for bundle in built:
            data = await store.get(bundle.key)
            assert data is not None
            bundles[bundle.period] = orjson.loads(gzip.decompress(data))
    finally:
        await store.close()
    assert len(built) == 8

    # Each bundle holds exactly the live events of its period: none missing, none twice,
    # no superseded row.
    for period, events in bundles.items():
        want = Counter(
            row_key(raw)
            for raw in expected.values()
            if period.start_ms * 1000 <= parse_rfc3339_us(raw["event_time"]) < period.stop_ms * 1000
        )
        assert Counter(export_key(e) for e in events) == want, period
        assert [e["EventStart"] for e in events] == sorted(e["EventStart"] for e in events)
    exported = [e for events in bundles.values() for e in events]
    assert len(exported) == len(expected)
    assert sum(len(events) for events in list(bundles.values())[:4]) > 0.99 * len(expected)
    # Identified devices carry their user on every event of a bundle after the identify.
    for events in bundles.values():
        identified = {e["UserId"] for e in events if e["EventType"] == "uservar"}
        for e in events:
            if e["UserId"] in identified:
                assert e["UserAppKey"] == f"user-{e['UserId']}"
                assert e["IndvId"] != e["UserId"]
    kinds = Counter(e["EventType"] for e in exported)
    assert {"click", "change", "navigate", "custom", "load", "uservar"} <= set(kinds)
    assert any(e.get("EventModFrustrated") for e in exported)

    # The export API, started as its command, serves them to a replicating client.
    port = free_port()
    log_path = tmp_path / "export-serve.log"
    env = {**settings_env(settings), "FSSTREAM_EXPORT_API_KEYS": API_KEY}
    command = "from fsstream.export.cli import export; export()"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", command, "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_serving(base, process, log_path)
        assert replicate(base) == exported
        request = urllib.request.Request(base + "/api/v1/export/list?start=0")
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("a request without a key was answered")
        except urllib.error.HTTPError as error:
            assert error.code == 401
        # A start past the int parser's digit limit is a client error, not a server fault.
        try:
            call(base, "/api/v1/export/list?start=" + "9" * 5000)
            raise AssertionError("a start of 5000 digits was answered")
        except urllib.error.HTTPError as error:
            assert error.code == 400
            assert orjson.loads(error.read())["parameter"] == "start"
    finally:
        process.terminate()
        process.wait(timeout=10)

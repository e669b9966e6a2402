"""Late events through the real workers reach an append-only Data Export client exactly once.

Rounds of: build the due bundles, page the HTTP API as a Singer tap does (``start`` = the
last ``Stop`` it saw, never going back), then send events late enough that the bundles
of their period are already built and listed. The late events, and the copies of the
events they supersede, must show up once in total: the client ends with exactly the
warehouse's live events.
"""

from __future__ import annotations

import gzip
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from fsstream.contract.topics import create_topics
from fsstream.core.timefmt import format_event_time, parse_rfc3339_us
from fsstream.export.api import make_app, start_api
from fsstream.export.bundles import build_due, bundle_period, cutoff_ms
from fsstream.export.config import HOUR_MS, ExportConfig, Period, period_containing
from fsstream.infra.object_store import open_store
from fsstream.settings import Settings
from tests.integration.test_export_pipeline import Key, export_key, row_key
from tests.integration.test_sink_worker import complete
from tests.scenario import RawRecord, View, expected_rows, produce, running_pipeline, traffic_day
from tests.warehouse import Warehouse, read_warehouse, wait_for_warehouse, warehouse_settings

DAY_START_MS = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000
API_KEY = "test-export-key"


class SingerClient:
    """Replicates append-only: keeps the last ``Stop`` as its bookmark, never rereads."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.bookmark = 0
        self.received: list[tuple[Period, dict[str, Any]]] = []

    async def sync(self, http: aiohttp.ClientSession) -> int:
        """One replication run: every bundle listed after the bookmark; the bundles read."""
        headers = {"Authorization": f"Basic {API_KEY}"}
        read = 0
        while True:
            async with http.get(
                f"{self.base}/list", params={"start": str(self.bookmark)}, headers=headers
            ) as response:
                assert response.status == 200
                page = (await response.json())["exports"]
            for bundle in page:
                async with http.get(
                    f"{self.base}/get", params={"id": str(bundle["Id"])}, headers=headers
                ) as response:
                    assert response.status == 200
                    assert response.content_type == "application/gzip"
                    data = await response.read()
                period = Period(bundle["Start"] * 1000, bundle["Stop"] * 1000)
                self.received += [(period, e) for e in orjson.loads(gzip.decompress(data))]
                self.bookmark = bundle["Stop"]
                read += 1
            if len(page) < 20:
                return read


def late_events(
    rng: random.Random, views: list[View], period: Period, ingested_ms: int, tag: str
) -> list[RawRecord]:
    """For some views with events in ``period``, an event slipped in just before one of
    them, so the reorderer supersedes a row it already published."""
    records = []
    for view in views:
        times = sorted(parse_rfc3339_us(e["event_time"]) for e in view.events)
        inside = [
            at for at in times[1:] if period.start_ms * 1000 <= at - 1 < period.stop_ms * 1000
        ]
        if not inside or rng.random() < 0.5:
            continue
        before = rng.choice(inside)
        event = {
            **view.events[0],
            "event_time": format_event_time(before - 1),
            "event_type": "custom",
            "event_properties": orjson.dumps({"event_name": f"late-{tag}"}).decode(),
        }
        view.events.append(event)
        records.append(RawRecord(view.key, ingested_ms, [event]))
    assert records
    return records


async def test_an_append_only_client_gets_every_live_event_exactly_once(
    make_settings: Callable[..., Settings], s3_endpoint: str, unique: str, tmp_path: Path
) -> None:
    settings = warehouse_settings("local", make_settings, s3_endpoint, unique, tmp_path)
    await create_topics(settings)
    # 6 h bundles available 2 h after their period: the cutoff of each is its end + 2 h.
    config = ExportConfig.from_settings(
        settings,
        period_ms=6 * HOUR_MS,
        availability_delay_ms=2 * HOUR_MS,
        api_keys=(API_KEY,),
        index_ttl_s=0,
    )
    first = Period(DAY_START_MS, DAY_START_MS + 6 * HOUR_MS)
    assert cutoff_ms(first, config) == first.stop_ms + 2 * HOUR_MS
    views, records = traffic_day(seed=7, sessions=40, day_start_ms=DAY_START_MS, hours=9)
    rng = random.Random(3)
    store = open_store(settings)
    served = open_store(settings)
    server = await start_api(make_app(served, config), config, "127.0.0.1", 0)
    client = SingerClient(f"http://127.0.0.1:{server.port}/api/v1/export")
    late_keys: dict[Key, Period] = {}
    http = aiohttp.ClientSession()
    try:
        async with running_pipeline(settings, tmp_path):

            async def deliver(batch: list[RawRecord]) -> Warehouse:
                await produce(settings, batch)
                expected = set(expected_rows(views))
                warehouse = await wait_for_warehouse(settings, complete(expected))
                assert set(warehouse.live()) == expected
                return warehouse

            async def build_and_sync(now_ms: int) -> list[Period]:
                built = await build_due(store, config, now_ms)
                assert built, "a bundle is due"
                assert await client.sync(http) == len(built)
                return [bundle.period for bundle in built]

            # Round 1: the day's first hours; the bundle of 00:00-06:00 is built and listed.
            warehouse = await deliver(records)
            assert first in await build_and_sync(first.stop_ms + 3 * HOUR_MS)
            listed_first = {
                event_id
                for event_id, row in warehouse.live().items()
                if period_containing(parse_rfc3339_us(row["event_time"]) // 1000, config.period_ms)
                == first
            }
            # Then late events of 00:00-12:00, ingested at 12:00, 19:00 and 23:00; each
            # round builds the bundles due since and the client syncs from its bookmark.
            second = Period(first.stop_ms, first.stop_ms + 6 * HOUR_MS)
            for hour, build_hour in ((12, 15), (19, 21), (23, 27)):
                ingested_ms = DAY_START_MS + hour * HOUR_MS
                batch = late_events(rng, views, first, ingested_ms, f"{hour}")
                batch += late_events(rng, views, second, ingested_ms, f"{hour}b")
                for record in batch:
                    event = record.events[0]
                    at_ms = parse_rfc3339_us(event["event_time"]) // 1000
                    late_keys[row_key(event)] = bundle_period(at_ms, ingested_ms, config)
                await deliver(batch)
                built = await build_and_sync(DAY_START_MS + build_hour * HOUR_MS)
                listed = {period for period, _ in client.received}
                # The late events of bundles already listed go to the one just built.
                for record in batch:
                    event = record.events[0]
                    own = period_containing(
                        parse_rfc3339_us(event["event_time"]) // 1000, config.period_ms
                    )
                    if own in listed and own not in built:
                        assert late_keys[row_key(event)] in built
    finally:
        await http.close()
        await server.close()
        await served.close()
        await store.close()

    warehouse = await read_warehouse(settings)
    live = warehouse.live()
    # Rows the first bundle exported were superseded after it was listed: their copies
    # are live rows of later hours, which no bundle exports again.
    assert warehouse.nulled() & listed_first, "late events must supersede listed rows"
    received = Counter(export_key(event) for _, event in client.received)
    assert received == Counter(row_key(row) for row in live.values())
    assert len(client.received) == len(live)
    # Each late event is in the bundle the assignment gives, after its own period.
    for key, held_by in late_keys.items():
        assert [period for period, event in client.received if export_key(event) == key] == [
            held_by
        ]

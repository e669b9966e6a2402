"""Bundles built from a warehouse written in the real layout on a local store."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fsstream.core.layout import event_file_key, hour_prefix
from fsstream.core.timefmt import format_event_time, hour_floor_ms, parse_rfc3339_us
from fsstream.devtools import traffic
from fsstream.export.bundles import (
    build_bundles,
    build_due,
    bundle_key,
    bundle_period,
    cutoff_ms,
    due_ms,
    exportable,
    list_bundles,
    scan_hours,
)
from fsstream.export.config import DAY_MS, HOUR_MS, ExportConfig, Period, period_containing
from fsstream.infra.object_store import LocalStore
from fsstream.sink.parquet_format import serialize_events

ORG = "o-test"
DAY = parse_rfc3339_us("2024-01-01T00:00:00Z") // 1000
SIX_HOURS = 6 * HOUR_MS
CONFIG = ExportConfig(org_id=ORG, period_ms=SIX_HOURS)
FIRST = Period(DAY, DAY + SIX_HOURS)
NOW = DAY + 30 * DAY_MS


def event(
    event_id: str,
    at_ms: int,
    *,
    event_type: str | None = "click",
    device: int = 1,
    session: int | None = 10,
    view: int | None = 1,
    properties: dict[str, Any] | None = None,
    micros: int = 0,
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_time": format_event_time(at_ms * 1000 + micros),
        "processed_time": format_event_time(at_ms * 1000),
        "updated_time": None,
        "device_id": device,
        "session_id": session,
        "view_id": view,
        "event_type": event_type,
        "event_properties": orjson.dumps(properties or {}).decode(),
        "source_type": "web",
        "source_properties": orjson.dumps({"url": {"full_url": "https://a.example/"}}).decode(),
    }


async def write(
    store: LocalStore, hour_ms: int, rows: list[dict[str, Any]], offset: int = 0
) -> str:
    key = event_file_key(ORG, hour_ms, "events", 0, offset)
    await store.put(key, serialize_events(rows))
    return key


async def write_traffic(store: LocalStore, *, seed: int, sessions: int, duration_ms: int) -> None:
    """Generated traffic of the day, one file per ingested hour."""
    by_hour: dict[int, list[dict[str, Any]]] = {}
    for number, generated in enumerate(
        traffic.generate(seed=seed, sessions=sessions, start_ms=DAY, duration_ms=duration_ms)
    ):
        raw = generated.event
        hour = generated.ingested_time - generated.ingested_time % HOUR_MS
        by_hour.setdefault(hour, []).append(
            {
                "event_id": hashlib.blake2b(str(number).encode(), digest_size=16).hexdigest(),
                "event_time": raw["event_time"],
                "processed_time": raw["event_time"],
                "updated_time": None,
                "device_id": raw["device_id"],
                "session_id": raw["session_id"],
                "view_id": raw["view_id"],
                "event_type": raw["event_type"],
                "event_properties": orjson.dumps(raw["event_properties"]).decode(),
                "source_type": raw["source_type"],
                "source_properties": orjson.dumps(raw["source_properties"]).decode(),
            }
        )
    for hour, rows in by_hour.items():
        await write(store, hour, rows)


async def bundle_events(store: LocalStore, period: Period) -> list[dict[str, Any]]:
    data = await store.get(bundle_key(ORG, period))
    assert data is not None, f"no bundle for {period}"
    events: list[dict[str, Any]] = orjson.loads(gzip.decompress(data))
    return events


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "warehouse")


async def test_a_bundle_holds_the_live_events_of_its_period_and_nothing_else(
    store: LocalStore,
) -> None:
    start, stop = FIRST.start_ms, FIRST.stop_ms
    await write(store, start - HOUR_MS, [event("before", start - 1, micros=999)])
    await write(
        store,
        start,
        [
            event("at-start", start),
            event("nulled", start + 5, event_type=None),
            event("middle", start + HOUR_MS),
        ],
    )
    await write(
        store,
        stop - HOUR_MS,
        [event("last", stop - 1, micros=999), event("next", stop, device=2)],
    )
    built = await build_bundles(store, CONFIG, start_ms=start, stop_ms=stop + SIX_HOURS, now_ms=NOW)
    assert [(b.period, b.events) for b in built] == [
        (FIRST, 3),
        (Period(stop, stop + SIX_HOURS), 1),
    ]
    first = await bundle_events(store, FIRST)
    assert [e["EventStart"] for e in first] == [
        "2024-01-01T00:00:00.000Z",
        "2024-01-01T01:00:00.000Z",
        "2024-01-01T05:59:59.999Z",
    ]
    assert [e["UserId"] for e in await bundle_events(store, Period(stop, stop + SIX_HOURS))] == [2]


async def test_late_and_early_rows_count_up_to_the_end_of_the_scan(store: LocalStore) -> None:
    start, stop = FIRST.start_ms, FIRST.stop_ms
    hours = scan_hours(FIRST, FIRST, CONFIG)
    # The day before (clock skew) through the delay minus the lateness after the end.
    assert (hours.start, hours.stop) == (start - DAY_MS, stop + 23 * HOUR_MS)
    await write(store, hours.start, [event("early", start + 10, device=1)])
    await write(store, stop + 5 * HOUR_MS, [event("late", start + 20, device=2)])
    await write(store, hours.stop - HOUR_MS, [event("last-hour", start + 30, device=3)])
    await write(store, hours.stop, [event("too-late", start + 40, device=4)])
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=stop, now_ms=NOW)
    assert [e["UserId"] for e in await bundle_events(store, FIRST)] == [1, 2, 3]


async def test_a_row_superseded_by_an_appended_null_row_is_left_out(store: LocalStore) -> None:
    start = FIRST.start_ms
    await write(store, start, [event("kept", start + 1), event("superseded", start + 2)])
    await write(store, start + 3 * HOUR_MS, [event("superseded", start + 2, event_type=None)])
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=FIRST.stop_ms, now_ms=NOW)
    assert len(await bundle_events(store, FIRST)) == 1


async def test_events_are_in_time_then_event_id_order(store: LocalStore) -> None:
    start = FIRST.start_ms
    rows = [
        event("b", start + 7, device=2),
        event("c", start + 3, device=3),
        event("a", start + 7, device=1),
    ]
    await write(store, start, rows)
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=FIRST.stop_ms, now_ms=NOW)
    assert [e["UserId"] for e in await bundle_events(store, FIRST)] == [3, 1, 2]


async def test_an_empty_period_is_an_empty_array_with_a_fixed_gzip_header(
    store: LocalStore,
) -> None:
    built = await build_bundles(
        store, CONFIG, start_ms=FIRST.start_ms, stop_ms=FIRST.stop_ms, now_ms=NOW
    )
    data = await store.get(built[0].key)
    assert data is not None
    assert gzip.decompress(data) == b"[]"
    assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # no modification time


async def test_rebuilding_gives_the_same_bytes_however_periods_are_grouped(
    store: LocalStore,
) -> None:
    await write_traffic(store, seed=5, sessions=60, duration_ms=DAY_MS)
    day_built = await build_bundles(store, CONFIG, start_ms=DAY, stop_ms=DAY + DAY_MS, now_ms=NOW)
    assert sum(b.events for b in day_built) > 1000
    together = {b.key: await store.get(b.key) for b in day_built}
    for bundle in day_built:
        await store.delete(bundle.key)
        alone = await build_bundles(
            store,
            CONFIG,
            start_ms=bundle.period.start_ms,
            stop_ms=bundle.period.stop_ms,
            now_ms=NOW,
        )
        assert [b.key for b in alone] == [bundle.key]
        assert await store.get(bundle.key) == together[bundle.key]
    again = await build_bundles(store, CONFIG, start_ms=DAY, stop_ms=DAY + DAY_MS, now_ms=NOW)
    assert {b.key: await store.get(b.key) for b in again} == together
    # Every generated event is in exactly one bundle, identified users included.
    events = [e for b in day_built for e in await bundle_events(store, b.period)]
    assert len(events) == sum(b.events for b in day_built)
    assert any("UserAppKey" in e for e in events)


async def test_only_parquet_files_of_the_hour_are_read(store: LocalStore) -> None:
    start = FIRST.start_ms
    await write(store, start, [event("a", start)])
    folder = hour_prefix(ORG, start)
    await store.put(f"{folder}_manifest.json", b"{}")
    await store.put(f"{folder}_sealed/events+0.json", b"{}")
    built = await build_bundles(store, CONFIG, start_ms=start, stop_ms=FIRST.stop_ms, now_ms=NOW)
    assert built[0].events == 1


async def test_identity_comes_from_the_latest_identify_before_the_bundle_end(
    store: LocalStore,
) -> None:
    start, stop = FIRST.start_ms, FIRST.stop_ms

    def identify(event_id: str, at_ms: int, user: str, email: str) -> dict[str, Any]:
        properties = {"user_id": user, "user_email": email, "user_properties": {"plan": "pro"}}
        return event(event_id, at_ms, event_type="identify", properties=properties)

    # The day before, within the lookback: the device is known from the first event on.
    await write(store, start - 20 * HOUR_MS, [identify("i0", start - 20 * HOUR_MS, "u1", "a@x")])
    # Later in the period: the newer email wins for every event of the bundle.
    await write(store, start, [event("c1", start + 1), identify("i1", start + 60_000, "u1", "b@x")])
    # After the bundle's end: not part of this bundle's view of the user.
    await write(store, stop, [identify("i2", stop + 1, "u1", "c@x")])
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=stop, now_ms=NOW)
    events = await bundle_events(store, FIRST)
    assert [(e["EventType"], e["UserEmail"], e["UserAppKey"]) for e in events] == [
        ("click", "b@x", "u1"),
        ("uservar", "b@x", "u1"),
    ]
    assert {e["plan"] for e in events} == {"pro"}
    assert events[0]["IndvId"] != events[0]["UserId"] == 1


async def test_page_totals_and_console_counts_span_the_period_boundary(
    store: LocalStore,
) -> None:
    start = FIRST.start_ms
    error = {"console_message_level": "error", "message": "x"}
    await write(
        store,
        start - HOUR_MS,
        [
            event("n0", start - 10_000, event_type="navigate"),
            event("m0", start - 5_000, event_type="console_message", properties=error),
        ],
    )
    await write(
        store,
        start,
        [
            event("c1", start + 5_000),
            event("x1", start + 20_000, event_type="exception", properties={"exception_count": 2}),
            event("c2", start + 55_000),
            event("other-view", start + 6_000, view=2),
        ],
    )
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=FIRST.stop_ms, now_ms=NOW)
    events = {e["EventStart"][11:19]: e for e in await bundle_events(store, FIRST)}
    first, last, other = events["00:00:05"], events["00:00:55"], events["00:00:06"]
    # From -10 s to +55 s; the 35 s pause counts 30 s of activity.
    assert (first["PageDuration"], first["PageActiveDuration"]) == (65_000, 60_000)
    assert (last["PageDuration"], last["PageActiveDuration"]) == (65_000, 60_000)
    assert (first["PageNumErrors"], events["00:00:20"]["PageNumErrors"], last["PageNumErrors"]) == (
        1,
        3,
        3,
    )
    assert (other["PageDuration"], other["PageNumErrors"], other["PageNumInfos"]) == (0, 0, 0)


async def test_a_period_that_has_not_ended_is_refused(store: LocalStore) -> None:
    with pytest.raises(ValueError, match="has not ended"):
        await build_bundles(
            store, CONFIG, start_ms=FIRST.start_ms, stop_ms=FIRST.stop_ms, now_ms=FIRST.stop_ms - 1
        )
    assert await list_bundles(store, ORG) == []


def test_a_bundle_is_due_after_its_delay_once_its_partitions_are_sealed() -> None:
    assert due_ms(FIRST, CONFIG) == FIRST.stop_ms + DAY_MS
    # Lateness longer than the delay: wait for the seal of the period's last hour.
    slow_seal = ExportConfig(
        org_id=ORG, period_ms=1_800_000, availability_delay_ms=0, allowed_lateness_ms=HOUR_MS
    )
    half_hour = Period(DAY, DAY + 1_800_000)
    assert scan_hours(half_hour, half_hour, slow_seal).stop == DAY + HOUR_MS
    assert due_ms(half_hour, slow_seal) == DAY + 2 * HOUR_MS


async def test_build_due_builds_each_due_bundle_once_and_fills_holes(store: LocalStore) -> None:
    start = FIRST.start_ms
    await write(store, start + HOUR_MS, [event("a", start + HOUR_MS)])
    assert await build_due(store, CONFIG, due_ms(FIRST, CONFIG) - 1) == []
    built = await build_due(store, CONFIG, due_ms(FIRST, CONFIG))
    assert [(b.period, b.events) for b in built] == [(FIRST, 1)]
    assert await build_due(store, CONFIG, due_ms(FIRST, CONFIG)) == []
    # Two days later every period up to the due ones is built, empty ones included.
    later = due_ms(FIRST, CONFIG) + 2 * DAY_MS
    built = await build_due(store, CONFIG, later, limit=3)
    assert [b.period.start_ms for b in built] == [start + n * SIX_HOURS for n in (1, 2, 3)]
    built = await build_due(store, CONFIG, later)
    assert [b.period.start_ms for b in built] == [start + n * SIX_HOURS for n in range(4, 9)]
    stored = await list_bundles(store, ORG)
    assert [b.period.start_ms for b in stored] == [start + n * SIX_HOURS for n in range(9)]
    # A bundle deleted in the middle is built again, and only it.
    await store.delete(stored[4].key)
    assert [b.period for b in await build_due(store, CONFIG, later)] == [stored[4].period]


async def test_build_due_on_an_empty_warehouse_builds_nothing(store: LocalStore) -> None:
    assert await build_due(store, CONFIG, NOW) == []


async def test_overlapping_bundles_are_listed_once(store: LocalStore) -> None:
    day = ExportConfig(org_id=ORG)
    await build_bundles(store, day, start_ms=DAY, stop_ms=DAY + DAY_MS, now_ms=NOW)
    await build_bundles(
        store, CONFIG, start_ms=DAY + DAY_MS - SIX_HOURS, stop_ms=DAY + 2 * DAY_MS, now_ms=NOW
    )
    chain = exportable(await list_bundles(store, ORG))
    assert [(b.period.start_ms - DAY) // HOUR_MS for b in chain] == [0, 24, 30, 36, 42]
    assert [b.id for b in chain][:2] == [
        str(DAY // 1000 * 100 + 48),
        str((DAY + DAY_MS) // 1000 * 100 + 12),
    ]


# -- which bundle holds a row ------------------------------------------------------------

CONFIGS = [
    CONFIG,
    ExportConfig(org_id=ORG),
    ExportConfig(
        org_id=ORG, period_ms=1_800_000, availability_delay_ms=0, allowed_lateness_ms=HOUR_MS
    ),
    ExportConfig(
        org_id=ORG, period_ms=2 * HOUR_MS, availability_delay_ms=3 * HOUR_MS, lookback_ms=HOUR_MS
    ),
]


def previous(period: Period) -> Period:
    return Period(period.start_ms - period.length_ms, period.start_ms)


@st.composite
def rows_in_time(draw: st.DrawFn, config: ExportConfig) -> tuple[int, int]:
    """An event time and its ingested time: ingested at most the lookback before the event
    (clock skew past it is refused upstream), and up to days after it."""
    event_ms = draw(st.integers(DAY, DAY + 2 * DAY_MS))
    ingested_ms = draw(st.integers(event_ms - config.lookback_ms, event_ms + 4 * DAY_MS))
    return event_ms, ingested_ms


@given(st.data())
def test_a_row_belongs_to_the_first_bundle_reading_its_hour_from_its_own_period_on(
    data: st.DataObject,
) -> None:
    config = data.draw(st.sampled_from(CONFIGS))
    event_ms, ingested_ms = data.draw(rows_in_time(config))
    own = period_containing(event_ms, config.period_ms)
    held_by = bundle_period(event_ms, ingested_ms, config)
    assert held_by >= own and held_by.length_ms == config.period_ms
    assert hour_floor_ms(ingested_ms) in scan_hours(held_by, held_by, config)
    assert ingested_ms < cutoff_ms(held_by, config)
    # No earlier bundle from its own period on reads its hour.
    if held_by != own:
        assert cutoff_ms(previous(held_by), config) <= ingested_ms
    # Once the bundle is due, no row it holds can still arrive.
    assert due_ms(held_by, config) >= cutoff_ms(held_by, config) + config.allowed_lateness_ms


async def build_everything(
    store: LocalStore, config: ExportConfig, last: Period
) -> dict[str, bytes]:
    built = await build_bundles(store, config, start_ms=DAY, stop_ms=last.stop_ms, now_ms=NOW)
    return {b.key: await store.get(b.key) or b"" for b in built}


@settings(max_examples=10, deadline=None)
@given(
    config=st.sampled_from(CONFIGS[::3]),
    times=st.lists(
        st.tuples(
            st.integers(0, 2 * DAY_MS),
            st.integers(-20, 72).map(lambda hours: hours * HOUR_MS + 1),
        ),
        min_size=1,
        max_size=6,
    ),
    sealed_at=st.integers(0, 3 * DAY_MS),
)
@example(config=CONFIG, times=[(0, 2 * DAY_MS), (HOUR_MS, 0), (DAY_MS, 30 * HOUR_MS)], sealed_at=0)
@example(config=CONFIGS[3], times=[(0, 2 * HOUR_MS), (3 * HOUR_MS, 9 * HOUR_MS)], sealed_at=DAY_MS)
def test_each_live_row_is_in_exactly_one_bundle_and_bundles_never_change_once_sealed(
    config: ExportConfig, times: list[tuple[int, int]], sealed_at: int
) -> None:
    """Rows ingested up to ``sealed_at`` first; the bundles whose cutoff is by then are the
    same bytes after the rest arrives, and every row ends up in exactly one bundle."""
    rows = [
        (DAY + at, DAY + at + min(max(delay, -config.lookback_ms), 3 * DAY_MS))
        for at, delay in times
    ]
    last = max(bundle_period(at, ingested, config) for at, ingested in rows)

    async def scenario(store: LocalStore) -> None:
        async def write_rows(selected: list[int], offset: int) -> None:
            by_hour: dict[int, list[dict[str, Any]]] = {}
            for n in selected:
                at, ingested = rows[n]
                by_hour.setdefault(hour_floor_ms(ingested), []).append(
                    event(f"e{n}", at, device=n + 1)
                )
            for hour, hour_rows in by_hour.items():
                await write(store, hour, hour_rows, offset)

        first = [n for n, (_, ingested) in enumerate(rows) if ingested < DAY + sealed_at]
        await write_rows(first, 0)
        before = await build_everything(store, config, last)
        await write_rows([n for n in range(len(rows)) if n not in first], 1)
        after = await build_everything(store, config, last)
        assert await build_everything(store, config, last) == after
        for key, data in before.items():
            period = next(b.period for b in await list_bundles(store, ORG) if b.key == key)
            if cutoff_ms(period, config) <= hour_floor_ms(DAY + sealed_at):
                assert after[key] == data, period
        held: dict[int, Period] = {}
        for bundle in await list_bundles(store, ORG):
            for exported in await bundle_events(store, bundle.period):
                assert exported["UserId"] not in held, "exported twice"
                held[exported["UserId"]] = bundle.period
        assert held == {
            n + 1: bundle_period(at, ingested, config) for n, (at, ingested) in enumerate(rows)
        }

    with tempfile.TemporaryDirectory() as root:
        asyncio.run(scenario(LocalStore(Path(root))))


async def test_a_row_ingested_after_its_bundle_is_built_goes_to_a_later_bundle(
    store: LocalStore,
) -> None:
    start = FIRST.start_ms
    await write(store, start, [event("on-time", start + 1, device=1)])
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=FIRST.stop_ms, now_ms=NOW)
    first = await store.get(bundle_key(ORG, FIRST))
    late_hour = cutoff_ms(FIRST, CONFIG)
    await write(store, late_hour, [event("late", start + 2, device=2)])
    held_by = bundle_period(start + 2, late_hour, CONFIG)
    assert held_by == Period(FIRST.stop_ms, FIRST.stop_ms + SIX_HOURS)
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=held_by.stop_ms, now_ms=NOW)
    assert await store.get(bundle_key(ORG, FIRST)) == first
    late = await bundle_events(store, held_by)
    # Listed in the later bundle with its own, older, event time.
    assert [(e["UserId"], e["EventStart"]) for e in late] == [(2, "2024-01-01T00:00:00.002Z")]


def reemitted(row: dict[str, Any], event_id: str) -> dict[str, Any]:
    """The reorderer's corrected copy of ``row``: same content, a new id."""
    return {**row, "event_id": event_id, "processed_time": format_event_time(NOW * 1000)}


def nulled(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as the sink rewrites it once superseded."""
    return {**row, "event_type": None, "updated_time": NOW}


@pytest.mark.parametrize("append", [False, True], ids=["recreated-file", "appended-null-row"])
async def test_a_copy_of_an_event_a_listed_bundle_holds_is_not_exported_again(
    store: LocalStore, append: bool
) -> None:
    start = FIRST.start_ms
    kept, superseded = event("kept", start + 1), event("s", start + 10, device=2)
    key = await write(store, start, [kept, superseded])
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=FIRST.stop_ms, now_ms=NOW)
    assert [e["UserId"] for e in await bundle_events(store, FIRST)] == [1, 2]
    # After the build, a late event lands before "s": the old row is superseded, and
    # its copy and the late event arrive in a later hour.
    late_hour = cutoff_ms(FIRST, CONFIG) + HOUR_MS
    late_rows = [event("x", start + 5, device=2), reemitted(superseded, "s2")]
    if append:
        late_rows.append(nulled(superseded))
    else:
        await store.put(key, serialize_events([kept, nulled(superseded)]))
    await write(store, late_hour, late_rows)
    held_by = bundle_period(start + 5, late_hour, CONFIG)
    assert held_by > FIRST
    await build_bundles(store, CONFIG, start_ms=FIRST.stop_ms, stop_ms=held_by.stop_ms, now_ms=NOW)
    assert [e["EventStart"] for e in await bundle_events(store, held_by)] == [
        "2024-01-01T00:00:00.005Z"
    ]
    # Superseded once more, later still: the event is still held by the first bundle.
    later_hour = cutoff_ms(held_by, CONFIG)
    await write(store, later_hour, [event("y", start + 7, device=2), reemitted(superseded, "s3")])
    again = bundle_period(start + 7, later_hour, CONFIG)
    assert again > held_by
    await build_bundles(store, CONFIG, start_ms=again.start_ms, stop_ms=again.stop_ms, now_ms=NOW)
    assert [e["EventStart"] for e in await bundle_events(store, again)] == [
        "2024-01-01T00:00:00.007Z"
    ]


async def test_a_copy_of_an_event_superseded_before_its_bundle_was_built_is_exported(
    store: LocalStore,
) -> None:
    start = FIRST.start_ms
    kept, superseded = event("kept", start + 1), event("s", start + 10, device=2)
    await write(store, start, [kept, nulled(superseded)])
    late_hour = cutoff_ms(FIRST, CONFIG)
    await write(store, late_hour, [event("x", start + 5, device=2), reemitted(superseded, "s2")])
    held_by = bundle_period(start + 5, late_hour, CONFIG)
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=held_by.stop_ms, now_ms=NOW)
    assert [e["UserId"] for e in await bundle_events(store, FIRST)] == [1]
    assert [e["EventStart"] for e in await bundle_events(store, held_by)] == [
        "2024-01-01T00:00:00.005Z",
        "2024-01-01T00:00:00.010Z",
    ]


async def test_a_late_row_has_the_context_its_bundle_reads(store: LocalStore) -> None:
    """Page totals and console counts of a late row come from its page's rows the bundle
    reads; its user from the identify events read."""
    start = FIRST.start_ms
    late_hour = cutoff_ms(FIRST, CONFIG)
    held_by = bundle_period(start, late_hour, CONFIG)
    error = {"console_message_level": "error", "message": "x"}
    identify = {"user_id": "u1", "user_email": "a@x"}
    await write(
        store,
        late_hour,
        [
            event("late-click", start + 20_000),
            event("late-error", start + 10_000, event_type="console_message", properties=error),
            event("late-nav", start, event_type="navigate"),
            event(
                "identify", held_by.start_ms + 1, event_type="identify", view=2, properties=identify
            ),
        ],
    )
    await build_bundles(store, CONFIG, start_ms=start, stop_ms=held_by.stop_ms, now_ms=NOW)
    assert await bundle_events(store, FIRST) == []
    events = await bundle_events(store, held_by)
    assert [e["EventType"] for e in events] == ["navigate", "console_message", "click", "uservar"]
    click = events[2]
    assert (click["PageDuration"], click["PageNumErrors"], click["UserEmail"]) == (20_000, 1, "a@x")

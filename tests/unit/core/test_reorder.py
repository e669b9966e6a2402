"""The per-view reorder core: exact cases and arrival-order invariance."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from fsstream.core.ids import detached_event_id, event_id, identify_event_id
from fsstream.core.reorder import (
    Arrival,
    DictViewStore,
    Reorderer,
    Row,
    Tombstone,
    ViewState,
)

VIEW = "1:2:3"
GRACE = 5_000
TTL = 86_400_000


@dataclass(frozen=True)
class Ev:
    time_us: int
    fp: int
    identify: bool = False


def make(grace: int = GRACE, ttl: int = TTL) -> Reorderer:
    return Reorderer(DictViewStore(), grace_ms=grace, ttl_ms=ttl)


def feed(
    r: Reorderer,
    events: list[Ev],
    *,
    ts: int,
    offset: int,
    view: str = VIEW,
    ingested: int | None = None,
) -> list:
    arrivals = [Arrival(e.time_us, e.fp, i, e.identify) for i, e in enumerate(events)]
    return r.on_record(
        view,
        arrivals,
        offset=offset,
        record_ts_ms=ts,
        ingested_ms=ts if ingested is None else ingested,
    )


def live_rows(emissions: list) -> dict[str, Row]:
    """The compacted view of the output: the last emission per id, tombstones removed."""
    last: dict[str, Row | None] = {}
    for emission in emissions:
        last[emission.event_id] = emission if isinstance(emission, Row) else None
    return {k: v for k, v in last.items() if v is not None}


def expected_ids(events: list[Ev], view: str = VIEW) -> set[str]:
    ordered = sorted(events, key=lambda e: (e.time_us, e.fp))
    ids, previous = set(), None
    for e in ordered:
        ids.add(identify_event_id(view, e.fp) if e.identify else event_id(view, e.fp, previous))
        previous = e.fp
    return ids


A, X, S = Ev(1_000_000, 11), Ev(2_000_000, 22), Ev(3_000_000, 33)


def test_in_order_events_are_held_for_the_grace_then_released_in_order() -> None:
    r = make()
    assert feed(r, [A, S], ts=10_000, offset=0) == []
    assert r.advance(14_999) == []
    out = r.advance(15_000)
    assert out == [
        Row(VIEW, event_id(VIEW, A.fp, None), A.time_us, 0, 0, 10_000),
        Row(VIEW, event_id(VIEW, S.fp, A.fp), S.time_us, 0, 1, 10_000),
    ]


def test_late_event_before_a_released_row_gives_exactly_tombstone_new_s_and_x() -> None:
    r = make()
    feed(r, [A, S], ts=10_000, offset=0)
    r.advance(15_000)
    assert feed(r, [X], ts=20_000, offset=1, ingested=20_500) == []
    out = r.advance(25_000)
    old_s = event_id(VIEW, S.fp, A.fp)
    assert out == [
        Tombstone(VIEW, old_s, S.time_us, 10_000, 20_500),
        Row(VIEW, event_id(VIEW, X.fp, A.fp), X.time_us, 1, 0, 20_500),
        Row(VIEW, event_id(VIEW, S.fp, X.fp), S.time_us, 0, 1, 20_500, superseding=True),
    ]
    assert r.counters.late == 1 and r.counters.tombstones == 1
    # The re-emitted row now lives in the late batch's partition: a later tombstone says so.
    late2 = Ev(2_500_000, 44)
    feed(r, [late2], ts=30_000, offset=2)
    out = r.advance(35_000)
    assert out[0] == Tombstone(VIEW, event_id(VIEW, S.fp, X.fp), S.time_us, 20_500, 30_000)


def test_late_event_within_the_grace_is_reordered_without_a_tombstone() -> None:
    r = make()
    feed(r, [A, S], ts=10_000, offset=0)
    assert feed(r, [X], ts=12_000, offset=1) == []
    # S is due at 15 s; X, held until 17 s, sorts before S and goes out with it.
    out = r.advance(15_000)
    assert out == [
        Row(VIEW, event_id(VIEW, A.fp, None), A.time_us, 0, 0, 10_000),
        Row(VIEW, event_id(VIEW, X.fp, A.fp), X.time_us, 1, 0, 12_000),
        Row(VIEW, event_id(VIEW, S.fp, X.fp), S.time_us, 0, 1, 10_000),
    ]
    assert r.counters.tombstones == 0 and r.counters.late == 0
    assert r.advance(20_000) == []


def test_held_events_after_the_last_due_one_wait_for_their_own_deadline() -> None:
    r = make()
    feed(r, [A], ts=10_000, offset=0)
    feed(r, [S], ts=12_000, offset=1)
    assert [e.event_id for e in r.advance(15_000)] == [event_id(VIEW, A.fp, None)]
    assert [e.event_id for e in r.advance(17_000)] == [event_id(VIEW, S.fp, A.fp)]


def test_release_happens_before_a_new_record_joins_the_view() -> None:
    r = make()
    feed(r, [A, S], ts=10_000, offset=0)
    out = feed(r, [X], ts=15_000, offset=1)
    assert [e.event_id for e in out] == [event_id(VIEW, A.fp, None), event_id(VIEW, S.fp, A.fp)]


def test_identify_events_are_never_updated() -> None:
    ident = Ev(3_000_000, 33, identify=True)
    after = Ev(4_000_000, 55)
    r = make()
    feed(r, [A, ident, after], ts=10_000, offset=0)
    released = r.advance(15_000)
    assert released[1].event_id == identify_event_id(VIEW, ident.fp)
    feed(r, [X], ts=20_000, offset=1)
    out = r.advance(25_000)
    assert out == [Row(VIEW, event_id(VIEW, X.fp, A.fp), X.time_us, 1, 0, 20_000)]


def test_redelivered_events_are_dropped() -> None:
    r = make()
    feed(r, [A, S], ts=10_000, offset=0)
    assert feed(r, [S, A], ts=11_000, offset=1) == []
    r.advance(16_000)
    assert feed(r, [A], ts=20_000, offset=2) == []
    assert r.advance(30_000) == []
    assert r.counters.duplicates == 3


def test_zero_grace_releases_at_once() -> None:
    r = make(grace=0)
    out = feed(r, [S, A], ts=10_000, offset=0)
    assert [e.event_id for e in out] == [event_id(VIEW, A.fp, None), event_id(VIEW, S.fp, A.fp)]


def test_expired_view_events_are_emitted_detached_deduplicated_and_counted() -> None:
    r = Reorderer(DictViewStore(), grace_ms=GRACE, ttl_ms=60_000, horizon_ms=600_000)
    feed(r, [A], ts=10_000, offset=0)
    r.advance(20_000)
    assert r.open_views == 1
    r.advance(71_000)
    assert r.expire() == 1 and r.open_views == 0
    compact = r.store.get(VIEW)
    assert compact is not None and compact.compact and compact.released == []
    assert ViewState.decode(compact.encode()).seen(A.fp)
    # A new event of the expired view: published at once under its detached id, never reordered.
    out = feed(r, [X], ts=80_000, offset=1)
    assert out == [Row(VIEW, detached_event_id(VIEW, X.fp), X.time_us, 1, 0, 80_000)]
    assert r.counters.detached == 1
    # Redeliveries of the view's events, released or detached, are dropped within the horizon.
    assert feed(r, [A, X], ts=500_000, offset=2) == []
    assert r.advance(600_000) == []
    assert r.counters.duplicates == 2
    # Past the horizon the compact state is forgotten: the view starts afresh.
    fresh = Ev(1_200_000_000, 66)
    assert feed(r, [fresh], ts=1_200_000, offset=3) == []
    assert r.advance(1_206_000) == [
        Row(VIEW, event_id(VIEW, fresh.fp, None), fresh.time_us, 3, 0, 1_200_000)
    ]


def test_a_new_view_is_reordered_whatever_the_age_of_its_events() -> None:
    """A backfill: events a day older than stream time, arriving shuffled, for a new view."""
    r = make(ttl=3_600_000)
    now = 200_000_000
    old = [Ev(1_000_000 * n, 100 + n) for n in (5, 1, 4, 2, 3)]
    out = feed(r, old[:3], ts=now, offset=0)
    out += feed(r, old[3:], ts=now + 1_000, offset=1)
    out += r.advance(now + 10_000)
    assert [e.event_id for e in out] == [
        event_id(VIEW, fp, prev)
        for fp, prev in ((101, None), (102, 101), (103, 102), (104, 103), (105, 104))
    ]
    assert r.counters.detached == 0
    # A redelivered old event after the release is dropped, not published again.
    assert feed(r, [old[0]], ts=now + 20_000, offset=2) + r.advance(now + 30_000) == []


def test_a_stale_state_is_expired_when_touched_before_the_sweep() -> None:
    r = make(ttl=60_000)
    feed(r, [S], ts=10_000, offset=0)
    r.advance(20_000)
    out = feed(r, [A], ts=100_000, offset=1)
    assert out == [Row(VIEW, detached_event_id(VIEW, A.fp), A.time_us, 1, 0, 100_000)]
    assert r.counters.expired_views == 1


def test_stream_time_never_goes_back() -> None:
    r = make()
    feed(r, [A], ts=10_000, offset=0)
    feed(r, [S], ts=5_000, offset=1)  # a producer with a slow clock
    assert r.stream_time_ms == 10_000
    out = r.advance(15_000)
    assert [e.event_id for e in out] == [event_id(VIEW, A.fp, None), event_id(VIEW, S.fp, A.fp)]


def test_state_round_trips_and_restore_rebuilds_deadlines_and_expiry() -> None:
    store = DictViewStore()
    r = Reorderer(store, grace_ms=GRACE, ttl_ms=60_000)
    feed(r, [A, S], ts=10_000, offset=0)
    r.advance(15_000)
    feed(r, [X], ts=16_000, offset=1)
    encoded = {k: v.encode() for k, v in store.items()}
    restored_store = DictViewStore({k: ViewState.decode(v) for k, v in encoded.items()})
    assert restored_store[VIEW].released == store[VIEW].released
    assert restored_store[VIEW].held == store[VIEW].held
    again = Reorderer(restored_store, grace_ms=GRACE, ttl_ms=60_000, stream_time_ms=16_000)
    again.restore(restored_store.items())
    assert again.next_deadline_ms == 21_000
    assert again.advance(21_000) == r.advance(21_000)
    again.advance(100_000)
    assert again.expire() == 1


# --- the central invariant -------------------------------------------------------------

events_strategy = st.lists(
    st.builds(
        Ev,
        time_us=st.integers(0, 50).map(lambda n: n * 1_000_000),
        fp=st.integers(0, 2**64 - 1),
        identify=st.sampled_from([False, False, False, True]),
    ),
    min_size=1,
    max_size=25,
    unique_by=lambda e: e.fp,
)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[Ev], list[tuple[int, list[Ev]]]]:
    events = draw(events_strategy)
    order = draw(st.permutations(events))
    # Redeliver some events later.
    extra = draw(st.lists(st.sampled_from(events), max_size=5))
    stream = list(order) + extra
    batches: list[tuple[int, list[Ev]]] = []
    ts = 1_000
    position = 0
    while position < len(stream):
        size = draw(st.integers(1, 4))
        ts += draw(st.sampled_from([0, 100, 2_000, 4_999, 5_000, 7_000, 60_000]))
        batches.append((ts, stream[position : position + size]))
        position += size
    return events, batches


@settings(max_examples=400, deadline=None)
@given(arrivals())
def test_live_rows_are_the_same_for_every_arrival_order_split_and_redelivery(
    case: tuple[list[Ev], list[tuple[int, list[Ev]]]],
) -> None:
    events, batches = case
    r = make()
    emitted: list = []
    for offset, (ts, batch) in enumerate(batches):
        emitted += feed(r, batch, ts=ts, offset=offset)
    emitted += r.advance(batches[-1][0] + GRACE)
    live = live_rows(emitted)
    assert set(live) == expected_ids(events)
    # Every event is live exactly once, and every live row points at a copy of its event.
    by_fp = {}
    for offset, (_, batch) in enumerate(batches):
        for index, e in enumerate(batch):
            by_fp.setdefault(e.fp, set()).add((offset, index))
    assert sorted(row.time_us for row in live.values()) == sorted(e.time_us for e in events)
    fps_of_rows = []
    for row in live.values():
        (fp,) = [fp for fp, refs in by_fp.items() if (row.offset, row.index) in refs]
        fps_of_rows.append(fp)
    assert sorted(fps_of_rows) == sorted(e.fp for e in events)
    # A tombstone only ever names an id that was published before.
    published: set[str] = set()
    for emission in emitted:
        if isinstance(emission, Tombstone):
            assert emission.event_id in published
        else:
            published.add(emission.event_id)


@settings(max_examples=200, deadline=None)
@given(arrivals(), st.integers(0, 3))
def test_views_interleaved_on_one_partition_do_not_affect_each_other(
    case: tuple[list[Ev], list[tuple[int, list[Ev]]]],
    other_views: int,
) -> None:
    events, batches = case
    r = make()
    emitted: list = []
    for offset, (ts, batch) in enumerate(batches):
        for v in range(other_views + 1):
            emitted += feed(r, batch, ts=ts, offset=offset, view=f"9:9:{v}")
    emitted += r.advance(batches[-1][0] + GRACE)
    live = live_rows(emitted)
    expected = set().union(*(expected_ids(events, f"9:9:{v}") for v in range(other_views + 1)))
    assert set(live) == expected


@settings(max_examples=300, deadline=None)
@given(arrivals(), st.data())
def test_resuming_from_an_older_state_and_replaying_changes_no_live_row(
    case: tuple[list[Ev], list[tuple[int, list[Ev]]]],
    data: st.DataObject,
) -> None:
    """A crash: outputs up to record m were published, the state saved reflects record k <= m,
    and the input is replayed from the committed record c <= k."""
    events, batches = case
    m = data.draw(st.integers(0, len(batches)))
    k = data.draw(st.integers(0, m))
    c = data.draw(st.integers(0, k))
    store = DictViewStore()
    r = Reorderer(store, grace_ms=GRACE, ttl_ms=TTL)
    emitted: list = []
    snapshot: tuple[dict[str, bytes], int] = ({}, 0)
    for offset, (ts, batch) in enumerate(batches[:m]):
        if offset == k:
            snapshot = ({key: v.encode() for key, v in store.items()}, r.stream_time_ms)
        emitted += feed(r, batch, ts=ts, offset=offset)
    if k == m:
        snapshot = ({key: v.encode() for key, v in store.items()}, r.stream_time_ms)
    states, stream_time = snapshot
    restored = DictViewStore({key: ViewState.decode(v) for key, v in states.items()})
    again = Reorderer(restored, grace_ms=GRACE, ttl_ms=TTL, stream_time_ms=stream_time)
    again.restore(restored.items())
    for offset, (ts, batch) in enumerate(batches):
        if offset >= c:
            emitted += feed(again, batch, ts=ts, offset=offset)
    emitted += again.advance(batches[-1][0] + GRACE)
    assert set(live_rows(emitted)) == expected_ids(events)

"""Hostile records through the workers' record paths, without a broker: nothing a record
holds raises out of a worker, every record is published or dead-lettered, and the good
records around hostile ones come out exactly as they would alone."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fsstream.contract import codec
from fsstream.contract.dead_letters import DLQ_RECORD_LIMIT, dead_letter
from fsstream.contract.wire import HEARTBEAT_HEADER
from fsstream.core.jsondepth import json_depth
from fsstream.core.raw import (
    MAX_PROPERTIES_DEPTH,
    AbsurdIngestedTime,
    Limits,
    PropertiesTooDeep,
    check_batch,
)
from fsstream.core.reorder import Arrival, DictViewStore, Reorderer, ViewFull
from fsstream.core.timefmt import format_event_time
from fsstream.reorder.agent import ReorderAgent
from fsstream.reorder.content import LoggedRecord, RawContent
from fsstream.reorder.state import PartitionState
from fsstream.settings import Settings
from tests.scenario import RawRecord, View, expected_rows, live, make_views
from tests.unit.sink.test_agent import Harness, LogMessage, row, tombstone

NOW_MS = int(time.time() * 1000)
EVENT_TIME = format_event_time((NOW_MS - 60_000) * 1000)
LIMITS = Limits(max_age_ms=30 * 86_400_000, max_skew_ms=86_400_000)


def _batch(events: list[dict[str, Any]], ingested: int = NOW_MS) -> dict[str, Any]:
    return {"ingested_time": ingested, "events": events}


def _event(**changes: Any) -> dict[str, Any]:
    event = {
        "device_id": 1,
        "session_id": 2,
        "view_id": 3,
        "event_time": EVENT_TIME,
        "event_type": "click",
        "event_properties": "{}",
        "source_type": "web",
        "source_properties": "{}",
    }
    return {**event, **changes}


# -- checks -----------------------------------------------------------------------------


def _nested(depth: int) -> str:
    return "[" * (depth - 1) + "{}" + "]" * (depth - 1)


def test_properties_nest_as_deep_as_a_row_can_be_written_and_no_deeper() -> None:
    at_limit = _event(event_properties='{"a":' + _nested(MAX_PROPERTIES_DEPTH - 1) + "}")
    ts = NOW_MS
    _, [event] = check_batch(_batch([at_limit], ts), None, ts, LIMITS)
    orjson.dumps(event.event_properties)  # what the published row writes
    too_deep = _event(source_properties='{"a":' + _nested(MAX_PROPERTIES_DEPTH) + "}")
    with pytest.raises(PropertiesTooDeep, match="source_properties nests deeper than 254"):
        check_batch(_batch([too_deep], ts), None, ts, LIMITS)


def test_json_depth_walks_any_depth_without_recursion() -> None:
    value: Any = []
    for _ in range(200_000):
        value = [value, {"k": 1}]
    assert json_depth(value) == 200_001
    assert json_depth(3) == 0 and json_depth({}) == 1 and json_depth({"a": [1]}) == 2


@pytest.mark.parametrize("ingested", [2**62, -1, NOW_MS + 2 * 86_400_000, 0])
def test_an_ingested_time_far_from_the_record_timestamp_is_refused(ingested: int) -> None:
    with pytest.raises(AbsurdIngestedTime, match="ingested_time"):
        check_batch(_batch([_event()], ingested), None, NOW_MS, LIMITS)


# -- views are bounded ------------------------------------------------------------------


def test_a_record_that_would_overfill_its_view_is_refused_before_anything_changes() -> None:
    store = DictViewStore()
    reorderer = Reorderer(store, grace_ms=0, ttl_ms=60_000, max_view_events=5)
    arrivals = [Arrival(1_000 + i, 100 + i, i) for i in range(4)]
    assert len(reorderer.on_record("v", arrivals, offset=0, record_ts_ms=10, ingested_ms=10)) == 4
    before = store["v"].encode()
    more = [Arrival(2_000 + i, 200 + i, i) for i in range(2)]
    with pytest.raises(ViewFull, match="holds 4 events; 2 more would pass the 5"):
        reorderer.on_record("v", more, offset=1, record_ts_ms=20, ingested_ms=20)
    assert store["v"].encode() == before and reorderer.stream_time_ms == 10
    # Redelivered events take no room: a full view still drops them as duplicates.
    again = [*arrivals, more[0]]
    assert len(reorderer.on_record("v", again, offset=2, record_ts_ms=30, ingested_ms=30)) == 1
    assert reorderer.counters.duplicates == 4
    with pytest.raises(ViewFull):
        reorderer.on_record("v", more[1:], offset=3, record_ts_ms=40, ingested_ms=40)
    # Other views are not affected.
    assert reorderer.on_record("w", more, offset=4, record_ts_ms=50, ingested_ms=50)


def test_an_expired_view_is_bounded_too() -> None:
    store = DictViewStore()
    reorderer = Reorderer(store, grace_ms=0, ttl_ms=1_000, horizon_ms=10**9, max_view_events=3)
    reorderer.on_record(
        "v", [Arrival(1, 1, 0), Arrival(2, 2, 1)], offset=0, record_ts_ms=0, ingested_ms=0
    )
    reorderer.advance(5_000)
    reorderer.expire()
    assert store["v"].compact
    reorderer.on_record("v", [Arrival(3, 3, 0)], offset=1, record_ts_ms=5_000, ingested_ms=0)
    with pytest.raises(ViewFull):
        reorderer.on_record("v", [Arrival(4, 4, 0)], offset=2, record_ts_ms=5_000, ingested_ms=0)


# -- dead letters -----------------------------------------------------------------------

SIZES = st.sampled_from([0, 10, 1_000, 500_000, 899_000, 900_000, 2_000_000])


@given(
    key=st.none() | SIZES,
    value=st.none() | SIZES,
    headers=st.lists(SIZES, max_size=3),
    message=SIZES,
)
@settings(max_examples=60, deadline=None)
def test_a_dead_letter_always_fits_the_broker_and_keeps_what_fits(
    key: int | None, value: int | None, headers: list[int], message: int
) -> None:
    original = (
        None if key is None else b"k" * key,
        None if value is None else b"v" * value,
        [(f"h{i}", b"x" * size) for i, size in enumerate(headers)],
    )
    out_key, out_value, out_headers = dead_letter(
        *original, reason="Reason", message="m" * message, source="raw/0/1"
    )
    size = (
        len(out_key or b"")
        + len(out_value or b"")
        + sum(len(k) + len(v) + 8 for k, v in out_headers)
    )
    assert size <= DLQ_RECORD_LIMIT + 2_000
    named = dict(out_headers)
    assert (
        named["fs-error"] == b"Reason: " + b"m" * min(message, 2_000)
        and named["fs-source"] == b"raw/0/1"
    )
    dropped = named.get("fs-dlq-dropped", b"").decode().split(",")
    assert (out_value == original[1]) == ("value" not in dropped)
    assert (out_key == original[0]) == ("key" not in dropped)
    if "value" in dropped:
        assert original[1] is not None
        assert named["fs-dlq-size"] == str(len(original[1])).encode()
        assert named["fs-dlq-sha256"] == hashlib.sha256(original[1]).hexdigest().encode()
    if "headers" not in dropped:
        assert out_headers[: len(original[2])] == original[2]


# -- the reorder worker's record path ---------------------------------------------------


class ConsumedRecord:
    """A raw-topic record, shaped like aiokafka's."""

    def __init__(
        self, offset: int, key: bytes | None, value: bytes | None, timestamp: int, headers: list
    ) -> None:
        self.topic = "raw"
        self.partition = 0
        self.offset = offset
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.headers = headers


class RecordingContent(RawContent):
    """The raw-content cache, noting which records entered the view state."""

    def __init__(self, records: dict[int, LoggedRecord]) -> None:
        async def read(partition: int, offsets: list[int]) -> dict[int, LoggedRecord]:
            return {o: records[o] for o in offsets if o in records}

        log = type("Log", (), {"read": staticmethod(read)})()
        super().__init__(log, LIMITS, 1 << 30)
        self.taken: set[int] = set()

    def put(self, partition: int, offset: int, record: Any) -> None:
        self.taken.add(offset)
        super().put(partition, offset, record)


def _no_enrichment(event: Any, _at: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return event.event_properties, event.source_properties


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(
        st.just("timestamp"), st.sampled_from([-1, 0, 2**62, NOW_MS + 3_600_000]), st.just(0)
    ),
    st.tuples(st.just("heartbeat-header"), st.just(0), st.just(0)),
    st.tuples(
        st.just("key"), st.sampled_from([b"", b"\xff\xfe", b"1:2:3", b"k" * 10_000]), st.just(0)
    ),
    st.tuples(st.just("value"), st.sampled_from([b"", b"\xc3\x01", b"\x00" * 50]), st.just(0)),
)
HOSTILE_EVENT = st.fixed_dictionaries(
    {
        "event_time": st.sampled_from(
            ["2026-13-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "now", ""]
        )
        | st.text(max_size=30),
        "event_type": st.sampled_from(["", "click", "identify"]) | st.text(max_size=10),
        "event_properties": st.sampled_from(
            ["{}", "[]", "null", '{"a":' + _nested(260) + "}", '{"a":' + _nested(1200) + "}", "{"]
        )
        | st.text(max_size=30),
        "device_id": st.none() | st.integers(-(2**63), 2**63 - 1),
    }
)


def _mutated(
    value: bytes, key: bytes, timestamp: int, mutation: tuple[Any, int, int]
) -> ConsumedRecord:
    kind, position, byte = mutation
    headers: list = []
    if kind == "flip":
        data = bytearray(value)
        data[position % len(data)] = byte
        value = bytes(data)
    elif kind == "cut":
        value = value[: position % len(value)]
    elif kind == "timestamp":
        timestamp = position
    elif kind == "heartbeat-header":
        headers = [(HEARTBEAT_HEADER, b"1")]
    elif kind == "key":
        key = position
    elif kind == "value":
        value = position
    return ConsumedRecord(0, key, value, timestamp, headers)


def _views(seed: int) -> tuple[list[View], list[View]]:
    """Good views, and the views hostile records are made from (other devices)."""
    rng = random.Random(seed)
    good = make_views(rng, count=4, per_view=4, start_ms=NOW_MS - 60_000)
    hostile = make_views(rng, count=3, per_view=2, start_ms=NOW_MS - 60_000)
    for n, view in enumerate(hostile):
        view.key = f"{9000 + n}:1:1"
        for event in view.events:
            event.update(device_id=9000 + n, session_id=1, view_id=1)
    return good, hostile


def _view_of(value: bytes | None) -> str | None:
    """The view a record's value decodes to, if it decodes."""
    try:
        events = codec.decode(value or b"", codec.RAW_EVENT_BATCH)["events"]
        return (
            f"{events[0]['device_id']}:{events[0]['session_id'] or ''}:{events[0]['view_id'] or ''}"
        )
    except Exception:
        return None


@given(
    seed=st.integers(0, 1_000),
    mutations=st.lists(MUTATION, min_size=1, max_size=8),
    events=st.lists(HOSTILE_EVENT, max_size=3),
    order=st.randoms(use_true_random=False),
)
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_hostile_records_never_escape_the_reorder_record_path(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    mutations: list[tuple[Any, int, int]],
    events: list[dict[str, Any]],
    order: random.Random,
) -> None:
    good_views, hostile_views = _views(seed)
    records: list[ConsumedRecord] = []
    for view in good_views:
        record = RawRecord(view.key, NOW_MS, view.events)
        records.append(ConsumedRecord(0, view.key.encode(), record.encode(), NOW_MS, []))
    for i, mutation in enumerate(mutations):
        source = hostile_views[i % len(hostile_views)]
        value = RawRecord(source.key, NOW_MS, source.events).encode()
        record = _mutated(value, source.key.encode(), NOW_MS, mutation)
        assume(_view_of(record.value) not in {v.key for v in good_views})
        records.append(record)
    for i, changes in enumerate(events):
        source = hostile_views[i % len(hostile_views)]
        event = {**source.events[0], **changes}
        if event["device_id"] is not None:
            assume(f"{event['device_id']}:1:1" not in {v.key for v in good_views})
        value = codec.encode(codec.RAW_EVENT_BATCH, _batch([event]))
        records.append(ConsumedRecord(0, None, value, NOW_MS, []))
    order.shuffle(records)
    for offset, record in enumerate(records):
        record.offset = offset

    settings_ = Settings(reorder_grace_s=0, max_view_events=50)
    content = RecordingContent(
        {r.offset: LoggedRecord(r.timestamp, r.value or b"", r.key) for r in records}
    )
    agent = ReorderAgent(settings_, content, _no_enrichment, clock=lambda: NOW_MS / 1000)
    state = PartitionState(tmp_path_factory.mktemp("state"), 1_000, settings_.dedup_horizon_ms)
    try:
        order_ = agent.new_order(0, state)
        out = asyncio.run(agent.process(order_, records))
    finally:
        state.close()
    dead = {int(dict(h)["fs-source"].rsplit(b"/", 1)[1]) for _, _, h in out.dlq}
    assert out.raw_records == len(records)
    assert dead.isdisjoint(content.taken) and dead | content.taken == {r.offset for r in records}
    for _, _, headers in out.dlq:
        named = dict(headers)
        assert named["fs-error"].split(b":")[0].decode().isidentifier()
    published = [
        LogMessage("events", p, i, key, value, headers)
        for i, (p, key, value, headers) in enumerate(out.events)
    ]
    rows = live(published)
    good_keys = {v.key for v in good_views}
    good_rows = {k: r for k, r in rows.items() if dict(r.headers)["fs-view"].decode() in good_keys}
    assert set(good_rows) == set(expected_rows(good_views))
    for record in published:
        if record.value is not None:
            assert len(record.value) < 1_000_000
            orjson.loads(codec.decode(record.value, codec.EVENT)["event_properties"])


def test_a_row_too_large_for_the_events_topic_is_dead_lettered(tmp_path: Path) -> None:
    big = _event(event_properties=orjson.dumps({"x": "y" * 1_000_010}).decode())
    value = codec.encode(codec.RAW_EVENT_BATCH, _batch([big]))
    settings_ = Settings(reorder_grace_s=0, max_record_bytes=2_000_000)
    record = ConsumedRecord(0, b"1:2:3", value, NOW_MS, [])
    content = RecordingContent({0: LoggedRecord(NOW_MS, value, b"1:2:3")})
    agent = ReorderAgent(settings_, content, _no_enrichment, clock=lambda: NOW_MS / 1000)
    state = PartitionState(tmp_path / "state", 100, settings_.dedup_horizon_ms)
    try:
        out = asyncio.run(agent.process(agent.new_order(0, state), [record]))
    finally:
        state.close()
    assert out.events == []
    [(key, dlq_value, headers)] = out.dlq
    assert dict(headers)["fs-error"].startswith(b"RowTooLarge: event 0: the row takes")
    assert key == b"1:2:3" and dlq_value is None


# -- the sink's record path -------------------------------------------------------------

SINK_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(0, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10_000), st.just(0)),
    st.tuples(
        st.just("ingested"),
        st.sampled_from([-1, 2**62, 2**63 - 1, 253_402_300_800_000]),
        st.just(0),
    ),
    st.tuples(
        st.just("header"),
        st.sampled_from(["fs-ingested", "fs-view", "fs-event-time", "fs-superseded-at"]),
        st.sampled_from([b"", b"x", b"99999999999999999999999", b"-5", b"1:2:3:4"]),
    ),
    st.tuples(st.just("no-key"), st.just(0), st.just(0)),
)


@given(
    mutations=st.lists(SINK_MUTATION, min_size=1, max_size=8),
    order=st.randoms(use_true_random=False),
)
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_hostile_records_never_escape_the_sink_record_path(
    tmp_path_factory: pytest.TempPathFactory,
    mutations: list[tuple[str, Any, Any]],
    order: random.Random,
) -> None:
    from tests.unit.sink.test_agent import H0

    harness = Harness(tmp_path_factory.mktemp("sink"))
    rejected: list[tuple[int, str]] = []

    async def reject(message: Any, error: Exception) -> None:
        rejected.append((message.offset, type(error).__name__))

    harness.agent.reject = reject
    good = [row(0, 0, f"{i:032x}", H0 + i) for i in range(1, 6)]
    hostile: list[LogMessage] = []
    for i, (kind, a, b) in enumerate(mutations):
        event_id = f"{0xBAD000 + i:032x}"
        if kind == "header":
            message = tombstone(0, 0, event_id, H0, H0 + 10)
            message.headers = [(k, b if k == a else v) for k, v in message.headers]
        elif kind == "no-key":
            message = tombstone(0, 0, event_id, H0, H0 + 10)
            message.key = None
        else:
            message = row(0, 0, event_id, H0 + 10)
            assert message.value is not None
            if kind == "flip":
                data = bytearray(message.value)
                data[a % len(data)] = b
                message.value = bytes(data)
            elif kind == "cut":
                message.value = message.value[: a % len(message.value)]
            else:
                decoded = codec.decode(message.value, codec.EVENT)
                message.value = codec.encode(codec.EVENT, {**decoded, "ingested_time": a})
        if message.value is not None:
            with contextlib.suppress(codec.CodecError):
                assume(
                    codec.decode(message.value, codec.EVENT)["event_id"]
                    not in {m.key.decode() for m in good if m.key}
                )
        hostile.append(message)
    messages = good + hostile
    order.shuffle(messages)
    for offset, message in enumerate(messages):
        message.offset = offset

    async def run() -> None:
        await harness.send(*messages)
        await harness.agent.sync()

    asyncio.run(run())
    assert harness.acked_offsets() == list(range(len(messages)))
    assert {f"{i:032x}" for i in range(1, 6)} <= set(harness.live())
    for offset, reason in rejected:
        assert messages[offset] in hostile, reason

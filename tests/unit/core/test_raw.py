from hashlib import blake2b
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsstream.core import raw
from fsstream.core.ids import (
    detached_event_id,
    event_id,
    fingerprint,
    identify_event_id,
    source_fingerprint,
)
from tests.unit.contract.test_codec import RAW_EVENT

TS_MS = 1704067200500
LIMITS = raw.Limits(max_age_ms=86_400_000, max_skew_ms=3_600_000)
EVENT: dict[str, Any] = RAW_EVENT


def _reason(event: dict[str, Any], position: int = 0) -> tuple[type, str]:
    with pytest.raises(Exception) as caught:
        raw.check_event(event, position, TS_MS, LIMITS)
    return caught.type, str(caught.value)


def test_a_checked_event() -> None:
    event = raw.check_event(EVENT, 0, TS_MS, LIMITS)
    assert event == raw.RawEvent(
        42,
        7,
        None,
        1704067200123000,
        "2024-01-01T00:00:00.123000Z",
        "click",
        {"target": {"raw_selector": "body > a"}},
        "web",
        {},
        8045185409673680617,
    )


@pytest.mark.parametrize(
    ("args", "fp"),
    [
        # Pinned: a fingerprint is stored in view state, so it must never change.
        (
            (1704067200123000, "click", '{"target":{"raw_selector":"body > a"}}', "web", "{}"),
            8045185409673680617,
        ),
        ((0, "é中\U0001f600", '{"a":"\\u00e9\\n"}', "w", ""), 16589750480558339551),
        ((-1, "", "", "", ""), 9736540064285956011),
    ],
)
def test_fingerprints_are_stable(args: tuple[int, str, str, str, str], fp: int) -> None:
    assert fingerprint(*args) == fp


def test_event_ids_of_events_without_a_source_id_are_unchanged() -> None:
    """Pinned: published ids of events without a source id stay what they were."""
    event = raw.check_event({**EVENT, "view_id": None}, 0, TS_MS, LIMITS)
    assert event.fp == 8045185409673680617
    assert event_id("42:7:", event.fp, None) == "7ffedcdf5fd7a6db2d80351fa26adb2b"
    assert event_id("42:7:", event.fp, 16589750480558339551) == "49538f4878f761cdf00499aa1157d650"
    assert identify_event_id("42:7:", event.fp) == "2968ef28fdf0fba03325ee8a42990b6d"
    assert detached_event_id("42:7:", event.fp) == "a49ef69cd8e9667a923dd024a4360a13"
    # The same without the key at all (a record of the previous schema).
    without = {k: v for k, v in EVENT.items() if k != "source_event_id"}
    assert raw.check_event(without, 0, TS_MS, LIMITS).fp == 8045185409673680617


def test_a_source_id_is_the_identity() -> None:
    one = raw.check_event({**EVENT, "source_event_id": "evt-1"}, 0, TS_MS, LIMITS)
    two = raw.check_event({**EVENT, "source_event_id": "evt-2"}, 0, TS_MS, LIMITS)
    # Content-identical events with different source ids are different events ...
    assert one.fp != two.fp
    assert one.fp == source_fingerprint("evt-1") == 10602311299372128458  # pinned
    # ... and a redelivery is recognised by its id alone, whatever its content.
    again = raw.check_event(
        {**EVENT, "source_event_id": "evt-1", "event_properties": '{"retry":1}'}, 0, TS_MS, LIMITS
    )
    assert again.fp == one.fp
    assert one.fp != raw.check_event(EVENT, 0, TS_MS, LIMITS).fp
    expected = blake2b(b"evt-1", digest_size=8, person=b"fsstream-source").digest()
    assert one.fp == int.from_bytes(expected, "little")


@given(st.integers(-(2**60), 2**60), st.text(), st.text(), st.text(), st.text())
def test_source_fingerprints_are_apart_from_content_fingerprints(
    us: int, event_type: str, properties: str, source_type: str, source: str
) -> None:
    """A source id spelling an event's content still hashes to another fingerprint."""
    content = f"{us}\x1f{event_type}\x1f{properties}\x1f{source_type}\x1f{source}"
    assert source_fingerprint(content) != fingerprint(
        us, event_type, properties, source_type, source
    )


def test_an_empty_source_id_is_refused() -> None:
    kind, message = _reason({**EVENT, "source_event_id": ""}, position=2)
    assert (kind, message) == (raw.EmptySourceEventId, "event 2: source_event_id is empty")


@given(st.integers(-(2**70), 2**70), st.text(), st.text(), st.text(), st.text())
def test_fingerprint_hashes_the_parts_encoded_one_by_one(
    us: int, event_type: str, event_properties: str, source_type: str, source_properties: str
) -> None:
    parts = (event_type, event_properties, source_type, source_properties)
    data = b"%d\x1f%s\x1f%s\x1f%s\x1f%s" % (us, *(p.encode() for p in parts))
    expected = int.from_bytes(blake2b(data, digest_size=8).digest(), "little")
    assert fingerprint(us, *parts) == expected


@pytest.mark.parametrize(
    ("event_properties", "source_properties", "reason"),
    [
        ("[]", "{}", "event 3: event_properties is a JSON list, not an object"),
        ("null", "{}", "event 3: event_properties is a JSON NoneType, not an object"),
        ("{}", '"x"', "event 3: source_properties is a JSON str, not an object"),
        ("{}", "12345678901234567890123", "event 3: source_properties is a JSON float"),
        ("[1]", "{", "event 3: event_properties is a JSON list"),  # the first one wrong
        ("{", "[", "event 3: event_properties is not valid JSON (unexpected end of data"),
        ("{}", "", "event 3: source_properties is not valid JSON (Input is a zero-length"),
        ("{}", '{"a":"\ud800"}', "event 3: source_properties is not valid JSON"),
    ],
)
def test_properties_that_are_not_objects(
    event_properties: str, source_properties: str, reason: str
) -> None:
    event = {**EVENT, "event_properties": event_properties, "source_properties": source_properties}
    kind, message = _reason(event, position=3)
    assert kind is raw.PropertiesNotObject
    assert message.startswith(reason)


@pytest.mark.parametrize(
    "text",
    ['{"é":"中\\u00e9\\ud83d\\ude00","n":12345678901234567890123456789}', '{"a":{"b":[{}]}}'],
)
def test_properties_are_parsed_as_orjson_parses_them(text: str) -> None:
    event = raw.check_event({**EVENT, "source_properties": text}, 0, TS_MS, LIMITS)
    assert event.source_properties == orjson.loads(text)
    assert event.fp == fingerprint(event.time_us, "click", EVENT["event_properties"], "web", text)


@pytest.mark.parametrize(
    ("change", "kind", "message"),
    [
        ({"device_id": None}, raw.MissingDeviceId, "event 0 has no device_id"),
        ({"event_time": "yesterday"}, raw.BadEventTime, "event 0: event_time 'yesterday'"),
        ({"event_time": "2023-01-01T00:00:00Z"}, raw.AbsurdEventTime, "event 0: event_time"),
        ({"event_type": ""}, raw.MissingEventType, "event 0 has no event_type"),
        ({"source_type": None}, raw.MissingEventType, "event 0 has no source_type"),
        ({"event_time": None}, TypeError, "object of type 'NoneType' has no len()"),
        # A wrong event_type comes before wrong properties.
        ({"event_type": None, "event_properties": "["}, raw.MissingEventType, "event 0"),
    ],
)
def test_invalid_events(change: dict[str, Any], kind: type, message: str) -> None:
    found_kind, found_message = _reason({**EVENT, **change})
    assert found_kind is kind
    assert found_message.startswith(message)


@pytest.mark.parametrize("missing", ["session_id", "view_id", "source_properties"])
def test_a_missing_field_is_a_key_error_even_with_bad_properties(missing: str) -> None:
    event = {**EVENT, "event_properties": "["}
    del event[missing]
    assert _reason(event) == (KeyError, repr(missing))


def test_non_canonical_event_times_are_normalised() -> None:
    event = raw.check_event(
        {**EVENT, "event_time": "2024-01-01T01:00:00.5+01:00"}, 0, TS_MS, LIMITS
    )
    assert (event.time_us, event.event_time) == (1704067200500000, "2024-01-01T00:00:00.500000Z")


def test_batches() -> None:
    batch = {"ingested_time": TS_MS, "events": [EVENT, {**EVENT, "event_type": "load"}]}
    key, events = raw.check_batch(batch, "42:7:", TS_MS, LIMITS)
    assert key == "42:7:"
    assert [e.event_type for e in events] == ["click", "load"]
    with pytest.raises(raw.EmptyBatch):
        raw.check_batch({"ingested_time": TS_MS, "events": []}, None, TS_MS, LIMITS)
    with pytest.raises(raw.ViewKeyMismatch, match="record key '42:7:1' but the events"):
        raw.check_batch(batch, "42:7:1", TS_MS, LIMITS)
    other = {"ingested_time": TS_MS, "events": [EVENT, EVENT, {**EVENT, "view_id": 0}]}
    with pytest.raises(raw.ViewKeyMismatch, match=r"event 2 is of view 42:7:0, event 0 of 42:7:$"):
        raw.check_batch(other, None, TS_MS, LIMITS)

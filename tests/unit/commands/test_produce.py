import orjson
import pytest

from fsstream.commands.produce import NdjsonError, group_batches, parse_ndjson
from fsstream.contract import codec

GOOD = {
    "device_id": 1,
    "session_id": 2,
    "view_id": 3,
    "event_time": "2024-01-01T00:00:00.000Z",
    "event_type": "click",
    "event_properties": {"target": {"raw_selector": "a"}},
    "source_type": "web",
    "source_properties": {"url": {"path": "/"}},
}


def line(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in event.items() if v is not ...})


def test_parses_and_groups_per_view_in_input_order() -> None:
    lines = [
        line(event_time=f"2024-01-01T00:00:0{i}.000Z", view_id=3 if i % 2 else 4) for i in range(7)
    ]
    events = parse_ndjson(lines, ingested_time=1000)
    batches = list(group_batches(events, batch_size=2))
    by_view: dict[str, list[str]] = {}
    for batch in batches:
        assert 1 <= len(batch.events) <= 2
        assert batch.ingested_time == 1000
        by_view.setdefault(batch.key, []).extend(e["event_time"] for e in batch.events)
        decoded = codec.decode(batch.encode(), expected=codec.RAW_EVENT_BATCH)
        assert decoded["events"] == batch.events
    assert by_view == {
        "1:2:3": [f"2024-01-01T00:00:0{i}.000Z" for i in (1, 3, 5)],
        "1:2:4": [f"2024-01-01T00:00:0{i}.000Z" for i in (0, 2, 4, 6)],
    }


def test_absent_ids_give_empty_view_key_parts() -> None:
    ((key, _, record),) = parse_ndjson([line(session_id=..., view_id=None)], ingested_time=5)
    assert key == "1::"
    assert record["session_id"] is None and record["view_id"] is None


def test_line_ingested_time_overrides_default() -> None:
    events = parse_ndjson(
        [line(ingested_time=7), line(ingested_time="2024-01-01T00:00:01Z")], ingested_time=5
    )
    assert [ingested for _, ingested, _ in events] == [7, 1704067201000]


def test_malformed_lines_are_named_by_number() -> None:
    lines = [
        line(),
        b"{not json",
        line(device_id=...),
        b"",
        line(device_id="12"),
        line(event_time="yesterday"),
        line(event_properties=[1, 2]),
        b"[1]",
        line(event_type=""),
    ]
    with pytest.raises(NdjsonError) as caught:
        parse_ndjson(lines, ingested_time=0)
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [f"line {n}" for n in (2, 3, 5, 6, 7, 8, 9)]
    assert problems[0].startswith("line 2: invalid JSON")
    assert problems[1] == "line 3: device_id is missing"
    assert problems[2] == "line 5: device_id must be an integer, got '12'"
    assert problems[3].startswith("line 6: not an RFC 3339 timestamp")
    assert problems[4] == "line 7: event_properties must be a JSON object, got list"
    assert problems[5] == "line 8: expected a JSON object, got list"
    assert problems[6] == "line 9: event_type must be a non-empty string, got ''"
    assert str(caught.value).count("\n") == 6


def test_problem_list_is_capped_but_counted() -> None:
    with pytest.raises(NdjsonError) as caught:
        parse_ndjson([b"x"] * 30, ingested_time=0, max_problems=5)
    assert len(caught.value.problems) == 5
    assert str(caught.value).endswith("... and 25 more")

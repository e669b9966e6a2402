from collections.abc import Iterable

import orjson
import pytest
from click.testing import CliRunner

from fsstream.cli import main
from fsstream.commands import produce as produce_command
from fsstream.commands.produce import (
    EncodedBatch,
    NdjsonError,
    group_batches,
    parse_ndjson,
    refusal_report,
    screen,
    within,
)
from fsstream.contract import codec
from fsstream.core.raw import Limits
from fsstream.settings import Settings

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


NOW_MS = 1767225600000  # 2026-01-01T00:00:00Z
LIMITS = Limits(max_age_ms=30 * 86_400_000, max_skew_ms=86_400_000)
RECENT = "2025-12-31T23:00:00Z"


def test_a_source_event_id_is_carried_and_checked() -> None:
    events = parse_ndjson(
        [line(source_event_id="srv-1"), line(source_event_id=17), line()], ingested_time=5
    )
    assert [record["source_event_id"] for _, _, record in events] == ["srv-1", "17", None]
    batch = next(group_batches(events, batch_size=20))
    decoded = codec.decode(batch.encode(), expected=codec.RAW_EVENT_BATCH)
    assert decoded["events"] == batch.events
    with pytest.raises(NdjsonError) as caught:
        parse_ndjson([line(source_event_id=""), line(source_event_id=True)], ingested_time=5)
    assert caught.value.problems == [
        "line 1: source_event_id must be a non-empty string or an integer, got ''",
        "line 2: source_event_id must be a non-empty string or an integer, got True",
    ]


def test_events_the_worker_would_refuse_are_screened_out_by_reason() -> None:
    lines = [
        line(event_time="2025-12-31T23:00:00Z"),
        line(event_time="2023-03-01T10:00:00Z"),
        line(event_time="2023-03-01T10:00:01Z", view_id=4),
        line(event_time="2026-01-03T00:00:00Z"),
        line(event_time="2023-03-01T10:00:00Z", ingested_time="2023-03-01T10:05:00Z"),
    ]
    events = parse_ndjson(lines, ingested_time=NOW_MS)
    screened = screen(events, LIMITS, max_record_bytes=1_048_576, max_examples=2)
    assert screened.accepted == [events[0], events[4]]
    assert screened.refused == events[1:4]
    assert screened.reasons == {"AbsurdEventTime": 3}
    assert screened.examples == [
        "event 2 (view 1:2:3): AbsurdEventTime: event_time 2023-03-01T10:00:00Z is -89560800s"
        " from the record timestamp",
        "event 3 (view 1:2:4): AbsurdEventTime: event_time 2023-03-01T10:00:01Z is -89560799s"
        " from the record timestamp",
    ]
    report = refusal_report(screened, Settings(), sent_anyway=False)
    assert report.splitlines()[0] == (
        "refused 3 events (3 AbsurdEventTime); not sent (--send-refused sends them, to the DLQ)"
    )
    assert "  ... and 1 more" in report
    assert "raise FSSTREAM_MAX_EVENT_AGE_S (now 2592000 s)" in report


def test_records_the_raw_topic_would_not_keep_are_refused() -> None:
    lines = [
        line(event_time=RECENT),
        line(event_time=RECENT, ingested_time=NOW_MS - 8 * 86_400_000),
    ]
    events = parse_ndjson(lines, ingested_time=NOW_MS)
    screened = screen(events, LIMITS, 1_048_576, oldest_kept_ms=NOW_MS - 7 * 86_400_000)
    assert (screened.accepted, screened.refused) == (events[:1], events[1:])
    assert screened.examples == [
        "event 2 (view 1:2:3): PastRawRetention: ingested_time 1766534400000 is 86400s older"
        " than the raw topic keeps records"
    ]
    report = refusal_report(screened, Settings(), sent_anyway=True)
    assert "raise FSSTREAM_RAW_RETENTION_S (now 604800 s)" in report
    assert "sent anyway (--send-refused)" in report


def test_an_event_too_large_alone_is_refused_and_large_batches_are_split() -> None:
    big = "x" * 400
    events = parse_ndjson(
        [line(event_properties={"v": big, "i": i}, event_time=RECENT) for i in range(5)]
        + [line(event_properties={"v": big * 3}, event_time=RECENT)],
        ingested_time=NOW_MS,
    )
    screened = screen(events, LIMITS, max_record_bytes=1000)
    assert screened.refused == events[5:]
    assert screened.reasons == {"OversizedRecord": 1}
    batches = list(within(group_batches(screened.accepted, batch_size=20), 1000))
    assert [len(b.batch.events) for b in batches] == [2, 1, 2]  # two fit, three do not
    assert all(b.value == b.batch.encode() and len(b.value) <= 1000 for b in batches)
    assert [e for b in batches for e in b.batch.events] == [r for _, _, r in screened.accepted]


@pytest.mark.parametrize("send_refused", [False, True])
def test_the_command_sends_only_accepted_events_and_fails_on_refusals(
    monkeypatch: pytest.MonkeyPatch, send_refused: bool
) -> None:
    sent: list[dict[str, object]] = []

    async def fake_produce(settings: Settings, batches: Iterable[EncodedBatch]) -> tuple[int, int]:
        records = [batch for batch, _ in batches]
        sent.extend(e for b in records for e in b.events)
        return len(records), sum(len(b.events) for b in records)

    monkeypatch.setattr(produce_command, "produce_batches", fake_produce)
    monkeypatch.setattr(produce_command, "now_ms", lambda: NOW_MS)
    source = b"\n".join(
        [line(event_time="2025-12-31T23:00:00Z"), line(event_time="2023-03-01T10:00:00Z")]
    )
    args = ["produce", "--ingested-time", str(NOW_MS), "-"]
    result = CliRunner().invoke(
        main, [*args, "--send-refused"] if send_refused else args, input=source
    )
    assert result.exit_code == 1
    assert [e["event_time"] for e in sent] == (
        ["2025-12-31T23:00:00Z", "2023-03-01T10:00:00Z"]
        if send_refused
        else ["2025-12-31T23:00:00Z"]
    )
    assert f"produced {len(sent)} events in 1 records" in result.output
    assert "refused 1 events (1 AbsurdEventTime)" in result.output
    assert "FSSTREAM_MAX_EVENT_AGE_S" in result.output


def test_the_command_succeeds_when_nothing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake_produce(settings: Settings, batches: Iterable[EncodedBatch]) -> tuple[int, int]:
        records = [batch for batch, _ in batches]
        return len(records), sum(len(b.events) for b in records)

    monkeypatch.setattr(produce_command, "produce_batches", fake_produce)
    monkeypatch.setattr(produce_command, "now_ms", lambda: NOW_MS)
    result = CliRunner().invoke(
        main,
        ["produce", "--ingested-time", str(NOW_MS), "-"],
        input=line(event_time="2026-01-01T00:00:00Z"),
    )
    assert result.exit_code == 0, result.output
    assert "refused" not in result.output

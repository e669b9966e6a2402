"""Source event ids on the real broker: they, not the content, identify events; records
of the schema before them are still processed and still readable by old readers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.core.ids import event_id, source_fingerprint
from fsstream.core.timefmt import format_event_time
from fsstream.devtools.processes import WorkerProcess
from fsstream.settings import Settings
from tests.scenario import RawRecord, View, expected_rows, live, produce, read_all, wait_for
from tests.unit.contract.test_avro_interop import apache_decode, apache_encode, apache_schema

PREVIOUS_BATCH = bytes.fromhex("3fb607598001468a")


def _click(view_id: int, time_us: int, **extra: Any) -> dict[str, Any]:
    return {
        "device_id": 77,
        "session_id": 1,
        "view_id": view_id,
        "event_time": format_event_time(time_us),
        "event_type": "click",
        "event_properties": '{"target":{"raw_selector":"body > button"}}',
        "source_type": "web",
        "source_properties": '{"url":{"path":"/cart"}}',
        **extra,
    }


async def test_source_ids_identify_events_and_old_records_are_still_processed(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=0.5)
    await create_topics(settings)
    now = int(time.time() * 1000)
    moment_us = (now - 30_000) * 1000
    # Two content-identical clicks with their own ids: both are events.
    with_ids = View("77:1:1", [_click(1, moment_us, source_event_id=f"srv-{i}") for i in (1, 2)])
    # A view written with the schema before source_event_id, a content-identical pair in it.
    old = View("77:1:2", [_click(2, moment_us)] * 2 + [_click(2, moment_us + 1000)])
    old_schema = apache_schema(codec.previous_documents()[PREVIOUS_BATCH])
    old_value = apache_encode(old_schema, {"ingested_time": now, "events": old.events})
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        await produce(
            settings,
            [
                RawRecord(with_ids.key, now, with_ids.events),
                RawRecord(old.key, now, [], value=old_value),
            ],
        )
        # The pair with ids, ordered by (event_time, fingerprint) like any events.
        first, second = sorted(("srv-1", "srv-2"), key=source_fingerprint)
        expected = {
            event_id(with_ids.key, source_fingerprint(first), None),
            event_id(with_ids.key, source_fingerprint(second), source_fingerprint(first)),
        }
        # Without ids, content identifies: the pair is one event, as before.
        expected |= set(expected_rows([View(old.key, old.events[1:])]))
        assert len(expected) == 4
        out = await wait_for(settings, settings.topic_events, lambda rs: set(live(rs)) == expected)
        assert set(live(out)) == expected
        # A redelivery with the same source id is dropped, even with other content.
        redelivered = {**with_ids.events[0], "event_properties": '{"retry":true}'}
        await produce(settings, [RawRecord(with_ids.key, now + 1000, [redelivered])])
        deadline = time.monotonic() + 60
        while worker.metric("fsstream_events_in_total") < 6 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert worker.metric("fsstream_events_in_total") >= 6
        time.sleep(2)  # past the grace: anything it released would be out
        out = await read_all(settings, settings.topic_events)
    assert set(live(out)) == expected
    assert len(out) == 4
    assert await read_all(settings, settings.topic_dlq) == []
    # A reader of the schema before source_event_id reads the records written today.
    raw = await read_all(settings, settings.topic_raw)
    today = apache_schema(codec.schema_document(codec.RAW_EVENT_BATCH))
    new_value = next(r.value for r in raw if r.key == with_ids.key.encode())
    read = apache_decode(new_value, today, old_schema)
    assert read["events"] == [
        {k: v for k, v in e.items() if k != "source_event_id"} for e in with_ids.events
    ]

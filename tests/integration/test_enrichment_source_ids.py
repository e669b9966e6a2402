"""Ids the source already set, on the real broker: kept for kinds with no definitions,
replaced where definitions of the kind are loaded."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.devtools.processes import WorkerProcess
from fsstream.settings import Settings
from tests.integration.test_enrichment import load
from tests.scenario import RawRecord, live, produce, wait_for

SOURCE_EVENT_PROPERTIES = {
    "target": {
        "raw_selector": "body > main > button.buy",
        "element_definition_id": "src-el",
        "additional_element_definition_ids": ["src-el-2"],
    },
    "event_definition_id": "src-ev",
    "additional_event_definition_ids": [],
}
SOURCE_PROPERTIES = {
    "url": {"path": "/products/shoes", "full_url": "https://x.test/products/shoes"},
    "page_definition_id": "src-page",
}


def view(session: int, at_ms: int) -> RawRecord:
    event = {
        "device_id": 31,
        "session_id": session,
        "view_id": 1,
        "event_time": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(at_ms / 1000 - 5)),
        "event_type": "click",
        "event_properties": orjson.dumps(SOURCE_EVENT_PROPERTIES).decode(),
        "source_type": "web",
        "source_properties": orjson.dumps(SOURCE_PROPERTIES).decode(),
    }
    return RawRecord(f"31:{session}:1", at_ms, [event])


async def test_source_ids_are_kept_unless_definitions_of_their_kind_are_loaded(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=0.5)
    await create_topics(settings)
    before_definitions = int(time.time() * 1000) - 10_000
    load(
        settings,
        [
            {
                "kind": "page",
                "id": "pg-products",
                "name": "Products",
                "rule": {"url": "/products/**"},
            }
        ],
    )
    time.sleep(0.05)
    await produce(settings, [view(1, before_definitions), view(2, int(time.time() * 1000))])
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned()
        records = await wait_for(settings, settings.topic_events, lambda rs: len(live(rs)) == 2)
    published: dict[int, tuple[Any, Any]] = {}
    for record in live(records).values():
        value = codec.decode(record.value, expected=codec.EVENT)
        published[value["session_id"]] = (
            orjson.loads(value["event_properties"]),
            orjson.loads(value["source_properties"]),
        )
    # No definition active at the first record's time: exactly what the source sent.
    assert published[1] == (SOURCE_EVENT_PROPERTIES, SOURCE_PROPERTIES)
    # Page definitions loaded: the computed page wins; elements and events are kept.
    assert published[2] == (
        SOURCE_EVENT_PROPERTIES,
        {**SOURCE_PROPERTIES, "page_definition_id": "pg-products"},
    )

"""Enrichment and definition exports on the real broker."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import TopicPartition

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import WorkerProcess
from fsstream.infra import kafka_clients
from fsstream.infra.object_store import open_store
from fsstream.settings import Settings
from tests.scenario import RawRecord, live, produce, read_all, run_cli, wait_for
from tests.warehouse import DEFINITION_COLUMNS, PAGE_COLUMNS

SELECTOR = "body > div#app > main > div.card > button.add-to-cart"

DEFINITIONS_V1 = [
    {
        "kind": "element",
        "id": "el-btn",
        "name": "Add to cart",
        "rule": {"selector": "button.add-to-cart"},
        "created_by": "ana",
    },
    {
        "kind": "element",
        "id": "el-any-button",
        "name": "Any button",
        "rule": {"selector": "button"},
    },
    {
        "kind": "page",
        "id": "pg-products",
        "name": "Products",
        "rule": {"url": "/products/**"},
        "fs_link_id": "products",
        "is_user_defined": True,
    },
    {
        "kind": "event",
        "id": "ev-product-click",
        "name": "Product click",
        "rule": {"event_type": "click", "page_definition_id": "pg-products"},
    },
]
DEFINITIONS_V2 = [
    {
        "kind": "element",
        "id": "el-btn",
        "name": "Remove button",
        "rule": {"selector": "button.remove"},
        "created_by": "ana",
        "modified_by": "bo",
    },
]


def load(settings: Settings, definitions: list[dict[str, Any]]) -> None:
    result = run_cli(
        settings, "definitions", "load", "-", stdin=b"\n".join(orjson.dumps(d) for d in definitions)
    )
    assert result.returncode == 0, result.stderr.decode()


def clicks(key_view: int, count: int, at_ms: int) -> RawRecord:
    device, session = 77, 500 + key_view
    events = [
        {
            "device_id": device,
            "session_id": session,
            "view_id": 1,
            "event_time": f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(at_ms / 1000 - 60))}"
            f".{i:03d}000Z",
            "event_type": "click",
            "event_properties": orjson.dumps({"target": {"raw_selector": SELECTOR}}).decode(),
            "source_type": "web",
            "source_properties": orjson.dumps(
                {"url": {"path": "/products/shoes", "full_url": "https://x.test/products/shoes"}}
            ).decode(),
        }
        for i in range(count)
    ]
    return RawRecord(f"{device}:{session}:1", at_ms, events)


def enrichment(record: Any) -> tuple[Any, ...]:
    value = codec.decode(record.value)
    event = orjson.loads(value["event_properties"])
    source = orjson.loads(value["source_properties"])
    return (
        event["target"].get("element_definition_id"),
        tuple(event["target"].get("additional_element_definition_ids", ())),
        source.get("page_definition_id"),
        event.get("event_definition_id"),
        tuple(event.get("additional_event_definition_ids", ())),
    )


async def end_offset(settings: Settings, topic: str) -> int:
    consumer = await kafka_clients.start(kafka_clients.consumer(settings))
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, 0)])
    finally:
        await consumer.stop()
    return ends[TopicPartition(topic, 0)]


async def test_definitions_load_refuses_a_bad_file_whole(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    await create_topics(settings)
    load(settings, DEFINITIONS_V1)
    before = await end_offset(settings, settings.topic_definitions)
    bad = [
        {"kind": "element", "id": "ok", "name": "fine", "rule": {"selector": "a.b"}},
        {"kind": "element", "id": "sib", "name": "siblings", "rule": {"selector": "li + li"}},
        {"kind": "page", "id": "pg-dup", "name": "dup", "rule": {"url": "/products/**/"}},
        {"kind": "event", "id": "ev", "name": "no type", "rule": {}},
    ]
    result = run_cli(settings, "definitions", "load", "-", stdin=orjson.dumps(bad))
    assert result.returncode != 0
    message = result.stderr.decode()
    assert "nothing produced" in message
    assert "definition 2:" in message and "definition 3:" in message
    assert "definition 4:" in message and "definition 1:" not in message
    assert await end_offset(settings, settings.topic_definitions) == before


async def test_events_get_the_definitions_active_at_their_record_time_and_replays_agree(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings(reorder_grace_s=0.5)
    await create_topics(settings)
    before_definitions = int(time.time() * 1000) - 10_000
    load(settings, DEFINITIONS_V1)
    time.sleep(0.05)
    with_v1 = int(time.time() * 1000)
    await produce(settings, [clicks(1, 3, before_definitions), clicks(2, 3, with_v1)])
    time.sleep(0.05)
    load(settings, DEFINITIONS_V2)
    time.sleep(0.05)
    await produce(settings, [clicks(3, 3, int(time.time() * 1000))])

    outputs = []
    for run in ("first", "second"):
        run_settings = settings.model_copy(
            update={
                "app_id": f"{settings.app_id}-{run}",
                "topic_events": f"{settings.topic_events}-{run}",
                "web_port": free_port(),
                "data_dir": tmp_path / run,
            }
        )
        await create_topics(run_settings)
        with WorkerProcess(run_settings, "reorder", tmp_path / f"{run}.log") as worker:
            worker.wait_assigned()
            records = await wait_for(
                run_settings, run_settings.topic_events, lambda rs: len(live(rs)) == 9
            )
        outputs.append(live(records))
    first, second = outputs
    assert set(first) == set(second)
    for event_id, record in first.items():
        a, b = codec.decode(record.value), codec.decode(second[event_id].value)
        a.pop("processed_time")
        b.pop("processed_time")
        assert a == b
    by_session: dict[int, set[tuple[Any, ...]]] = {}
    for record in first.values():
        by_session.setdefault(codec.decode(record.value)["session_id"], set()).add(
            enrichment(record)
        )
    assert by_session[501] == {(None, (), None, None, ())}
    assert by_session[502] == {
        ("el-btn", ("el-any-button",), "pg-products", "ev-product-click", ())
    }
    assert by_session[503] == {("el-any-button", (), "pg-products", "ev-product-click", ())}


async def test_definition_exports_are_incremental_with_the_seed_columns(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    settings = make_settings(
        sink_flush_interval_s=1.0, org_id="o-defs", warehouse_url=f"file://{tmp_path / 'lake'}"
    )
    await create_topics(settings)
    load(settings, DEFINITIONS_V1)
    prefix = "fullstory_o-defs/configuration/"
    store = open_store(settings)

    async def exported() -> dict[str, bytes]:
        files = {}
        for info in await store.list(prefix):
            if info.key.endswith(".parquet"):
                files[info.key] = await store.get(info.key)
        return files

    with WorkerProcess(settings, "sink", tmp_path / "sink.log") as sink:
        sink.wait_assigned()
        first = {}
        for _ in range(60):
            first = await exported()
            if len(first) == 3:
                break
            time.sleep(0.5)
        load(settings, DEFINITIONS_V2)
        second = first
        for _ in range(60):
            second = await exported()
            if len(second) == 4:
                break
            time.sleep(0.5)
    await store.close()
    assert len(first) == 3, sorted(first)
    assert len(second) == 4, sorted(second)
    rows_by_kind: dict[str, list[dict[str, Any]]] = {}
    for key, data in first.items():
        kind = key.removeprefix(prefix).split("-definitions/")[0]
        assert key.removeprefix(prefix).split("/")[1].startswith("ingested_time=")
        table = pq.read_table(io.BytesIO(data))
        if kind == "page":
            assert table.schema.names == PAGE_COLUMNS
            assert table.schema.field("is_user_defined").type == pa.bool_()
        else:
            assert table.schema.names == DEFINITION_COLUMNS
        assert all(f.type == pa.string() for f in table.schema if f.name != "is_user_defined")
        rows_by_kind[kind] = table.to_pylist()
    # The first export is a full snapshot.
    assert sorted(r["id"] for r in rows_by_kind["element"]) == ["el-any-button", "el-btn"]
    assert [r["id"] for r in rows_by_kind["page"]] == ["pg-products"]
    assert rows_by_kind["page"][0]["is_user_defined"] is True
    assert [r["id"] for r in rows_by_kind["event"]] == ["ev-product-click"]
    created = rows_by_kind["element"][0]["created_time"]
    assert time.strptime(created[:19], "%Y-%m-%d %H:%M:%S") and created[19] == "."
    assert len(created) == 26
    # The next export holds only what changed.
    (new_key,) = set(second) - set(first)
    assert "/element-definitions/" in new_key
    changed = pq.read_table(io.BytesIO(second[new_key])).to_pylist()
    assert [(r["id"], r["name"], r["modified_by"]) for r in changed] == [
        ("el-btn", "Remove button", "bo")
    ]
    everything = await read_all(settings, settings.topic_definitions)
    assert len(everything) == len(DEFINITIONS_V1) + len(DEFINITIONS_V2)

"""Definition exports to a local-directory warehouse: a full snapshot first, then only
what changed, under names and partitions that exporting again reproduces."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from fsstream.contract import codec
from fsstream.infra.object_store import LocalStore
from fsstream.settings import Settings
from fsstream.sink.definitions_export import DefinitionsExporter
from fsstream.sink.parquet_format import read_definitions
from tests.unit.core.enrich.test_catalog import definition, element, page

ORG = "o-defs"
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CONFIGURATION = f"fullstory_{ORG}/configuration/"


def record(
    partition: int, offset: int, key: bytes, value: dict[str, Any] | bytes | None, at_ms: int
) -> ConsumerRecord[bytes, bytes]:
    data = codec.encode(codec.DEFINITION, value) if isinstance(value, dict) else value
    return ConsumerRecord("definitions", partition, offset, at_ms, 0, key, data, None, 0, 0, [])


def exporter(store: LocalStore) -> DefinitionsExporter:
    return DefinitionsExporter(Settings(org_id=ORG), store)


async def files(store: LocalStore) -> dict[str, list[dict[str, Any]]]:
    """Every definitions file below the org's configuration, by key, as rows."""
    out = {}
    for info in await store.list(CONFIGURATION):
        if info.key.endswith(".parquet"):
            kind = info.key.removeprefix(CONFIGURATION).split("-definitions/")[0]
            data = await store.get(info.key)
            assert data is not None
            out[info.key] = read_definitions(kind, data)
    return out


def key_of(kind: str, second: str, name: str) -> str:
    return (
        f"{CONFIGURATION}{kind}-definitions/ingested_time=2024-01-01 00:00:{second}/{name}.parquet"
    )


BACKLOG = [
    record(0, 0, b"element:e1", element("e1", "button", created=T0), T0 + 1_000),
    record(1, 0, b"page:p1", page("p1", "/checkout", created=T0), T0 + 2_000),
    record(0, 1, b"element:e1", element("e1", "a.btn", created=T0, name="Renamed"), T0 + 3_000),
    record(1, 1, b"event:v1", definition("event", "v1", {"event_type": "click"}), T0 + 4_000),
    record(0, 2, b"element:e2", element("e2", "li:nth-child(2)"), T0 + 5_000),
]


async def test_the_first_export_is_a_snapshot_then_only_changes_are_written(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "warehouse")
    first = exporter(store)
    for r in BACKLOG:
        first.on_record(r)
    assert await first.export() == 4
    name = "definitions+0.1.2+1.0.1"  # the offsets of the latest record of each key
    snapshot = await files(store)
    assert set(snapshot) == {
        key_of(kind, "05", f"{kind}-{name}") for kind in ("element", "event", "page")
    }
    elements = snapshot[key_of("element", "05", f"element-{name}")]
    # The latest version of each definition, valid or not: the warehouse mirrors the topic.
    assert [(r["id"], r["name"], r["state"]) for r in elements] == [
        ("e1", "Renamed", "active"),
        ("e2", "element e2", "active"),
    ]
    assert elements[0]["created_time"] == "2024-01-01 00:00:00.000000"
    pages = snapshot[key_of("page", "05", f"page-{name}")]
    assert [(r["id"], r["fs_link_id"], r["is_user_defined"]) for r in pages] == [("p1", None, None)]
    position = await store.get(f"{CONFIGURATION}_exported.json")
    assert position is not None
    assert orjson.loads(position) == {"next_offsets": {"0": 3, "1": 2}}

    assert await first.export() == 0  # nothing new: nothing written
    assert await files(store) == snapshot

    first.on_record(record(1, 2, b"page:p1", page("p1", "/cart", name="Cart"), T0 + 9_000))
    assert await first.export() == 1
    changed = await files(store)
    [new_key] = set(changed) - set(snapshot)
    assert new_key == key_of("page", "09", "page-definitions+1.2.2")
    assert [(r["id"], r["name"]) for r in changed[new_key]] == [("p1", "Cart")]


async def test_a_deleted_definition_is_exported_as_deleted_at_its_deletion_time(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "warehouse")
    exp = exporter(store)
    exp.on_record(BACKLOG[1])
    assert await exp.export() == 1
    exp.on_record(record(1, 1, b"page:p1", None, T0 + 7_250))
    exp.on_record(record(1, 2, b"page:never-seen", None, T0 + 7_500))
    assert await exp.export() == 1
    rows = (await files(store))[key_of("page", "07", "page-definitions+1.1.2")]
    assert rows == [
        {
            "id": "p1",
            "name": "page p1",
            "description": None,
            "state": "deleted",
            "created_time": "2024-01-01 00:00:00.000000",
            "created_by": "someone@example.com",
            "modified_time": "2024-01-01 00:00:07.250000",
            "modified_by": None,
            "fs_link_id": None,
            "is_user_defined": None,
        }
    ]


async def test_a_worker_taking_over_continues_where_the_last_export_stopped(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path / "warehouse")
    first = exporter(store)
    for r in BACKLOG[:3]:
        first.on_record(r)
    assert await first.export() == 2
    exported = await files(store)

    # The next owner reads the whole topic again, as every worker does at start.
    second = exporter(store)
    for r in BACKLOG:
        second.on_record(r)
    assert await second.export() == 2
    added = {k: v for k, v in (await files(store)).items() if k not in exported}
    assert {k: [r["id"] for r in rows] for k, rows in added.items()} == {
        key_of("element", "05", "element-definitions+0.2.2+1.1.1"): ["e2"],
        key_of("event", "05", "event-definitions+0.2.2+1.1.1"): ["v1"],
    }


async def test_exporting_the_same_changes_again_writes_the_same_files(tmp_path: Path) -> None:
    exported = []
    for run in ("a", "b"):
        store = LocalStore(tmp_path / run)
        exp = exporter(store)
        for r in BACKLOG:
            exp.on_record(r)
        await exp.export()
        exported.append(await files(store))
    assert exported[0] and exported[0] == exported[1]


async def test_records_that_name_no_definition_are_not_exported(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "warehouse")
    exp = exporter(store)
    exp.on_record(record(0, 0, b"widget:w1", element("w1", "a"), T0))
    exp.on_record(record(0, 1, b"element:", element("e1", "a"), T0))
    exp.on_record(record(0, 2, b"element:\xff", element("e1", "a"), T0))
    exp.on_record(record(0, 3, b"element:e9", b"\x00not avro", T0))
    assert await exp.export() == 0
    assert await files(store) == {}

"""Hostile definitions and raw selectors on the real broker: refused cleanly, and the
reorder worker keeps processing."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from fsstream.contract import codec
from fsstream.contract.topics import create_topics
from fsstream.devtools.processes import WorkerProcess
from fsstream.infra import kafka_clients
from fsstream.settings import Settings
from tests.integration.test_enrichment import end_offset, load, run_cli
from tests.scenario import RawRecord, live, produce, wait_for

REDOS_SELECTOR = "body > div" + '[data-x=""]' * 40 + "!"
DEEP_SELECTOR = " > ".join(["body", *["div"] * 8_000, "a.buy"])
TARGET = "body > main > div.card > a.buy"
ELEMENTS = [
    {"kind": "element", "id": "el-buy", "name": "Buy", "rule": {"selector": "body div a"}},
    {"kind": "element", "id": "el-a", "name": "Any link", "rule": {"selector": "a.buy"}},
    {"kind": "element", "id": "el-main", "name": "In main", "rule": {"selector": "main a"}},
]


def nested(depth: int) -> str:
    return ":is(" * depth + "a" + ")" * depth


def element(definition_id: str, selector: str) -> dict[str, Any]:
    return {
        "kind": "element",
        "id": definition_id,
        "name": definition_id,
        "rule": {"selector": selector},
    }


def clicks(session: int, selectors: list[str], at_ms: int) -> RawRecord:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at_ms / 1000 - 30))
    events = [
        {
            "device_id": 91,
            "session_id": session,
            "view_id": 1,
            "event_time": f"{stamp}.{i:03d}000Z",
            "event_type": "click",
            "event_properties": orjson.dumps({"target": {"raw_selector": raw}}).decode(),
            "source_type": "web",
            "source_properties": orjson.dumps({"url": {"path": "/p"}}).decode(),
        }
        for i, raw in enumerate(selectors)
    ]
    return RawRecord(f"91:{session}:1", at_ms, events)


def element_ids(record: Any) -> tuple[str | None, tuple[str, ...]]:
    target = orjson.loads(codec.decode(record.value)["event_properties"])["target"]
    return target.get("element_definition_id"), tuple(
        target.get("additional_element_definition_ids", ())
    )


async def write_directly(settings: Settings, definitions: list[dict[str, Any]]) -> None:
    """Definition records produced as any client could, without ``definitions load``."""
    now_ms = int(time.time() * 1000)
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        for entry in definitions:
            record = {
                "kind": entry["kind"],
                "id": entry["id"],
                "name": entry["name"],
                "description": None,
                "state": "active",
                "rule": orjson.dumps(entry["rule"]).decode(),
                "created_time": now_ms,
                "created_by": None,
                "modified_time": now_ms,
                "modified_by": None,
                "fs_link_id": None,
                "is_user_defined": None,
            }
            await producer.send_and_wait(
                settings.topic_definitions,
                codec.encode(codec.DEFINITION, record),
                key=f"{entry['kind']}:{entry['id']}".encode(),
            )
    finally:
        await producer.stop()


def all_assigned(worker: WorkerProcess, partitions: int) -> dict[str, Any]:
    """The worker's health once it owns every raw partition."""
    worker.wait_assigned(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = worker.health()
        if health and len(health.get("assigned", ())) == partitions:
            return health
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not take all {partitions} raw partitions")


@pytest.mark.parametrize("depth", [241, 1000])
async def test_a_deeply_nested_selector_is_refused_by_definitions_load(
    make_settings: Callable[..., Settings], depth: int
) -> None:
    settings = make_settings()
    await create_topics(settings)
    load(settings, ELEMENTS)
    before = await end_offset(settings, settings.topic_definitions)
    result = run_cli(
        settings,
        "definitions",
        "load",
        "-",
        stdin=orjson.dumps([element("el-ok", "a"), element("el-deep", nested(depth))]),
    )
    message = result.stderr.decode()
    assert result.returncode != 0, message
    assert "Traceback" not in message and "RecursionError" not in message
    assert "nothing produced" in message and "definition 2: element definition 'el-deep'" in message
    reason = "nested more than 32 deep" if len(nested(depth)) <= 4096 else "characters is longer"
    assert reason in message
    assert len(message) < 1_000
    assert await end_offset(settings, settings.topic_definitions) == before


async def test_definitions_load_without_the_topic_says_so(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    result = run_cli(settings, "definitions", "load", "-", stdin=orjson.dumps(ELEMENTS))
    message = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in message
    assert f"the definitions topic {settings.topic_definitions} does not exist" in message


async def test_nested_selectors_written_to_the_topic_are_refused_and_the_worker_goes_on(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=0.5)
    await create_topics(settings)
    await write_directly(
        settings,
        [
            element("el-deep-241", nested(241)),
            element("el-deep-1000", nested(1000)),
            element("el-compounds", " ".join(["div"] * 200)),
            *ELEMENTS,
        ],
    )
    with WorkerProcess(settings, "reorder", tmp_path / "reorder.log") as worker:
        worker.wait_assigned(timeout=60)
        await produce(settings, [clicks(1, [TARGET], int(time.time() * 1000))])
        records = await wait_for(
            settings, settings.topic_events, lambda rs: len(live(rs)) == 1, timeout=60
        )
        assert worker.alive()
        refused = worker.metric("fsstream_definitions_refused_total")
    (row,) = live(records).values()
    assert element_ids(row) == ("el-a", ("el-buy", "el-main"))
    assert refused == 3
    log = (tmp_path / "reorder.log").read_text()
    assert "element:el-deep-241" in log and "nested more than 32 deep" in log
    assert "more than 128 compound selectors" in log
    assert "RecursionError" not in log


async def test_hostile_raw_selectors_are_processed_promptly_and_the_worker_stays(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(reorder_grace_s=0.5)
    await create_topics(settings)
    load(settings, ELEMENTS)
    log_path = tmp_path / "reorder.log"
    with WorkerProcess(settings, "reorder", log_path) as worker:
        health = all_assigned(worker, settings.raw_partitions)
        assignments = log_path.read_text().count("reorder owns raw partitions")
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        await produce(
            settings,
            [
                clicks(1, [REDOS_SELECTOR, TARGET], now_ms),
                clicks(2, [DEEP_SELECTOR, TARGET], now_ms),
                clicks(3, [DEEP_SELECTOR.replace("a.buy", f"a.buy{i}") for i in range(5)], now_ms),
            ],
        )
        records = await wait_for(
            settings, settings.topic_events, lambda rs: len(live(rs)) == 9, timeout=30
        )
        elapsed = time.monotonic() - started
        assert worker.alive()
        after = worker.health()
        too_long = worker.metric("fsstream_enrich_paths_too_long_total")
    rows = live(records)
    assert len(rows) == 9, f"{len(rows)} of 9 rows after {elapsed:.0f}s"
    assert elapsed < 30
    by_selector = {
        orjson.loads(codec.decode(r.value)["event_properties"])["target"]["raw_selector"]: r
        for r in rows.values()
    }
    assert element_ids(by_selector[REDOS_SELECTOR]) == (None, ())
    assert element_ids(by_selector[DEEP_SELECTOR]) == (None, ())
    assert element_ids(by_selector[TARGET]) == ("el-a", ("el-buy", "el-main"))
    assert too_long == 6
    assert after is not None and after["assigned"] == health["assigned"]
    assert log_path.read_text().count("reorder owns raw partitions") == assignments

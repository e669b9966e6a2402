"""``fsstream definitions load``: definitions from a file, checked, then produced.

Every definition is checked on its own and against the definitions already on the
topic (one active page per URL pattern) before anything is sent, so a file is
loaded whole or not at all. A missing topic is reported, not created.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import orjson

from fsstream.commands.tail import read_topic
from fsstream.contract import codec
from fsstream.core.enrich import Catalog, DefinitionError
from fsstream.infra import kafka_clients
from fsstream.settings import Settings

OPTIONAL_FIELDS = ("description", "created_by", "modified_by", "fs_link_id", "is_user_defined")


class DefinitionFileError(ValueError):
    """Definitions in a file that cannot be loaded, each named by its position."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def parse_file(data: bytes) -> list[Any]:
    """The entries of a JSON array, a single JSON object, or NDJSON."""
    text = data.strip()
    if not text:
        return []
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    entries.append(orjson.loads(line))
                except orjson.JSONDecodeError as exc:
                    raise DefinitionFileError([f"line {number}: invalid JSON ({exc})"]) from None
        return entries
    return parsed if isinstance(parsed, list) else [parsed]


def to_record(entry: Any, now_ms: int) -> tuple[str, dict[str, Any] | None]:
    """(topic key, Definition record or None to delete) of one file entry."""
    if not isinstance(entry, dict):
        raise DefinitionError(f"expected an object, got {type(entry).__name__}")
    kind, definition_id = entry.get("kind"), entry.get("id")
    if not isinstance(kind, str) or not isinstance(definition_id, str) or not definition_id:
        raise DefinitionError("needs a string 'kind' and a non-empty string 'id'")
    key = f"{kind}:{definition_id}"
    if entry.get("deleted") is True:
        return key, None
    rule = entry.get("rule")
    if not isinstance(rule, str):
        try:
            rule = orjson.dumps(rule).decode()
        except orjson.JSONEncodeError as exc:
            raise DefinitionError(f"rule cannot be written as JSON: {exc}") from None
    record: dict[str, Any] = {
        "kind": kind,
        "id": definition_id,
        "name": entry.get("name"),
        "state": entry.get("state", "active"),
        "rule": rule,
        "created_time": entry.get("created_time", now_ms),
        "modified_time": entry.get("modified_time", now_ms),
    }
    for name in OPTIONAL_FIELDS:
        record[name] = entry.get(name)
    return key, record


async def current_catalog(settings: Settings) -> Catalog:
    """The definitions on the topic now, as the workers see them.

    Raises DefinitionFileError if the topic does not exist.
    """
    catalog = Catalog()
    topic = settings.topic_definitions
    try:
        async for message in read_topic(settings, topic):
            try:
                value = (
                    None if message.value is None else codec.decode(message.value, codec.DEFINITION)
                )
                key = message.key.decode() if message.key is not None else ""
                catalog.apply_record(key, value, message.timestamp)
            except Exception:
                continue  # the workers refuse it too
    except LookupError as exc:
        if type(exc) is not LookupError:  # a KeyError or IndexError is a bug, not news
            raise
        message = f"the definitions topic {topic} does not exist; create it first"
        raise DefinitionFileError([f"{message} (fsstream topics create)"]) from None
    return catalog


async def load(settings: Settings, entries: Iterable[Any]) -> int:
    """Check every entry, then produce them all; return how many were produced."""
    now_ms = time.time_ns() // 1_000_000
    catalog = await current_catalog(settings)
    records: list[tuple[str, dict[str, Any] | None]] = []
    problems: list[str] = []
    for position, entry in enumerate(entries, start=1):
        try:
            key, record = to_record(entry, now_ms)
            catalog.apply_record(key, record, now_ms)
            records.append((key, record))
        except DefinitionError as exc:
            problems.append(f"definition {position}: {exc}")
    if problems:
        raise DefinitionFileError(problems)
    producer = kafka_clients.producer(settings)
    await producer.start()
    try:
        futures = [
            await producer.send(
                settings.topic_definitions,
                None if record is None else codec.encode(codec.DEFINITION, record),
                key=key.encode(),
            )
            for key, record in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records)

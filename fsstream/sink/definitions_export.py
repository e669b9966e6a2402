"""Definition lookup tables in the warehouse: what changed since the last export.

At each sync, the definitions changed since the previous export are written, one file
per kind, to ``configuration/<kind>-definitions/ingested_time=<time>/``. The first export
of a warehouse is a full snapshot. The position reached is kept beside the files, so a
worker taking over continues where the last one stopped, and file names come from the
topic offsets they cover, so exporting the same changes again overwrites the same files.
The partition time is the newest change's timestamp (to the second), not the wall clock,
for the same reason.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord

from fsstream.contract import codec
from fsstream.core.enrich import KINDS
from fsstream.core.layout import definitions_file_key, org_prefix
from fsstream.core.timefmt import format_definition_time
from fsstream.infra.object_store import ObjectStore
from fsstream.settings import Settings
from fsstream.sink.parquet_format import serialize_definitions

log = logging.getLogger(__name__)

DELETED = "deleted"


@dataclass(slots=True)
class Change:
    """The latest record of one definition key seen on the topic."""

    kind: str
    record: dict[str, Any] | None
    timestamp_ms: int
    partition: int
    offset: int


def export_row(
    kind: str, record: dict[str, Any], state: str | None = None, modified_ms: int | None = None
) -> dict[str, Any]:
    """A definitions-table row in the warehouse's column names and time format."""
    row = {
        "id": record["id"],
        "name": record["name"],
        "description": record.get("description"),
        "state": state or record["state"],
        "created_time": format_definition_time(record["created_time"]),
        "created_by": record.get("created_by"),
        "modified_time": format_definition_time(
            record["modified_time"] if modified_ms is None else modified_ms
        ),
        "modified_by": record.get("modified_by"),
    }
    if kind == "page":
        row["fs_link_id"] = record.get("fs_link_id")
        row["is_user_defined"] = record.get("is_user_defined")
    return row


class DefinitionsExporter:
    """Collects definitions-topic records and writes the changed ones at each export."""

    def __init__(self, settings: Settings, store: ObjectStore) -> None:
        self.settings = settings
        self.store = store
        self.state_key = f"{org_prefix(settings.org_id)}configuration/_exported.json"
        self._exported: dict[int, int] | None = None
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        self._pending: dict[tuple[str, str], Change] = {}
        self._lock = asyncio.Lock()

    def on_record(self, record: ConsumerRecord[bytes, bytes]) -> None:
        """Remember a definitions-topic record (valid or not) for the next export."""
        try:
            kind, _, definition_id = (record.key or b"").decode().partition(":")
            value = None if record.value is None else codec.decode(record.value, codec.DEFINITION)
        except (UnicodeDecodeError, codec.CodecError):
            return
        if kind not in KINDS or not definition_id:
            return
        self._pending[(kind, definition_id)] = Change(
            kind, value, record.timestamp, record.partition, record.offset
        )

    async def _positions(self) -> dict[int, int]:
        if self._exported is None:
            data = await self.store.get(self.state_key)
            self._exported = (
                {int(p): o for p, o in orjson.loads(data)["next_offsets"].items()} if data else {}
            )
        return self._exported

    async def export(self) -> int:
        """Write the changes not exported yet; return how many definitions were written."""
        async with self._lock:
            exported = await self._positions()
            pending, self._pending = self._pending, {}
            fresh = {
                key: change
                for key, change in pending.items()
                if change.offset >= exported.get(change.partition, 0)
            }
            for key, change in sorted(pending.items(), key=lambda kv: kv[1].offset):
                if change.record is not None:
                    self._latest[key] = change.record
            if not fresh:
                return 0
            written = 0
            ranges = sorted(
                (
                    p,
                    min(c.offset for c in fresh.values() if c.partition == p),
                    max(c.offset for c in fresh.values() if c.partition == p),
                )
                for p in {c.partition for c in fresh.values()}
            )
            name = "definitions+" + "+".join(f"{p}.{first}.{last}" for p, first, last in ranges)
            synced_ms = max(c.timestamp_ms for c in fresh.values())
            for kind in KINDS:
                rows = [
                    row
                    for key, change in sorted(fresh.items())
                    if change.kind == kind and (row := self._row(key, change)) is not None
                ]
                if not rows:
                    continue
                data = await asyncio.to_thread(serialize_definitions, kind, rows)
                await self.store.put(
                    definitions_file_key(self.settings.org_id, kind, synced_ms, f"{kind}-{name}"),
                    data,
                )
                written += len(rows)
            for partition, _, last in ranges:
                exported[partition] = max(exported.get(partition, 0), last + 1)
            await self.store.put(
                self.state_key,
                orjson.dumps({"next_offsets": {str(p): o for p, o in sorted(exported.items())}}),
            )
            log.info("exported %d definitions (%s)", written, name)
            return written

    def _row(self, key: tuple[str, str], change: Change) -> dict[str, Any] | None:
        if change.record is not None:
            return export_row(change.kind, change.record)
        last = self._latest.get(key)
        if last is None:
            return None
        return export_row(change.kind, last, state=DELETED, modified_ms=change.timestamp_ms)

"""The sink's record of what it wrote: files per (events partition, hour), and seals.

It lives in the object store beside the files it describes, one small JSON object per
partition and hour under ``fullstory_<org>/_fsstream/ledgers/<topic>+<partition>/``, so
the worker that takes a partition over, or a restarted one, finds it wherever it runs.
A file is uploaded before it is recorded, and recorded before its rows' offsets are
committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import orjson

from fsstream.core.layout import org_prefix
from fsstream.infra.object_store import ObjectStore


@dataclass(slots=True)
class FileRecord:
    """A file written for one hour of one events partition, and the offsets it covers."""

    name: str
    first: int
    last: int
    rows: int


@dataclass(slots=True)
class HourLedger:
    """What one events partition has written into one hour, and whether it sealed it."""

    files: list[FileRecord] = field(default_factory=list)
    sealed: bool = False

    def covers(self, offset: int) -> bool:
        return any(f.first <= offset <= f.last for f in self.files)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "files": [[f.name, f.first, f.last, f.rows] for f in self.files],
                "sealed": self.sealed,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> HourLedger:
        raw = orjson.loads(data)
        return cls([FileRecord(*f) for f in raw["files"]], raw["sealed"])


class Ledgers(Protocol):
    """Where the sink keeps its HourLedgers."""

    async def load(self, partition: int) -> dict[int, HourLedger]: ...

    async def save(self, partition: int, hour: int, ledger: HourLedger) -> None: ...

    async def forget(self, partition: int, hour: int) -> None: ...


class StoreLedgers:
    """Ledgers as objects in the warehouse's object store."""

    def __init__(self, store: ObjectStore, org_id: str, topic: str) -> None:
        self.store = store
        self.prefix = f"{org_prefix(org_id)}_fsstream/ledgers/{topic}+"

    def _key(self, partition: int, hour: int) -> str:
        return f"{self.prefix}{partition}/{hour}.json"

    async def load(self, partition: int) -> dict[int, HourLedger]:
        ledgers: dict[int, HourLedger] = {}
        for info in await self.store.list(f"{self.prefix}{partition}/"):
            data = await self.store.get(info.key)
            if data is not None:
                hour = int(info.key.rsplit("/", 1)[1].removesuffix(".json"))
                ledgers[hour] = HourLedger.decode(data)
        return ledgers

    async def save(self, partition: int, hour: int, ledger: HourLedger) -> None:
        await self.store.put(self._key(partition, hour), ledger.encode())

    async def forget(self, partition: int, hour: int) -> None:
        await self.store.delete(self._key(partition, hour))


class MemoryLedgers:
    """Ledgers in memory, for one-shot jobs such as a replay."""

    def __init__(self) -> None:
        self._data: dict[int, dict[int, bytes]] = {}

    async def load(self, partition: int) -> dict[int, HourLedger]:
        return {h: HourLedger.decode(d) for h, d in self._data.get(partition, {}).items()}

    async def save(self, partition: int, hour: int, ledger: HourLedger) -> None:
        self._data.setdefault(partition, {})[hour] = ledger.encode()

    async def forget(self, partition: int, hour: int) -> None:
        self._data.get(partition, {}).pop(hour, None)

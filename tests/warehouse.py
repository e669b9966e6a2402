"""Reading a warehouse back in tests: files, rows, manifests."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from fsstream.core.layout import events_prefix
from fsstream.infra.object_store import open_store
from fsstream.settings import Settings

# The Data Direct events table (name, type, nullable); the documented deviation:
# event_type is nullable, because nulled-out rows exist.
REFERENCE_EVENTS = [
    ("event_id", pa.string(), False),
    ("event_time", pa.string(), True),
    ("processed_time", pa.string(), False),
    ("updated_time", pa.int64(), True),
    ("device_id", pa.int64(), False),
    ("session_id", pa.int64(), True),
    ("view_id", pa.int64(), True),
    ("event_type", pa.string(), True),
    ("event_properties", pa.string(), False),
    ("source_type", pa.string(), False),
    ("source_properties", pa.string(), False),
]
DEFINITION_COLUMNS = [
    "id",
    "name",
    "description",
    "state",
    "created_time",
    "created_by",
    "modified_time",
    "modified_by",
]
PAGE_COLUMNS = [
    "id",
    "fs_link_id",
    "name",
    "description",
    "is_user_defined",
    "state",
    "created_time",
    "created_by",
    "modified_time",
    "modified_by",
]


def create_bucket(endpoint: str, bucket: str) -> None:
    """A bucket on the session's S3 server (moto takes any credentials)."""
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=bucket)


def warehouse_settings(
    kind: str,
    make_settings: Callable[..., Settings],
    s3: str | None,
    bucket: str,
    tmp_path: Path,
    **extra: Any,
) -> Settings:
    """Settings for a pipeline test whose warehouse is a bucket on the S3 server
    (``kind`` "s3") or a local directory, with short intervals and no lateness."""
    common: dict[str, Any] = dict(
        reorder_grace_s=1.0,
        sink_flush_interval_s=1.0,
        allowed_lateness_s=0,
        raw_retention_s=10 * 365 * 86_400.0,
        org_id="o-test",
        **extra,
    )
    if kind == "s3":
        create_bucket(s3, bucket)
        return make_settings(
            warehouse_url=f"s3://{bucket}/lake",
            s3_endpoint_url=s3,
            s3_access_key_id="test",
            s3_secret_access_key="test",
            **common,
        )
    return make_settings(warehouse_url=f"file://{tmp_path / 'lake'}", **common)


FILE_PATH = re.compile(
    r"^fullstory_(?P<org>[^/]+)/events/ingested_time=(?P<hour>\d{4}-\d\d-\d\d \d\d:00:00)/"
    r"(?P<topic>[^/+]+)\+(?P<partition>\d+)\+(?P<offset>\d{20})\.parquet$"
)


@dataclass
class Warehouse:
    files: dict[str, bytes]
    manifests: dict[str, dict[str, Any]]

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for key, data in sorted(self.files.items()):
            hour = FILE_PATH.match(key)
            for row in pq.read_table(io.BytesIO(data)).to_pylist():
                out.append({**row, "_file": key, "_hour": hour["hour"] if hour else None})
        return out

    def live(self) -> dict[str, dict[str, Any]]:
        live: dict[str, dict[str, Any]] = {}
        for row in self.rows():
            if row["event_type"] is not None:
                assert row["event_id"] not in live, f"duplicate live row {row['event_id']}"
                live[row["event_id"]] = row
        return live

    def nulled(self) -> set[str]:
        return {r["event_id"] for r in self.rows() if r["event_type"] is None}

    def write_to(self, root: Path) -> None:
        for key, data in self.files.items():
            path = root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


async def read_warehouse(settings: Settings) -> Warehouse:
    store = open_store(settings)
    try:
        files: dict[str, bytes] = {}
        manifests: dict[str, dict[str, Any]] = {}
        for info in await store.list(events_prefix(settings.org_id)):
            data = await store.get(info.key)
            assert data is not None
            if info.key.endswith(".parquet"):
                files[info.key] = data
            elif info.key.endswith("/_manifest.json"):
                manifests[info.key] = orjson.loads(data)
        return Warehouse(files, manifests)
    finally:
        await store.close()


def holds_live(expected: set[str]) -> Callable[[Warehouse], bool]:
    """Wait condition: the warehouse's live rows are exactly ``expected``, no duplicate."""

    def done(warehouse: Warehouse) -> bool:
        try:
            return set(warehouse.live()) == expected
        except AssertionError:
            return False

    return done


async def wait_for_warehouse(settings: Settings, done: Any, timeout: float = 180.0) -> Warehouse:
    deadline = time.monotonic() + timeout
    while True:
        warehouse = await read_warehouse(settings)
        if done(warehouse) or time.monotonic() > deadline:
            return warehouse
        await asyncio.sleep(1.0)

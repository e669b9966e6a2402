"""The object store contract on a local directory and on the moto S3 server, and S3 faults.

Faults come from a loopback proxy between the store and moto that spoils chosen
requests (an S3 error status, a connection dropped before or after moto acted on it, an
answer cut short) or is not listening yet (a server that is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from pydantic import SecretStr

from fsstream.devtools.localkafka import free_port
from fsstream.infra.object_store import (
    Backoff,
    LocalStore,
    ObjectInfo,
    ObjectStore,
    S3Store,
    StoreError,
    is_retryable,
    open_store,
    org_prefix,
)
from fsstream.settings import Settings
from tests.faulty_s3 import Fault, FaultyProxy

MIB = 1024 * 1024
ACCESS_KEY = "AKIDFSSTREAMTEST"
SECRET_KEY = "fsstream-secret-never-shown"
PARTITION_KEY = "fullstory_o1/events/ingested_time=2024-01-01 01:00:00/fs.events+3+0007.parquet"


# -- S3 server helpers ----------------------------------------------------------------


def s3_admin(endpoint: str) -> Any:
    """A plain boto3 client straight to moto, for setting up and checking behind the store."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    )


@pytest.fixture
def bucket(s3_endpoint: str, unique: str) -> str:
    name = f"wh-{unique}"
    s3_admin(s3_endpoint).create_bucket(Bucket=name)
    return name


@dataclass
class RecordedRetries:
    """What the store reported and how long it would have slept."""

    calls: list[tuple[str, int, BaseException]] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    def on_retry(self, operation: str, attempt: int, error: BaseException) -> None:
        self.calls.append((operation, attempt, error))

    async def sleep(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def retries() -> RecordedRetries:
    return RecordedRetries()


def make_s3_store(endpoint: str, bucket: str, retries: RecordedRetries, **options: Any) -> S3Store:
    defaults: dict[str, Any] = {
        "multipart_threshold": MIB,
        "part_size": 5 * MIB,
        "on_retry": retries.on_retry,
        "sleep": retries.sleep,
    }
    return S3Store(
        bucket,
        "warehouse/prefix",
        endpoint_url=endpoint,
        access_key_id=SecretStr(ACCESS_KEY),
        secret_access_key=SecretStr(SECRET_KEY),
        **(defaults | options),
    )


@pytest.fixture(params=["local", "s3"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, retries: RecordedRetries
) -> AsyncIterator[ObjectStore]:
    """The same contract on both stores; S3 with a small multipart threshold."""
    opened: ObjectStore
    if request.param == "local":
        opened = LocalStore(tmp_path / "warehouse")
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        opened = make_s3_store(endpoint, request.getfixturevalue("bucket"), retries)
    try:
        yield opened
    finally:
        await opened.close()


# -- the contract, on both stores -------------------------------------------------------


async def test_put_get_overwrite_and_missing(store: ObjectStore) -> None:
    assert await store.get("a/b.bin") is None
    await store.put("a/b.bin", b"first")
    assert await store.get("a/b.bin") == b"first"
    await store.put("a/b.bin", b"second, longer")
    assert await store.get("a/b.bin") == b"second, longer"
    await store.put("empty", b"")
    assert await store.get("empty") == b""


async def test_keys_with_spaces_and_equals_round_trip(store: ObjectStore) -> None:
    keys = [
        PARTITION_KEY,
        "fullstory_o1/configuration/page-definitions/ingested_time=2024-01-01 01:02:03/p q.parquet",
        "odd/a+b%20c=d&e.json",
    ]
    for number, key in enumerate(keys):
        await store.put(key, f"object {number}".encode())
    assert [info.key for info in await store.list("")] == sorted(keys)
    for number, key in enumerate(keys):
        assert await store.get(key) == f"object {number}".encode()
    listed = await store.list("fullstory_o1/events/ingested_time=2024-01-01 01:00:00/")
    assert listed == [ObjectInfo(PARTITION_KEY, len(b"object 0"))]


async def test_list_is_sorted_and_filters_by_prefix(store: ObjectStore) -> None:
    keys = ["h/2/b", "h/10/a", "h/1/z", "h/1/a", "h1", "hx/a", "other/k"]
    for key in keys:
        await store.put(key, key.encode() * 2)
    everything = await store.list("")
    assert [info.key for info in everything] == sorted(keys)
    assert all(info.size == 2 * len(info.key) for info in everything)
    assert [info.key for info in await store.list("h/")] == ["h/1/a", "h/1/z", "h/10/a", "h/2/b"]
    assert [info.key for info in await store.list("h/1")] == ["h/1/a", "h/1/z", "h/10/a"]
    assert [info.key for info in await store.list("h")] == sorted(keys[:6])
    assert [info.key for info in await store.list("h/1/a")] == ["h/1/a"]
    assert await store.list("nothing/here/") == []


async def test_delete(store: ObjectStore) -> None:
    await store.put("d/one", b"1")
    await store.put("d/two", b"2")
    await store.delete("d/one")
    await store.delete("d/one")
    await store.delete("d/never-existed")
    assert await store.get("d/one") is None
    assert [info.key for info in await store.list("d/")] == ["d/two"]


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a/", "a/.x.partial"])
async def test_invalid_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="key"):
        await store.put(key, b"x")


async def test_large_object_round_trips(store: ObjectStore) -> None:
    data = os.urandom(11 * MIB + 123)
    await store.put("big/object.bin", data)
    assert await store.get("big/object.bin") == data
    assert await store.list("big/") == [ObjectInfo("big/object.bin", len(data))]


# -- S3 specifics -------------------------------------------------------------------------


async def test_s3_multipart_upload_above_threshold(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    store = make_s3_store(s3_endpoint, bucket, retries)
    data = os.urandom(11 * MIB)
    small = os.urandom(MIB - 1)
    try:
        await store.put("big.bin", data)
        await store.put("small.bin", small)
    finally:
        await store.close()
    admin = s3_admin(s3_endpoint)
    head = admin.head_object(Bucket=bucket, Key="warehouse/prefix/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 5 + 5 + 1 MiB
    assert "-" not in admin.head_object(Bucket=bucket, Key="warehouse/prefix/small.bin")["ETag"]
    assert admin.get_object(Bucket=bucket, Key="warehouse/prefix/big.bin")["Body"].read() == data
    assert "Uploads" not in admin.list_multipart_uploads(Bucket=bucket)


async def test_s3_lists_page_by_page_and_only_below_its_prefix(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    s3_admin(s3_endpoint).put_object(Bucket=bucket, Key="warehouse/prefixed-sibling", Body=b"x")
    s3_admin(s3_endpoint).put_object(Bucket=bucket, Key="elsewhere/k", Body=b"x")
    store = make_s3_store(s3_endpoint, bucket, retries, list_page_size=2)
    keys = [f"p/{n:02d} x=y" for n in range(7)]
    try:
        for key in reversed(keys):
            await store.put(key, b"v")
        assert [info.key for info in await store.list("")] == keys
        assert [info.key for info in await store.list("p/0")] == keys
    finally:
        await store.close()


async def test_s3_missing_bucket_is_a_store_error_without_secrets(
    s3_endpoint: str, unique: str, retries: RecordedRetries
) -> None:
    store = make_s3_store(s3_endpoint, f"missing-{unique}", retries)
    try:
        with pytest.raises(StoreError) as raised:
            await store.put("k", b"v")
        with pytest.raises(StoreError, match="NoSuchBucket"):
            await store.list("")
        with pytest.raises(StoreError, match="NoSuchBucket"):
            await store.get("k")
    finally:
        await store.close()
    message = str(raised.value)
    assert "NoSuchBucket" in message and f"s3://missing-{unique}/warehouse/prefix/k" in message
    for text in (message, repr(store), repr(raised.value)):
        assert SECRET_KEY not in text and ACCESS_KEY not in text
    assert retries.calls == []


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {}}
    response["ResponseMetadata"]["HTTPStatusCode"] = status
    return botocore.exceptions.ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        (client_error("SlowDown", 503), True),
        (client_error("InternalError", 500), True),
        (client_error("Throttling", 400), True),
        (client_error("RequestTimeout", 400), True),
        (client_error("TooManyRequests", 429), True),
        (client_error("502", 502), True),
        (client_error("AccessDenied", 403), False),
        (client_error("NoSuchBucket", 404), False),
        (client_error("InvalidAccessKeyId", 403), False),
        (client_error("NotImplemented", 501), False),
        (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), True),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), True),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), True),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), True),
        (botocore.exceptions.SSLError(endpoint_url="http://x", error="bad cert"), False),
        (botocore.exceptions.NoCredentialsError(), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError("bug"), False),
    ],
)
def test_retry_classification(error: BaseException, retryable: bool) -> None:
    assert is_retryable(error) is retryable


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base_s=0.2, cap_s=30.0)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.2 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert backoff.delay(10_000) <= 30.0
    with pytest.raises(ValueError):
        Backoff(base_s=2.0, cap_s=1.0)


def test_open_store_from_settings(tmp_path: Path) -> None:
    local = open_store(Settings(warehouse_url=f"file://{tmp_path}/wh"))
    assert isinstance(local, LocalStore) and local.root == tmp_path / "wh"
    relative = open_store(Settings(warehouse_url="file://./warehouse"))
    assert isinstance(relative, LocalStore) and relative.root == Path("warehouse")
    s3 = open_store(
        Settings(
            warehouse_url="s3://bucket-1/some/prefix/",
            s3_endpoint_url="http://127.0.0.1:9000",
            s3_access_key_id=SecretStr(ACCESS_KEY),
            s3_secret_access_key=SecretStr(SECRET_KEY),
        )
    )
    assert isinstance(s3, S3Store)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == (
        "bucket-1",
        "some/prefix/",
        "http://127.0.0.1:9000",
    )
    assert SECRET_KEY not in repr(s3) and ACCESS_KEY not in repr(s3)
    bare = open_store(Settings(warehouse_url="s3://bucket-2"))
    assert isinstance(bare, S3Store) and bare.prefix == ""
    for url in ["warehouse", "http://x/y", "s3://", "file://"]:
        with pytest.raises(ValueError, match="warehouse_url"):
            open_store(Settings(warehouse_url=url))
    assert org_prefix("o-1") == "fullstory_o-1/"


# -- local directory specifics ------------------------------------------------------------


def files_below(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


async def test_local_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "wh")
    await asyncio.gather(*(store.put(f"h/{n % 3}/k{n}", b"x" * n) for n in range(40)))
    await store.put(PARTITION_KEY, b"p")
    expected = sorted([f"h/{n % 3}/k{n}" for n in range(40)] + [PARTITION_KEY])
    assert files_below(tmp_path / "wh") == expected
    assert [info.key for info in await store.list("")] == expected


async def test_local_store_readers_never_see_a_partial_object(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "wh")
    versions = [bytes([n]) * (2 * MIB + n * 4099) for n in range(1, 4)]
    await store.put("hot.bin", versions[0])
    path = tmp_path / "wh" / "hot.bin"
    writing = threading.Event()
    writing.set()
    seen: set[int] = set()

    def read_while_writing() -> None:
        for _ in range(100_000):
            if not writing.is_set():
                return
            data = path.read_bytes()
            assert data in versions, f"partial read of {len(data)} bytes"
            seen.add(len(data))

    reader = asyncio.create_task(asyncio.to_thread(read_while_writing))
    try:
        for round_number in range(30):
            await store.put("hot.bin", versions[round_number % len(versions)])
    finally:
        writing.clear()
        await reader
    assert len(seen) >= 2
    assert files_below(tmp_path / "wh") == ["hot.bin"]


async def test_local_store_failed_write_keeps_the_old_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "wh")
    await store.put("k", b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StoreError, match="No space left"):
        await store.put("k", b"new")
    monkeypatch.undo()
    assert await store.get("k") == b"old"
    assert files_below(tmp_path / "wh") == ["k"]


async def test_local_store_object_and_folder_clash_is_a_store_error(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "wh")
    await store.put("a", b"file")
    with pytest.raises(StoreError, match="'a/b'"):
        await store.put("a/b", b"below a file")
    assert await store.get("a/b") is None


# -- fault injection ----------------------------------------------------------------------


async def test_retries_s3_errors_until_the_put_succeeds(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    faults = {n: Fault("status", 503, "SlowDown") for n in range(3)}
    faults[3] = Fault("status", 500, "InternalError")
    async with FaultyProxy(s3_endpoint, faults) as proxy_url:
        store = make_s3_store(proxy_url, bucket, retries)
        try:
            await store.put(PARTITION_KEY, b"parquet bytes")
            assert await store.get(PARTITION_KEY) == b"parquet bytes"
        finally:
            await store.close()
    assert [(op, attempt) for op, attempt, _ in retries.calls] == [
        ("put_object", 1),
        ("put_object", 2),
        ("put_object", 3),
        ("put_object", 4),
    ]
    codes = [
        error.response["Error"]["Code"]
        for _, _, error in retries.calls
        if isinstance(error, botocore.exceptions.ClientError)
    ]
    assert codes == ["SlowDown", "SlowDown", "SlowDown", "InternalError"]
    ceilings = [0.2, 0.4, 0.8, 1.6]
    assert all(c / 2 <= d <= c for c, d in zip(ceilings, retries.delays, strict=True))
    direct = s3_admin(s3_endpoint).get_object(
        Bucket=bucket, Key=f"warehouse/prefix/{PARTITION_KEY}"
    )
    assert direct["Body"].read() == b"parquet bytes"


async def test_retries_dropped_connections_and_cut_answers(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    faults = {n: Fault("drop") for n in range(4)}  # the put
    faults[5] = Fault("cut_answer")  # the first get, after the put went through
    async with FaultyProxy(s3_endpoint, faults) as proxy_url:
        store = make_s3_store(proxy_url, bucket, retries)
        try:
            await store.put("k v=1", b"payload " * 1000)
            assert await store.get("k v=1") == b"payload " * 1000
        finally:
            await store.close()
    operations = [operation for operation, _, _ in retries.calls]
    # aiohttp itself resends an idempotent request once if the connection drops before
    # any answer, so the store sees between two and four of the four dropped puts.
    assert 2 <= operations.count("put_object") <= 4
    assert operations.count("get_object") == 1
    assert all(is_retryable(error) for _, _, error in retries.calls)
    assert [info.key for info in await list_directly(s3_endpoint, bucket, retries)] == ["k v=1"]


async def list_directly(endpoint: str, bucket: str, retries: RecordedRetries) -> list[ObjectInfo]:
    store = make_s3_store(endpoint, bucket, retries)
    try:
        return await store.list("")
    finally:
        await store.close()


async def test_multipart_upload_survives_failing_requests(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    data = os.urandom(11 * MIB)
    faults = {
        0: Fault("drop"),  # create (a POST, which aiohttp does not resend)
        3: Fault("status", 503),  # part 2
        4: Fault("status", 500, "InternalError"),  # part 2 again
        7: Fault("lost_answer"),  # complete: moto completed it, the store does not know
    }
    proxy = FaultyProxy(s3_endpoint, faults)
    async with proxy as proxy_url:
        store = make_s3_store(proxy_url, bucket, retries)
        try:
            await store.put("big.bin", data)
        finally:
            await store.close()
    methods = [line.split(" ", 1)[0] for line in proxy.requests]
    assert methods == ["POST", "POST", "PUT", "PUT", "PUT", "PUT", "PUT", "POST", "POST"]
    assert [(op, attempt) for op, attempt, _ in retries.calls] == [
        ("create_multipart_upload", 1),
        ("upload_part", 1),
        ("upload_part", 2),
        ("complete_multipart_upload", 1),
    ]
    admin = s3_admin(s3_endpoint)
    stored = admin.get_object(Bucket=bucket, Key="warehouse/prefix/big.bin")
    assert stored["ETag"].strip('"').endswith("-3")
    assert stored["Body"].read() == data
    assert "Uploads" not in admin.list_multipart_uploads(Bucket=bucket)


async def test_waits_out_a_server_that_is_down(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    port = free_port()
    async with contextlib.AsyncExitStack() as running:

        async def sleep_then_come_back(delay: float) -> None:
            retries.delays.append(delay)
            if len(retries.delays) == 5:
                await running.enter_async_context(FaultyProxy(s3_endpoint, {}, port))

        store = make_s3_store(
            f"http://127.0.0.1:{port}", bucket, retries, sleep=sleep_then_come_back
        )
        try:
            await store.put("after the outage", b"kept")
        finally:
            await store.close()
    assert [attempt for _, attempt, _ in retries.calls] == [1, 2, 3, 4, 5]
    errors = [error for _, _, error in retries.calls]
    assert all(isinstance(e, botocore.exceptions.EndpointConnectionError) for e in errors)
    stored = s3_admin(s3_endpoint).get_object(
        Bucket=bucket, Key="warehouse/prefix/after the outage"
    )
    assert stored["Body"].read() == b"kept"


async def test_multipart_upload_is_aborted_on_a_permanent_error(
    s3_endpoint: str, bucket: str, retries: RecordedRetries
) -> None:
    faults = {2: Fault("status", 403, "AccessDenied")}
    async with FaultyProxy(s3_endpoint, faults) as proxy:
        store = make_s3_store(proxy, bucket, retries)
        try:
            with pytest.raises(StoreError, match="AccessDenied"):
                await store.put("big.bin", os.urandom(11 * MIB))
        finally:
            await store.close()
    admin = s3_admin(s3_endpoint)
    assert "Uploads" not in admin.list_multipart_uploads(Bucket=bucket)
    assert "Contents" not in admin.list_objects_v2(Bucket=bucket)
    assert retries.calls == []

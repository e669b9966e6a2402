"""The warehouse's object store: a local directory or a key prefix in an S3 bucket.

Everything that touches storage goes through one of these two stores, behind the same
five async calls, so the sink neither knows nor cares where its files go. Keys are
relative to the store's root, use ``/`` and may hold spaces and ``=`` (hive partition
folders); both stores keep them byte for byte.

Readers never see half an object: the local store writes a temporary file and renames
it; S3 only shows an object once its PutObject or multipart upload completes. S3
failures that can pass (connection loss, timeouts, 5xx, throttling) are retried forever
with capped exponential backoff, so a sink pauses while S3 is down instead of dropping
data; the rest (access denied, missing bucket, bad credentials) raise ``StoreError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, TypeVarTuple

import aiohttp
import botocore.exceptions
from aiobotocore.client import AioBaseClient
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import SecretStr

from fsstream.core.layout import org_prefix
from fsstream.settings import Settings

__all__ = [
    "Backoff",
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "OnRetry",
    "S3Store",
    "StoreError",
    "is_retryable",
    "open_store",
    "org_prefix",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
Args = TypeVarTuple("Args")
OnRetry = Callable[[str, int, BaseException], None]
"""Called before each retry with the operation, the failed attempt's number and its error."""
Sleep = Callable[[float], Awaitable[None]]

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
_TEMP_SUFFIX = ".partial"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """A stored object: its key relative to the store's root and its size in bytes."""

    key: str
    size: int


class StoreError(Exception):
    """A store call failed in a way retrying cannot fix; the message names no secret."""


class ObjectStore(Protocol):
    """Where the warehouse's files live."""

    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key``, replacing any object there as a whole."""
        ...

    async def get(self, key: str) -> bytes | None:
        """The object at ``key``, None if there is none."""
        ...

    async def list(self, prefix: str) -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the object at ``key``; nothing happens if there is none."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...


def _check_key(key: str) -> None:
    """Refuse keys the two stores could not hold alike (absolute, ``..``, empty parts)."""
    parts = key.split("/")
    if not key or "\0" in key or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid object key {key!r}")
    if _is_temporary(parts[-1]):
        raise ValueError(f"object key {key!r} looks like a temporary file of the local store")


def _is_temporary(name: str) -> bool:
    """Whether a file name is one of the local store's writes in progress."""
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _check_prefix(prefix: str) -> None:
    if prefix:
        _check_key(prefix + "x")


# -- local directory -----------------------------------------------------------------


class LocalStore:
    """Objects as files below a directory; each put is atomic and durable once it returns.

    File I/O runs in a worker thread so the event loop never waits on the disk. A key
    cannot be both an object and a folder of objects here (``a`` and ``a/b``); the
    warehouse layout never needs that.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    async def put(self, key: str, data: bytes) -> None:
        await self._run("put", key, _write_atomically, self._path(key), data)

    async def get(self, key: str) -> bytes | None:
        return await self._run("get", key, _read_file, self._path(key))

    async def list(self, prefix: str) -> list[ObjectInfo]:
        _check_prefix(prefix)
        return await self._run("list", prefix, _list_files, self.root, prefix)

    async def delete(self, key: str) -> None:
        await self._run("delete", key, _delete_file, self._path(key))

    async def close(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    async def _run(self, operation: str, key: str, call: Callable[[*Args], T], *args: *Args) -> T:
        try:
            return await asyncio.to_thread(call, *args)
        except OSError as error:
            reason = error.strerror or str(error)
            raise StoreError(f"{operation} {key!r} in {self.root} failed: {reason}") from error


def _write_atomically(path: Path, data: bytes) -> None:
    """Write a temporary file beside ``path``, flush it to disk, then rename it over."""
    _make_dirs(path.parent)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), 0o644)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_dir(path.parent)


def _make_dirs(directory: Path) -> None:
    """Create the missing folders, each made durable in its parent."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        _fsync_dir(folder.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_file(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _delete_file(path: Path) -> None:
    try:
        path.unlink()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return
    _fsync_dir(path.parent)


def _list_files(root: Path, prefix: str) -> list[ObjectInfo]:
    folder = prefix.rpartition("/")[0]
    found: list[ObjectInfo] = []
    for dirpath, dirnames, filenames in os.walk(root / folder if folder else root):
        relative = Path(dirpath).relative_to(root).as_posix()
        base = "" if relative == "." else f"{relative}/"
        dirnames[:] = [
            d
            for d in dirnames
            if (base + d + "/").startswith(prefix) or prefix.startswith(base + d + "/")
        ]
        for name in filenames:
            key = base + name
            if not key.startswith(prefix) or _is_temporary(name):
                continue
            try:
                size = os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # deleted while listing
                continue
            found.append(ObjectInfo(key, size))
    found.sort(key=lambda info: info.key)
    return found


# -- S3 ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: retry n waits between half and all of base·2ⁿ⁻¹, capped."""

    base_s: float = 0.2
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError("backoff needs 0 < base_s <= cap_s")

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 64))
        return random.uniform(ceiling / 2, ceiling)


_RETRYABLE_CODES = frozenset(
    {
        "BandwidthLimitExceeded",
        "IncompleteBody",
        "InternalError",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
# 501 and 505 say the server will never do this, however often it is asked.
_PERMANENT_5XX = frozenset({501, 505})


def is_retryable(error: BaseException) -> bool:
    """Whether a failed S3 call may succeed if made again: the error is transient."""
    if isinstance(error, botocore.exceptions.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = error.response.get("Error", {}).get("Code", "")
        return (
            code in _RETRYABLE_CODES
            or status == 429
            or (status >= 500 and status not in _PERMANENT_5XX)
        )
    if isinstance(error, botocore.exceptions.SSLError):
        return False  # a certificate that does not verify stays so
    return isinstance(
        error,
        botocore.exceptions.ConnectionError
        | botocore.exceptions.HTTPClientError
        | botocore.exceptions.IncompleteReadError
        | aiohttp.ClientConnectionError
        | aiohttp.ClientPayloadError  # a body cut short while being read
        | ConnectionError
        | TimeoutError,
    )


_S3_ERRORS = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    aiohttp.ClientError,
    ConnectionError,
    TimeoutError,
)


def _error_code(error: BaseException) -> str:
    if isinstance(error, botocore.exceptions.ClientError):
        return str(error.response.get("Error", {}).get("Code", ""))
    return ""


class S3Store:
    """Objects below a key prefix in an S3 bucket (AWS, MinIO or any S3 API), via aiobotocore.

    The client is made on first use. Objects from ``multipart_threshold`` bytes up go as
    a multipart upload of ``part_size`` parts, aborted if it fails. Every S3 request goes
    through ``_call``, which retries transient errors forever (see ``is_retryable``)
    after ``backoff`` delays, reporting each retry to ``on_retry``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: SecretStr | None = None,
        secret_access_key: SecretStr | None = None,
        multipart_threshold: int = 16 * MIB,
        part_size: int = 8 * MIB,
        list_page_size: int = 1000,
        backoff: Backoff | None = None,
        on_retry: OnRetry | None = None,
        sleep: Sleep = asyncio.sleep,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {MIN_PART_SIZE} bytes")
        if multipart_threshold < 1 or not 1 <= list_page_size <= 1000:
            raise ValueError("multipart_threshold must be positive, list_page_size 1..1000")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self.list_page_size = list_page_size
        self._region = region
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._backoff = backoff or Backoff()
        self._on_retry = on_retry
        self._sleep = sleep
        self._config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": 1},  # _call retries
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
        )
        self._s3: AioBaseClient | None = None
        self._client_lock = asyncio.Lock()
        self._exit_stack = contextlib.AsyncExitStack()

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"endpoint_url={self.endpoint_url!r})"
        )

    async def put(self, key: str, data: bytes) -> None:
        full = self._full_key(key)
        if len(data) >= self.multipart_threshold:
            await self._put_multipart(key, full, data)
        else:
            await self._request("put_object", key, Key=full, Body=data)

    async def get(self, key: str) -> bytes | None:
        full = self._full_key(key)

        async def fetch(s3: AioBaseClient) -> bytes | None:
            try:
                response = await s3.get_object(Bucket=self.bucket, Key=full)
            except botocore.exceptions.ClientError as error:
                if _error_code(error) == "NoSuchKey":
                    return None
                raise
            async with response["Body"] as body:
                data: bytes = await body.read()
                return data

        return await self._call("get_object", key, fetch)

    async def list(self, prefix: str) -> list[ObjectInfo]:
        _check_prefix(prefix)
        found: list[ObjectInfo] = []
        continuation: dict[str, Any] = {}
        while True:
            page = await self._request(
                "list_objects_v2",
                prefix,
                Prefix=self.prefix + prefix,
                MaxKeys=self.list_page_size,
                **continuation,
            )
            found.extend(
                ObjectInfo(item["Key"][len(self.prefix) :], item["Size"])
                for item in page.get("Contents", [])
            )
            if not page.get("IsTruncated"):
                break
            continuation = {"ContinuationToken": page["NextContinuationToken"]}
        found.sort(key=lambda info: info.key)
        return found

    async def delete(self, key: str) -> None:
        await self._request("delete_object", key, Key=self._full_key(key))

    async def close(self) -> None:
        async with self._client_lock:
            await self._exit_stack.aclose()
            self._s3 = None

    def _full_key(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    async def _put_multipart(self, key: str, full: str, data: bytes) -> None:
        created = await self._request("create_multipart_upload", key, Key=full)
        upload = {"Key": full, "UploadId": created["UploadId"]}
        part_size = max(self.part_size, -(-len(data) // MAX_PARTS))
        try:
            parts: list[dict[str, Any]] = []
            for number, start in enumerate(range(0, len(data), part_size), start=1):
                body = data[start : start + part_size]
                uploaded = await self._request(
                    "upload_part", key, PartNumber=number, Body=body, **upload
                )
                parts.append({"PartNumber": number, "ETag": uploaded["ETag"]})
            await self._request(
                "complete_multipart_upload", key, MultipartUpload={"Parts": parts}, **upload
            )
        except BaseException:
            await self._abort_multipart(key, upload)
            raise

    async def _abort_multipart(self, key: str, upload: dict[str, str]) -> None:
        """Drop the parts of a failed upload; a few tries only, as it merely saves storage."""
        try:
            await self._request("abort_multipart_upload", key, attempts=3, **upload)
        except StoreError as error:
            log.warning(
                "parts of a failed upload stay until the bucket's lifecycle rule removes them: %s",
                error,
            )

    async def _request(
        self, operation: str, key: str, *, attempts: int | None = None, **params: Any
    ) -> dict[str, Any]:
        """The S3 API call ``operation`` on this bucket, through ``_call``."""

        async def send(s3: AioBaseClient) -> dict[str, Any]:
            response: dict[str, Any] = await getattr(s3, operation)(Bucket=self.bucket, **params)
            return response

        return await self._call(operation, key, send, attempts=attempts)

    async def _client(self) -> AioBaseClient:
        if self._s3 is None:
            async with self._client_lock:
                if self._s3 is None:
                    self._s3 = await self._exit_stack.enter_async_context(
                        get_session().create_client(
                            "s3",
                            endpoint_url=self.endpoint_url,
                            region_name=self._region,
                            aws_access_key_id=_reveal(self._access_key_id),
                            aws_secret_access_key=_reveal(self._secret_access_key),
                            config=self._config,
                        )
                    )
        return self._s3

    async def _call(
        self,
        operation: str,
        key: str,
        request: Callable[[AioBaseClient], Awaitable[T]],
        *,
        attempts: int | None = None,
    ) -> T:
        """``request`` on the client, retried while it fails transiently (up to ``attempts``)."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await request(await self._client())
            except Exception as error:
                if attempt == attempts or not is_retryable(error):
                    if isinstance(error, _S3_ERRORS):
                        where = self._where(key)
                        raise StoreError(
                            f"S3 {operation} of {where} failed: {self._describe(error)}"
                        ) from error
                    raise
                delay = self._backoff.delay(attempt)
                log.warning(
                    "S3 %s of %s failed (%s); retry %d in %.1f s",
                    operation,
                    self._where(key),
                    self._describe(error),
                    attempt,
                    delay,
                )
                if self._on_retry is not None:
                    self._on_retry(operation, attempt, error)
                await self._sleep(delay)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _describe(self, error: BaseException) -> str:
        """The error in one line, without any credential it might echo."""
        if isinstance(error, botocore.exceptions.ClientError):
            details = error.response.get("Error", {})
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
            text = f"{details.get('Code', '?')} (HTTP {status}): {details.get('Message', '')}"
        else:
            text = f"{type(error).__name__}: {error}"
        for secret in (self._access_key_id, self._secret_access_key):
            if secret is not None and secret.get_secret_value():
                text = text.replace(secret.get_secret_value(), "**********")
        return text


def _reveal(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


# -- from settings -------------------------------------------------------------------


def open_store(settings: Settings, *, on_retry: OnRetry | None = None) -> ObjectStore:
    """The store ``settings.warehouse_url`` names: ``file://DIR`` or ``s3://BUCKET/PREFIX``.

    ``DIR`` may be relative (``file://./warehouse``) or absolute (``file:///data/wh``).
    """
    url = settings.warehouse_url
    scheme, separator, location = url.partition("://")
    if scheme == "file" and separator and location:
        return LocalStore(Path(location))
    if scheme == "s3" and separator:
        bucket, _, prefix = location.partition("/")
        if bucket:
            return S3Store(
                bucket,
                prefix,
                endpoint_url=settings.s3_endpoint_url,
                region=settings.s3_region,
                access_key_id=settings.s3_access_key_id,
                secret_access_key=settings.s3_secret_access_key,
                on_retry=on_retry,
            )
    raise ValueError(
        f"warehouse_url must be file://DIR or s3://BUCKET/PREFIX (got a {scheme!r} URL)"
    )

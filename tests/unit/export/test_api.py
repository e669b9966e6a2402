"""The v1 export API on a real loopback server, driven the way Data Export clients drive it."""

from __future__ import annotations

import asyncio
import base64
import gzip
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from yarl import URL

from fsstream.export.api import LAST_S, PAGE_SIZE, BundleIndex, ExportServer, make_app, start_api
from fsstream.export.bundles import bundle_key
from fsstream.export.config import HOUR_MS, ExportConfig, Period
from fsstream.infra.object_store import LocalStore, ObjectInfo, StoreError

ORG = "o-api"
KEYS = ("first-key", "second-key")
START_S = 1_704_067_200  # 2024-01-01T00:00:00Z
SIX_HOURS_MS = 6 * HOUR_MS


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    store: LocalStore
    server: ExportServer

    async def call(
        self, path: str, key: str | None = KEYS[0], **params: Any
    ) -> tuple[int, dict[str, str], bytes]:
        headers = {"Authorization": f"Basic {key}"} if key is not None else {}
        async with self.session.get(
            self.base + path, params=params, headers=headers, auto_decompress=False
        ) as response:
            return response.status, dict(response.headers), await response.read()

    async def list(self, start: int) -> list[dict[str, Any]]:
        status, _, body = await self.call("/api/v1/export/list", start=start)
        assert status == 200, body
        exports: list[dict[str, Any]] = orjson.loads(body)["exports"]
        return exports


def period(number: int) -> Period:
    start_ms = START_S * 1000 + number * SIX_HOURS_MS
    return Period(start_ms, start_ms + SIX_HOURS_MS)


async def put_bundles(store: LocalStore, count: int) -> list[Period]:
    periods = [period(n) for n in range(count)]
    for p in periods:
        body = orjson.dumps([{"EventStart": "x", "Bundle": p.id}])
        await store.put(bundle_key(ORG, p), gzip.compress(body, mtime=0))
    return periods


MakeApi = Callable[..., Any]


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[MakeApi]:
    servers: list[ExportServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(store: Any = None, **config: Any) -> Api:
        store = store or LocalStore(tmp_path / "warehouse")
        values: dict[str, Any] = {"org_id": ORG, "api_keys": KEYS, "index_ttl_s": 0.0, **config}
        export_config = ExportConfig(**values)
        server = await start_api(make_app(store, export_config), export_config, "127.0.0.1", 0)
        servers.append(server)
        sessions.append(aiohttp.ClientSession())
        return Api(f"http://127.0.0.1:{server.port}", sessions[-1], store, server)

    yield make
    for session in sessions:
        await session.close()
    for server in servers:
        await server.close()


async def replicate(api: Api, start: int = 0) -> tuple[list[dict[str, Any]], list[int], int]:
    """A replicating client: list from its bookmark, fetch each bundle, move the bookmark
    to the bundle's Stop, and stop after a page shorter than 20.

    Returns the events fetched, the page sizes seen and the final bookmark.
    """
    events: list[dict[str, Any]] = []
    pages: list[int] = []
    while True:
        page = await api.list(start)
        pages.append(len(page))
        for bundle in page:
            status, headers, body = await api.call("/api/v1/export/get", id=bundle["Id"])
            assert status == 200
            assert headers["Content-Type"] == "application/gzip"
            assert "Content-Encoding" not in headers
            events.extend(orjson.loads(gzip.decompress(body)))
            start = bundle["Stop"]
        if len(page) < PAGE_SIZE:
            return events, pages, start


async def test_a_replicating_client_gets_every_bundle_exactly_once_in_order(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    periods = await put_bundles(api.store, 45)
    events, pages, bookmark = await replicate(api)
    assert pages == [20, 20, 5]
    assert [e["Bundle"] for e in events] == [p.id for p in periods]
    assert bookmark == periods[-1].stop_ms // 1000
    # Nothing new: the next run lists an empty page; new bundles come next time.
    assert await replicate(api, bookmark) == ([], [0], bookmark)
    more = [period(n) for n in range(45, 47)]
    for p in more:
        await api.store.put(bundle_key(ORG, p), gzip.compress(b"[]", mtime=0))
    _, pages, bookmark = await replicate(api, bookmark)
    assert (pages, bookmark) == ([2], more[-1].stop_ms // 1000)


async def test_a_multiple_of_the_page_size_ends_with_an_empty_page(make_api: MakeApi) -> None:
    api = await make_api()
    periods = await put_bundles(api.store, 40)
    events, pages, _ = await replicate(api)
    assert pages == [20, 20, 0]
    assert [e["Bundle"] for e in events] == [p.id for p in periods]


async def test_list_answers_bundles_ending_after_start_with_integer_times(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    periods = await put_bundles(api.store, 3)
    listed = await api.list(0)
    assert listed == [
        {"Id": p.id, "Start": p.start_ms // 1000, "Stop": p.stop_ms // 1000} for p in periods
    ]
    assert listed[0]["Id"] == str(START_S * 100 + 12)
    assert [e["Id"] for e in await api.list(listed[0]["Stop"])] == [p.id for p in periods[1:]]
    assert [e["Id"] for e in await api.list(listed[0]["Stop"] - 1)] == [p.id for p in periods]
    assert await api.list(listed[-1]["Stop"]) == []
    status, _, body = await api.call("/api/v1/export/list")  # no start: from the beginning
    assert status == 200 and len(orjson.loads(body)["exports"]) == 3


async def test_ids_can_be_listed_as_integers(make_api: MakeApi) -> None:
    api = await make_api(integer_ids=True)
    [p] = await put_bundles(api.store, 1)
    [listed] = await api.list(0)
    assert listed["Id"] == int(p.id)
    status, _, _ = await api.call("/api/v1/export/get", id=listed["Id"])
    assert status == 200


async def test_get_answers_the_stored_gzip_bytes(make_api: MakeApi) -> None:
    api = await make_api()
    [p] = await put_bundles(api.store, 1)
    status, headers, body = await api.call("/api/v1/export/get", id=p.id)
    assert status == 200
    assert headers["Content-Type"] == "application/gzip"
    assert body == await api.store.get(bundle_key(ORG, p))
    assert body[:2] == b"\x1f\x8b"


async def test_api_keys_are_checked(make_api: MakeApi) -> None:
    api = await make_api()
    await put_bundles(api.store, 1)
    for path, params in (("/api/v1/export/list", {"start": 0}), ("/api/v1/export/get", {"id": 1})):
        for key in (None, "", "wrong-key", "first-ke", "first-key2"):
            status, headers, body = await api.call(path, key=key, **params)
            assert status == 401, (path, key)
            assert "error" in orjson.loads(body)
            assert headers["Content-Type"].startswith("application/json")
            assert headers["WWW-Authenticate"].startswith("Basic")
    assert (await api.call("/api/v1/export/list", key=KEYS[1], start=0))[0] == 200
    # Other schemes and the base64 user:password form of RFC 7617 are not API keys.
    encoded = base64.b64encode(f"user:{KEYS[0]}".encode()).decode()
    async with api.session.get(
        api.base + "/api/v1/export/list", headers={"Authorization": f"Bearer {KEYS[0]}"}
    ) as response:
        assert response.status == 401
    assert (await api.call("/api/v1/export/list", key=encoded))[0] == 401
    async with api.session.get(
        api.base + "/api/v1/export/list", headers={"Authorization": f"basic  {KEYS[0]} "}
    ) as response:
        assert response.status == 200


async def test_no_configured_key_refuses_everything(make_api: MakeApi) -> None:
    api = await make_api(api_keys=())
    assert (await api.call("/api/v1/export/list", key="", start=0))[0] == 401
    assert (await api.call("/api/v1/export/list", key="anything", start=0))[0] == 401


async def test_bad_parameters_are_400_and_unknown_ids_404(make_api: MakeApi) -> None:
    api = await make_api()
    [p] = await put_bundles(api.store, 1)
    for start in ("-5", "abc", "1.5", "", "\uff11\uff12"):
        status, _, body = await api.call("/api/v1/export/list", start=start)
        assert status == 400, start
        assert "start" in orjson.loads(body)["error"]
    for bad_id in ("", "abc", "-1", "12a"):
        status, _, body = await api.call("/api/v1/export/get", id=bad_id)
        assert status == 400, bad_id
        assert "error" in orjson.loads(body)
    status, _, _ = await api.call("/api/v1/export/get")
    assert status == 400
    next_id = period(1).id
    for unknown in (next_id, "170406720047", "1", "0" + p.id):
        status, _, body = await api.call("/api/v1/export/get", id=unknown)
        assert status == 404, unknown
        assert unknown in orjson.loads(body)["error"]


ALIGNED_PAST_9999 = str((LAST_S + 1) * 100 + 48)  # the 24 h bundle of 10000-01-01
ENDING_IN_10000 = str((LAST_S + 1 - 86_400) * 100 + 48)  # 9999-12-31, ends at 10000-01-01
LAST_DAY_6H = str((LAST_S + 1 - 6 * 3600 * 2) * 100 + 12)  # 9999-12-31T12:00Z, 6 h

BAD_PARAMETERS = [
    ("/api/v1/export/list", "start", "start=-5"),
    ("/api/v1/export/list", "start", "start=%2B5"),
    ("/api/v1/export/list", "start", "start=1e3"),
    ("/api/v1/export/list", "start", "start=0x10"),
    ("/api/v1/export/list", "start", "start=%EF%BC%91"),  # a fullwidth digit
    ("/api/v1/export/list", "start", "start=%FF"),
    ("/api/v1/export/list", "start", "start=" + "9" * 4301),
    ("/api/v1/export/list", "start", "start=" + "9" * 5000),
    ("/api/v1/export/list", "start", "start=" + "9" * 30),
    ("/api/v1/export/list", "start", f"start={LAST_S + 1}"),
    ("/api/v1/export/list", "start", "start=" + "0" * 5000 + str(LAST_S + 1)),
    ("/api/v1/export/list", "start", "start=1&start=2"),
    ("/api/v1/export/get", "id", ""),
    ("/api/v1/export/get", "id", "id="),
    ("/api/v1/export/get", "id", "id=%20"),
    ("/api/v1/export/get", "id", "id=-1"),
    ("/api/v1/export/get", "id", "id=1.5"),
    ("/api/v1/export/get", "id", "id=%FF%00"),
    ("/api/v1/export/get", "id", "id=" + "9" * 4301),
    ("/api/v1/export/get", "id", "id=" + "1" * 20),
    ("/api/v1/export/get", "id", f"id={ALIGNED_PAST_9999}"),
    ("/api/v1/export/get", "id", f"id={ENDING_IN_10000}"),
    ("/api/v1/export/get", "id", "id=170406720012&id=170406720012"),
]


@pytest.mark.parametrize(("path", "name", "query"), BAD_PARAMETERS)
async def test_every_bad_parameter_is_a_400_naming_it(
    make_api: MakeApi, path: str, name: str, query: str
) -> None:
    api = await make_api()
    await put_bundles(api.store, 1)
    url = URL(f"{api.base}{path}?{query}" if query else api.base + path, encoded=True)
    async with api.session.get(url, headers={"Authorization": f"Basic {KEYS[0]}"}) as response:
        assert response.status == 400, await response.text()
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["parameter"] == name
    assert body["error"].startswith(name + " ")


async def test_parameters_at_the_edge_of_their_range_are_served(make_api: MakeApi) -> None:
    api = await make_api()
    periods = await put_bundles(api.store, 2)
    assert await api.list(LAST_S) == []
    # Leading zeros do not count against the range, however many there are.
    edges = [("0" * 5000, 2), (" 0 ", 2), ("0" * 4400 + str(periods[0].stop_ms // 1000), 1)]
    for start, listed in edges:
        status, _, body = await api.call("/api/v1/export/list", start=start)
        assert status == 200, start[:20]
        assert len(orjson.loads(body)["exports"]) == listed
    # Well-formed Ids up to the last representable bundles name none: 404, not 400 or 500.
    for unknown in (LAST_DAY_6H, "0" * 5000 + periods[0].id):
        status, _, body = await api.call("/api/v1/export/get", id=unknown)
        assert status == 404, unknown
        assert "error" in orjson.loads(body)


async def test_a_key_that_is_not_utf8_is_refused_as_401(make_api: MakeApi) -> None:
    api = await make_api()
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    writer.write(
        b"GET /api/v1/export/list HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Basic first-key\xff\xfe\r\nConnection: close\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), answer
    assert "error" in orjson.loads(body)


async def test_an_unexpected_failure_is_a_json_500(make_api: MakeApi) -> None:
    class BrokenStore(LocalStore):
        async def get(self, key: str) -> bytes | None:
            raise RuntimeError("a bug")

    api = await make_api(store=BrokenStore(Path("/nonexistent")))
    status, headers, body = await api.call("/api/v1/export/get", id=period(0).id)
    assert status == 500
    assert headers["Content-Type"].startswith("application/json")
    assert orjson.loads(body) == {"error": "internal error"}


async def closed_after(reader: asyncio.StreamReader, limit_s: float) -> tuple[float, bytes]:
    """How long until the server closes the connection, and what it sent before."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), limit_s)
    return time.monotonic() - started, data


async def wait_for_connections(server: ExportServer, count: int) -> None:
    for _ in range(200):
        if server.connections == count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server.connections} connections open, expected {count}")


async def test_a_client_that_sends_half_a_request_is_closed_within_the_header_timeout(
    make_api: MakeApi,
) -> None:
    api = await make_api(header_timeout_s=0.5)
    opened = [await asyncio.open_connection("127.0.0.1", api.server.port) for _ in range(3)]
    # The first stays silent; the others stop partway through the line and the headers.
    (_, half_line), (_, half_headers) = opened[1:]
    half_line.write(b"GET /api/v1/exp")
    half_headers.write(b"GET /api/v1/export/list HTTP/1.1\r\nHost: x\r\n")
    for reader, writer in opened:
        elapsed, data = await closed_after(reader, 5)
        assert data == b"" and elapsed < 3
        writer.close()
    # Trickling bytes does not extend the deadline.
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    started = time.monotonic()
    for byte in b"GET /api/v1/export/list HTTP/1.1\r\nHost: x\r\n":
        if reader.at_eof():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.05)
    await closed_after(reader, 5)
    assert 0.4 < time.monotonic() - started < 3
    writer.close()
    await wait_for_connections(api.server, 0)
    # A whole request in time is answered.
    assert await api.list(0) == []


async def test_a_keep_alive_connection_is_served_then_closed_when_idle(make_api: MakeApi) -> None:
    api = await make_api(header_timeout_s=5.0, keepalive_timeout_s=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    request = (
        b"GET /api/v1/export/list HTTP/1.1\r\nHost: x\r\nAuthorization: Basic first-key\r\n\r\n"
    )
    for _ in range(2):
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        assert orjson.loads(await reader.readexactly(length)) == {"exports": []}
    elapsed, data = await closed_after(reader, 5)
    assert data == b"" and elapsed < 3
    writer.close()
    await wait_for_connections(api.server, 0)


async def test_connections_past_the_cap_are_refused_until_others_close(make_api: MakeApi) -> None:
    api = await make_api(max_connections=3, header_timeout_s=30.0)
    held = [await asyncio.open_connection("127.0.0.1", api.server.port) for _ in range(3)]
    for _, writer in held:
        writer.write(b"GET /api/v1/exp")
    await wait_for_connections(api.server, 3)
    for _ in range(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
        elapsed, data = await closed_after(reader, 5)
        assert elapsed < 1
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), data
        assert "too many connections" in orjson.loads(body)["error"]
        writer.close()
    status, headers, _ = await api.call("/api/v1/export/list", start=0)
    assert status == 503 and headers["Retry-After"] == "1"
    assert api.server.connections == 3
    for _, writer in held:
        writer.close()
    await wait_for_connections(api.server, 0)
    assert await api.list(0) == []


async def test_an_unreachable_store_is_a_503_with_a_json_error(make_api: MakeApi) -> None:
    class DownStore(LocalStore):
        async def list(self, prefix: str) -> list[ObjectInfo]:
            raise StoreError("S3 list_objects_v2 failed: connection refused")

        async def get(self, key: str) -> bytes | None:
            raise StoreError("S3 get_object failed: connection refused")

    api = await make_api(store=DownStore(Path("/nonexistent")))
    for path, params in (
        ("/api/v1/export/list", {"start": 0}),
        ("/api/v1/export/get", {"id": period(0).id}),
    ):
        status, headers, body = await api.call(path, **params)
        assert status == 503
        assert headers["Retry-After"] == "10"
        assert "error" in orjson.loads(body)


async def test_the_index_lists_the_store_at_most_once_per_ttl(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "warehouse")
    await put_bundles(store, 2)
    now = [100.0]
    index = BundleIndex(store, ORG, ttl_s=30.0, clock=lambda: now[0])
    assert len(await index.page(0)) == 2
    await store.put(bundle_key(ORG, period(2)), gzip.compress(b"[]", mtime=0))
    now[0] += 29.0
    assert len(await index.page(0)) == 2
    now[0] += 1.0
    assert len(await index.page(0)) == 3


async def test_list_requests_within_the_index_ttl_list_the_store_once(
    make_api: MakeApi, tmp_path: Path
) -> None:
    """Keep-alive clients listing again and again are answered from the index: each page
    from its own start, and the store listed once per TTL whatever the request rate."""
    listings = 0

    class CountingStore(LocalStore):
        async def list(self, prefix: str) -> list[ObjectInfo]:
            nonlocal listings
            listings += 1
            return await super().list(prefix)

    store = CountingStore(tmp_path / "warehouse")
    periods = await put_bundles(store, 200)
    api = await make_api(store=store, index_ttl_s=30.0)
    for number in range(0, 400, 7):
        start = periods[number % len(periods)].start_ms // 1000
        page = await api.list(start)
        later = [p for p in periods if p.stop_ms // 1000 > start]
        assert [b["Id"] for b in page] == [p.id for p in later[:PAGE_SIZE]]
    assert listings == 1

"""The v1 export API on a real loopback server, driven the way Data Export clients drive it."""

from __future__ import annotations

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
from aiohttp import web

from fsstream.export.api import PAGE_SIZE, BundleIndex, make_app
from fsstream.export.bundles import bundle_key
from fsstream.export.config import HOUR_MS, ExportConfig, Period
from fsstream.store import LocalStore, ObjectInfo, StoreError

ORG = "o-api"
KEYS = ("first-key", "second-key")
START_S = 1_704_067_200  # 2024-01-01T00:00:00Z
SIX_HOURS_MS = 6 * HOUR_MS


@dataclass
class Api:
    base: str
    session: aiohttp.ClientSession
    store: LocalStore

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


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


MakeApi = Callable[..., Any]


@pytest.fixture
async def make_api(tmp_path: Path) -> AsyncIterator[MakeApi]:
    runners: list[web.AppRunner] = []
    sessions: list[aiohttp.ClientSession] = []

    async def make(store: Any = None, **config: Any) -> Api:
        store = store or LocalStore(tmp_path / "warehouse")
        values: dict[str, Any] = {"org_id": ORG, "api_keys": KEYS, "index_ttl_s": 0.0, **config}
        runner, base = await serve(make_app(store, ExportConfig(**values)))
        runners.append(runner)
        sessions.append(aiohttp.ClientSession())
        return Api(base, sessions[-1], store)

    yield make
    for session in sessions:
        await session.close()
    for runner in runners:
        await runner.cleanup()


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


async def test_list_requests_per_second_on_loopback(
    make_api: MakeApi, capsys: pytest.CaptureFixture[str]
) -> None:
    """Measured, not asserted: sequential keep-alive list requests against 200 bundles."""
    api = await make_api(index_ttl_s=30.0)
    periods = await put_bundles(api.store, 200)
    starts = [p.start_ms // 1000 for p in periods]
    await api.list(0)
    requests = 1000
    started = time.perf_counter()
    for number in range(requests):
        assert len(await api.list(starts[number % len(starts)])) > 0
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\nexport API list: {requests / elapsed:.0f} requests/s (one client, keep-alive)")

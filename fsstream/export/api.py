"""The v1 Data Export API: list the available bundles and fetch one.

``GET /api/v1/export/list?start=<unix seconds>`` answers ``{"exports": [{"Id", "Start",
"Stop"}, ...]}``: the bundles with ``Stop > start``, oldest first, 20 at most. Clients
page by sending the last bundle's ``Stop`` as the next ``start`` until a page holds
fewer than 20, so a full page is always 20 long. ``GET /api/v1/export/get?id=<Id>``
answers the bundle's gzip bytes as ``application/gzip``, not as a ``Content-Encoding``:
clients gunzip the body themselves.

Requests carry ``Authorization: Basic <api key>``, the key itself as Data Export
clients send it (not base64 ``user:password``). The key is checked against every
configured key in constant time. Errors are JSON ``{"error": ...}``: 401 for a missing
or wrong key, 400 for a malformed parameter, 404 for an Id with no bundle, 503 while
the store cannot be reached (clients retry 5xx).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fsstream.export.bundles import BundleInfo, bundle_key, exportable, list_bundles
from fsstream.export.config import ExportConfig, Period
from fsstream.store import ObjectStore, StoreError

__all__ = ["PAGE_SIZE", "BundleIndex", "make_app"]

log = logging.getLogger(__name__)

PAGE_SIZE = 20
LIST_PATH = "/api/v1/export/list"
GET_PATH = "/api/v1/export/get"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BundleIndex:
    """The exportable bundles, listed from the store at most once per ``ttl_s``.

    Listing is the only store call ``list`` needs; between refreshes a page is a
    binary search in memory.
    """

    def __init__(
        self,
        store: ObjectStore,
        org_id: str,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._org_id = org_id
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._listed_at: float | None = None
        self._chain: list[BundleInfo] = []
        self._stops: list[int] = []

    async def page(self, start_s: int) -> list[BundleInfo]:
        """Up to ``PAGE_SIZE`` bundles ending after ``start_s``, oldest first."""
        await self._refresh()
        at = bisect.bisect_right(self._stops, start_s)
        return self._chain[at : at + PAGE_SIZE]

    async def _refresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return
            chain = exportable(await list_bundles(self._store, self._org_id))
            self._chain = chain
            self._stops = [bundle.stop_s for bundle in chain]
            self._listed_at = self._clock()

    def _fresh(self) -> bool:
        return self._listed_at is not None and self._clock() - self._listed_at < self._ttl_s


_STORE = web.AppKey("store", ObjectStore)
_CONFIG = web.AppKey("config", ExportConfig)
_INDEX = web.AppKey("index", BundleIndex)
_KEY_DIGESTS = web.AppKey("key_digests", tuple)


def make_app(store: ObjectStore, config: ExportConfig) -> web.Application:
    """The export API over the bundles in ``store``; it does not close the store.

    With no API key configured every request is refused.
    """
    app = web.Application(middlewares=[_errors, _authenticate])
    app[_STORE] = store
    app[_CONFIG] = config
    app[_INDEX] = BundleIndex(store, config.org_id, config.index_ttl_s)
    app[_KEY_DIGESTS] = tuple(_digest(key) for key in config.api_keys)
    app.router.add_get(LIST_PATH, _list)
    app.router.add_get(GET_PATH, _get)
    return app


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status >= 400:
            return _error(error.status, error.reason)
        raise
    except StoreError as error:
        log.warning("export API: %s", error)
        return _error(503, "the bundle store is unavailable, retry later", **{"Retry-After": "10"})


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = _api_key(request.headers.get("Authorization", ""))
    if given is None or not _known(request.app[_KEY_DIGESTS], given):
        return _error(
            401,
            "missing or invalid API key (send Authorization: Basic <api key>)",
            **{"WWW-Authenticate": 'Basic realm="fsstream export"'},
        )
    return await handler(request)


def _api_key(header: str) -> str | None:
    scheme, _, key = header.strip().partition(" ")
    key = key.strip()
    return key if scheme.lower() == "basic" and key else None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _known(digests: tuple[bytes, ...], key: str) -> bool:
    """Whether ``key`` is configured, comparing with every key so the time tells nothing."""
    given = _digest(key)
    found = False
    for digest in digests:
        found |= hmac.compare_digest(given, digest)
    return found


async def _list(request: web.Request) -> web.Response:
    text = request.query.get("start", "0").strip()
    if not (text.isascii() and text.isdigit()):
        return _error(400, "start must be a unix time in whole seconds")
    page = await request.app[_INDEX].page(int(text))
    as_integer = request.app[_CONFIG].integer_ids
    exports: list[dict[str, Any]] = [
        {
            "Id": int(bundle.id) if as_integer else bundle.id,
            "Start": bundle.start_s,
            "Stop": bundle.stop_s,
        }
        for bundle in page
    ]
    return web.json_response({"exports": exports})


async def _get(request: web.Request) -> web.Response:
    text = request.query.get("id", "").strip()
    if not (text.isascii() and text.isdigit()):
        return _error(400, "id must be the Id of a bundle, as listed")
    period = Period.from_id(text)
    config = request.app[_CONFIG]
    data = None
    if period is not None:
        data = await request.app[_STORE].get(bundle_key(config.org_id, period))
    if data is None:
        return _error(404, f"no bundle with Id {text}")
    return web.Response(
        body=data,
        content_type="application/gzip",
        headers={"Content-Disposition": f'attachment; filename="{text}.json.gz"'},
    )

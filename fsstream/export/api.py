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
or wrong key, 400 for a malformed, repeated or out-of-range parameter (with
``"parameter"`` naming it), 404 for a well-formed Id with no bundle, 503 while the store
cannot be reached (clients retry 5xx).

``start_api`` and ``run_api`` serve the app within the configured connection limits: a
request's line and headers must arrive within ``header_timeout_s``, an idle keep-alive
connection is closed after ``keepalive_timeout_s``, and past ``max_connections`` a new
connection is answered 503 and closed at once, so slow or stalled clients cannot hold
the server's sockets.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from fsstream.export.bundles import BundleInfo, bundle_key, exportable, list_bundles
from fsstream.export.config import DAY_MS, HALF_HOUR_MS, ExportConfig, Period
from fsstream.infra.object_store import ObjectStore, StoreError

__all__ = ["PAGE_SIZE", "BundleIndex", "ExportServer", "make_app", "run_api", "start_api"]

log = logging.getLogger(__name__)

PAGE_SIZE = 20
LIST_PATH = "/api/v1/export/list"
GET_PATH = "/api/v1/export/get"
# 9999-12-31T23:59:59Z: bundle names carry four-digit years, so no bundle ends later.
LAST_S = 253_402_300_799
_LAST_ID = LAST_S * 100 + DAY_MS // HALF_HOUR_MS
SHUTDOWN_TIMEOUT_S = 10.0

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
    app = web.Application(middlewares=[_errors, _authenticate], handler_args=_handler_args(config))
    app[_STORE] = store
    app[_CONFIG] = config
    app[_INDEX] = BundleIndex(store, config.org_id, config.index_ttl_s)
    app[_KEY_DIGESTS] = tuple(_digest(key) for key in config.api_keys)
    app.router.add_get(LIST_PATH, _list)
    app.router.add_get(GET_PATH, _get)
    return app


def _handler_args(config: ExportConfig) -> dict[str, Any]:
    """Limits aiohttp applies itself, under any runner: the keep-alive idle timeout, and
    how long an unread request body is drained before the connection is closed."""
    return {
        "keepalive_timeout": config.keepalive_timeout_s,
        "lingering_time": config.header_timeout_s,
    }


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


class _BadParameter(Exception):
    """A query parameter the API cannot use: answered 400, naming it."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(problem)
        self.name = name


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadParameter as error:
        return web.json_response({"error": str(error), "parameter": error.name}, status=400)
    except web.HTTPException as error:
        if error.status >= 400:
            return _error(error.status, error.reason)
        raise
    except StoreError as error:
        log.warning("export API: %s", error)
        return _error(503, "the bundle store is unavailable, retry later", **{"Retry-After": "10"})
    except Exception:
        log.exception("export API: %s %s failed", request.method, request.path)
        return _error(500, "internal error")


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
    # Header bytes that are not UTF-8 arrive as surrogates; they make a key that matches none.
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _known(digests: tuple[bytes, ...], key: str) -> bool:
    """Whether ``key`` is configured, comparing with every key so the time tells nothing."""
    given = _digest(key)
    found = False
    for digest in digests:
        found |= hmac.compare_digest(given, digest)
    return found


def _query(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise _BadParameter(name, f"{name} is given more than once")
    return values[0].strip() if values else None


def _number(name: str, text: str, what: str, limit: int, too_large: str) -> int:
    """``text`` as a whole number up to ``limit``, never converting an unbounded string."""
    if not (text.isascii() and text.isdigit()):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise _BadParameter(name, f"{name} must be {what}, in digits; got {shown!r}")
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(limit)) or int(digits) > limit:
        raise _BadParameter(name, too_large)
    return int(digits)


async def _list(request: web.Request) -> web.Response:
    text = _query(request, "start")
    start_s = 0
    if text is not None:
        start_s = _number(
            "start",
            text,
            "a unix time in whole seconds",
            LAST_S,
            f"start is out of range: at most {LAST_S} (9999-12-31T23:59:59Z)",
        )
    page = await request.app[_INDEX].page(start_s)
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
    text = _query(request, "id")
    if text is None:
        raise _BadParameter("id", "id is required: the Id of a bundle, as listed")
    out_of_range = "id is out of range: no bundle ends after 9999-12-31T23:59:59Z"
    _number("id", text, "the Id of a bundle, as listed", _LAST_ID, out_of_range)
    period = Period.from_id(text)
    if period is not None and period.stop_ms // 1000 > LAST_S:
        raise _BadParameter("id", out_of_range)
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


# -- serving within the connection limits ------------------------------------------------


class _Gate:
    """How many connections a server holds, and the answer to one past its limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        body = (
            b'{"error": "too many connections: the export API serves %d at once, retry later"}'
            % limit
        )
        self.refusal = (
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )


class _Connection(web.RequestHandler):
    """An HTTP connection held to the limits: admitted under the cap, and closed when a
    request's line and headers do not arrive within the header timeout.

    The deadline starts when the connection opens and when the first byte of a later
    request arrives; it ends once the request's headers are parsed. aiohttp's own
    keep-alive timer closes a connection idle between requests.
    """

    __slots__ = ("_admitted", "_deadline", "_gate", "_header_timeout_s")

    def __init__(
        self, manager: web.Server, *, gate: _Gate, header_timeout_s: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._header_timeout_s = header_timeout_s
        self._admitted = False
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._gate.open >= self._gate.limit:
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(self._gate.refusal)
            transport.close()
            return
        self._admitted = True
        self._gate.open += 1
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self._gate.open -= 1
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        parsed = self._request_count
        super().data_received(data)
        if self._request_count != parsed:
            self._disarm()
        elif data and self._deadline is None:
            self._arm()

    def _arm(self) -> None:
        self._deadline = self._loop.call_later(self._header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            log.info("export API: closing a connection that sent no complete request in time")
            self.force_close()


class ExportServer:
    """The export API listening on a socket; ``close`` stops it and ends its connections."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, gate: _Gate) -> None:
        self._runner = runner
        self._server = server
        self._gate = gate

    @property
    def port(self) -> int:
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        """The connections being served now."""
        return self._gate.open

    async def close(self) -> None:
        self._server.close()
        await self._runner.cleanup()
        await self._server.wait_closed()


async def start_api(
    app: web.Application,
    config: ExportConfig,
    host: str | None,
    port: int,
    *,
    handle_signals: bool = False,
) -> ExportServer:
    """Listen on ``host:port`` (0: any free port) with ``config``'s connection limits."""
    runner = web.AppRunner(app, handle_signals=handle_signals, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    manager = runner.server
    assert manager is not None
    loop = asyncio.get_running_loop()
    gate = _Gate(config.max_connections)
    handler_args = _handler_args(config)

    def connection() -> _Connection:
        return _Connection(
            manager,
            gate=gate,
            header_timeout_s=config.header_timeout_s,
            loop=loop,
            **handler_args,
        )

    try:
        server = await loop.create_server(connection, host or None, port)
    except BaseException:
        await runner.cleanup()
        raise
    return ExportServer(runner, server, gate)


def run_api(
    app: web.Application | Awaitable[web.Application],
    config: ExportConfig,
    *,
    host: str | None,
    port: int,
) -> None:
    """Serve until SIGINT or SIGTERM, then give requests in flight time to finish."""

    async def serve() -> None:
        application = app if isinstance(app, web.Application) else await app
        server = await start_api(application, config, host, port, handle_signals=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    with contextlib.suppress(web.GracefulExit, KeyboardInterrupt):
        asyncio.run(serve())

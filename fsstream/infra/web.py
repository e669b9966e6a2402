"""The web endpoints every worker serves: ``/health`` and Prometheus ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from fsstream import metrics
from fsstream.settings import Settings


async def serve(settings: Settings, health: Callable[[], dict[str, Any]]) -> web.AppRunner:
    """Serve ``/health`` (what ``health()`` returns, as JSON) and ``/metrics`` on the web port."""

    async def health_page(_: web.Request) -> web.Response:
        return web.json_response(health())

    async def metrics_page(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/health", health_page)
    app.router.add_get("/metrics", metrics_page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    return runner

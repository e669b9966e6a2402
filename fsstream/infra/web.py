"""The web endpoints every worker serves: ``/health`` and Prometheus ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from fsstream import metrics
from fsstream.settings import Settings


async def serve(settings: Settings, health: Callable[[], dict[str, Any]]) -> web.AppRunner:
    """Serve ``/health`` (what ``health()`` returns, as JSON) and ``/metrics`` on the web port;
    prometheus_client's handler negotiates the exposition format and compression."""

    async def health_page(_: web.Request) -> web.Response:
        return web.json_response(health())

    app = web.Application()
    app.router.add_get("/health", health_page)
    app.router.add_get("/metrics", make_aiohttp_handler(metrics.REGISTRY))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.web_host, settings.web_port).start()
    return runner

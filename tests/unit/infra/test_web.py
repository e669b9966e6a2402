"""The worker's web endpoints, served on a loopback port without any broker."""

from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from fsstream.devtools.localkafka import free_port
from fsstream.devtools.processes import metric_value
from fsstream.infra.web import serve
from fsstream.metrics import EVENTS_IN
from fsstream.settings import Settings


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    settings = Settings(web_host="127.0.0.1", web_port=free_port())
    runner = await serve(settings, lambda: {"status": "ok", "assigned": ["fs.raw/0"]})
    try:
        yield f"http://127.0.0.1:{settings.web_port}"
    finally:
        await runner.cleanup()


async def test_health_is_what_the_worker_reports(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok", "assigned": ["fs.raw/0"]}


async def test_metrics_are_prometheus_text_by_default(base_url: str) -> None:
    EVENTS_IN.inc(3)
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4
        text = await response.text()
    assert "# TYPE fsstream_events_in_total counter" in text
    assert metric_value(text, "fsstream_events_in_total") >= 3
    assert "# TYPE fsstream_enrich_paths_too_long_total counter" in text


async def test_metrics_negotiate_openmetrics_and_compression(base_url: str) -> None:
    headers = {"Accept": "application/openmetrics-text", "Accept-Encoding": "gzip"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{base_url}/metrics", headers=headers) as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"] == OPENMETRICS
        assert response.headers["Content-Encoding"] == "gzip"
        text = await response.text()
    assert "# TYPE fsstream_events_in counter" in text
    assert text.endswith("# EOF\n")


async def test_no_other_page(base_url: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/") as response:
        assert response.status == 404

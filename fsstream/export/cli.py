"""``fsstream export``: build Data Export bundles and serve the v1 export API."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import click

from fsstream.export.config import ExportConfig, parse_duration_ms
from fsstream.settings import Settings, settings_from


def _settings(ctx: click.Context) -> Settings:
    from fsstream.infra.runtime import redact_output

    settings = settings_from(ctx.obj or {})
    redact_output(settings)
    return settings


def _duration(_: click.Context, __: click.Parameter, value: str) -> int:
    try:
        return parse_duration_ms(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


def _optional_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return None if value is None else _duration(ctx, param, value)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _moment(_: click.Context, __: click.Parameter, value: str | None) -> int | None:
    """A time given as a UTC date, an ISO 8601 date-time or unix seconds, in ms."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text) * 1000
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise click.BadParameter(
            f"{value!r} is not a date, an ISO 8601 date-time or unix seconds"
        ) from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _config(settings: Settings, **overrides: Any) -> ExportConfig:
    try:
        return ExportConfig.from_settings(settings, **overrides)
    except ValueError as error:
        raise click.BadParameter(str(error)) from error


@click.group("export")
def export() -> None:
    """Data Export bundles of the warehouse and the v1 export API that serves them."""


@export.command("build")
@click.option(
    "--period",
    "period_ms",
    callback=_optional_duration,
    help="Bundle length: 30m to 24h, dividing a day (e.g. 30m, 6h, 24h, or seconds);"
    " default FSSTREAM_EXPORT_PERIOD_S.",
)
@click.option(
    "--delay",
    "delay_ms",
    callback=_optional_duration,
    help="How long after its period a bundle becomes available; default FSSTREAM_EXPORT_DELAY_S.",
)
@click.option(
    "--from", "start_ms", callback=_moment, help="Build the periods from here (UTC date/time)."
)
@click.option(
    "--to", "stop_ms", callback=_moment, help="... up to here (default: the last ended period)."
)
@click.option("--limit", type=click.IntRange(min=1), help="Build at most this many due bundles.")
@click.option(
    "--every",
    "every_ms",
    callback=_optional_duration,
    help="Keep running: build the due bundles again at this interval (e.g. 5m).",
)
@click.pass_context
def build(
    ctx: click.Context,
    period_ms: int | None,
    delay_ms: int | None,
    start_ms: int | None,
    stop_ms: int | None,
    limit: int | None,
    every_ms: int | None,
) -> None:
    """Build bundles into <warehouse>/fullstory_<org>/exports/bundles/.

    With --from, (re)build the periods of that range now, whatever the availability
    delay, but only periods that have ended. Without it, build every bundle that is
    due and not built yet: on a new export from the first bundle that can hold a row
    of the warehouse, events older than its first ingested hour included; with --every
    too, keep doing so, as a process of its own beside the workers.
    """
    from fsstream.export.bundles import BuiltBundle, build_bundles, build_due
    from fsstream.infra.object_store import open_store

    settings = _settings(ctx)
    overrides = {"period_ms": period_ms, "availability_delay_ms": delay_ms}
    config = _config(settings, **{k: v for k, v in overrides.items() if v is not None})
    if start_ms is None and stop_ms is not None:
        raise click.UsageError("--to needs --from")
    if start_ms is not None and every_ms is not None:
        raise click.UsageError("--every builds the due bundles; it does not go with --from")

    def report(built: list[BuiltBundle]) -> None:
        for bundle in built:
            start = datetime.fromtimestamp(bundle.period.start_ms / 1000, UTC).isoformat()
            click.echo(
                f"{bundle.period.id}  {start}  {bundle.events:>9} events  {bundle.size:>11} B"
            )
        click.echo(f"{len(built)} bundle(s) built", err=True)

    async def run() -> None:
        store = open_store(settings)
        try:
            if start_ms is not None:
                now_ms = _now_ms()
                stop = stop_ms if stop_ms is not None else now_ms - now_ms % config.period_ms
                report(await build_bundles(store, config, start_ms=start_ms, stop_ms=stop))
                return
            while True:
                report(await build_due(store, config, _now_ms(), limit=limit))
                if every_ms is None:
                    return
                await asyncio.sleep(every_ms / 1000)
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except ValueError as error:
        raise click.ClickException(str(error)) from error


@export.command("serve")
@click.option("--host", help="Default: FSSTREAM_WEB_HOST.")
@click.option("--port", type=int, help="Default: FSSTREAM_EXPORT_PORT.")
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    help="An accepted API key; repeat for several. Prefer FSSTREAM_EXPORT_API_KEYS "
    "(keys separated by commas) so keys stay out of the process list.",
)
@click.option(
    "--integer-ids",
    is_flag=True,
    default=None,
    help="List bundle Ids as JSON numbers, for clients that decode them as integers"
    " (default: FSSTREAM_EXPORT_INTEGER_IDS).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str | None,
    port: int | None,
    api_keys: tuple[str, ...],
    integer_ids: bool | None,
) -> None:
    """Serve GET /api/v1/export/list and /api/v1/export/get over the stored bundles."""
    from aiohttp import web

    from fsstream.export.api import make_app, run_api
    from fsstream.infra.object_store import open_store

    settings = _settings(ctx)
    keys = tuple(key for value in api_keys for key in value.replace(",", " ").split())
    keys = keys or settings.export_keys
    if not keys:
        raise click.UsageError("no API key: set FSSTREAM_EXPORT_API_KEYS or pass --api-key")
    host = host or settings.web_host
    port = port if port is not None else settings.export_port
    overrides: dict[str, Any] = {"api_keys": keys}
    if integer_ids is not None:
        overrides["integer_ids"] = integer_ids
    config = _config(settings, **overrides)

    async def application() -> web.Application:
        store = open_store(settings)
        app = make_app(store, config)

        async def close_store(_: web.Application) -> None:
            await store.close()

        app.on_cleanup.append(close_store)
        return app

    click.echo(f"export API on http://{host}:{port}/api/v1/export/ ({len(keys)} key(s))")
    run_api(application(), config, host=host, port=port)

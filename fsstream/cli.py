"""The ``fsstream`` console script."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO

import click
import orjson
from aiokafka.errors import AuthenticationFailedError, KafkaConnectionError
from pydantic import ValidationError

from fsstream.export.cli import export
from fsstream.settings import Settings, settings_from, settings_problems


def _settings(ctx: click.Context, **extra: Any) -> Settings:
    from fsstream.infra.runtime import redact_output

    settings = settings_from({**ctx.obj, **extra})
    redact_output(settings)
    return settings


class _Main(click.Group):
    """The command group; bad settings and refused connections end in one clear message.

    Neither message quotes a setting's value: a validation error lists the variables and
    what is wrong with each, a connection error the brokers, protocol and user.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ValidationError as error:
            if error.title != Settings.__name__:
                raise
            problems = "\n  ".join(settings_problems(error))
            raise click.ClickException(f"invalid settings:\n  {problems}") from None
        except (KafkaConnectionError, AuthenticationFailedError) as error:
            raise click.ClickException(_connection_failure(ctx, error)) from None


def _connection_failure(ctx: click.Context, error: Exception) -> str:
    from fsstream.infra import kafka_clients
    from fsstream.infra.runtime import Redactor

    settings = settings_from(ctx.obj or {})
    try:
        reason = asyncio.run(kafka_clients.connection_problem(settings)) or str(error)
    except Exception as probe_error:
        reason = f"{error}; {probe_error}"
    where = kafka_clients.describe_connection(settings)
    return Redactor(settings.secret_values())(f"no connection to Kafka at {where}: {reason}")


def _echo_json(obj: object) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj, default=str) + b"\n")
    sys.stdout.flush()


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--broker", "broker_url", help="Kafka brokers (overrides FSSTREAM_BROKER_URL).")
@click.option("--warehouse", "warehouse_url", help="file://DIR or s3://BUCKET/PREFIX.")
@click.pass_context
def main(ctx: click.Context, broker_url: str | None, warehouse_url: str | None) -> None:
    """fsstream: ordered, enriched, correctable capture events on Kafka and S3."""
    ctx.obj = {"broker_url": broker_url, "warehouse_url": warehouse_url}
    if ctx.invoked_subcommand != "worker":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        # Client retries during topic creation and leader moves are expected, not news.
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
        from fsstream.infra.runtime import calm_transient_kafka_errors

        calm_transient_kafka_errors()


@main.command()
@click.pass_context
def config(ctx: click.Context) -> None:
    """Print the effective settings (secrets masked)."""
    _echo_json(_settings(ctx).public_view())


@main.command()
@click.argument("role", type=click.Choice(["reorder", "sink"]))
@click.option("--web-port", type=int, help="Overrides FSSTREAM_WEB_PORT.")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Overrides FSSTREAM_DATA_DIR.")
@click.pass_context
def worker(ctx: click.Context, role: str, web_port: int | None, data_dir: Path | None) -> None:
    """Run a worker of one role: reorder (raw → events) or sink (events → warehouse)."""
    settings = _settings(ctx, web_port=web_port, data_dir=data_dir)
    if role == "sink":
        from fsstream.sink.service import run_sink

        run_sink(settings)
        return
    from fsstream.reorder.worker import run_reorder

    run_reorder(settings)


@main.group()
def topics() -> None:
    """Manage the topics of the product contract."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create the raw, definitions, events and DLQ topics (harmless when they exist)."""
    from fsstream.contract.topics import create_topics

    for spec, status in asyncio.run(create_topics(_settings(ctx))):
        configs = ",".join(f"{k}={v}" for k, v in spec.configs.items())
        click.echo(f"{status:8} {spec.name} partitions={spec.partitions} {configs}")


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
@click.option("--batch-size", default=20, show_default=True, help="Events per raw record.")
@click.option("--ingested-time", type=int, help="Ingested time in ms for lines without one.")
@click.option(
    "--send-refused",
    is_flag=True,
    help="Send events the reorder worker would refuse too (they go to the DLQ).",
)
@click.pass_context
def produce(
    ctx: click.Context,
    source: BinaryIO,
    batch_size: int,
    ingested_time: int | None,
    send_refused: bool,
) -> None:
    """Produce NDJSON events (file or stdin) to the raw topic, batched per view.

    Each event is checked as the reorder worker checks it, and against the raw topic's
    retention; refused events are reported by reason and not sent (unless
    --send-refused), and the exit status is 1.
    """
    from fsstream.commands.produce import (
        NdjsonError,
        group_batches,
        now_ms,
        parse_ndjson,
        produce_batches,
        refusal_report,
        screen,
        within,
    )
    from fsstream.reorder.agent import raw_limits

    settings = _settings(ctx)
    try:
        events = parse_ndjson(source, ingested_time if ingested_time is not None else now_ms())
    except NdjsonError as exc:
        raise click.ClickException(f"nothing produced; malformed input:\n{exc}") from exc
    screened = screen(
        events,
        raw_limits(settings),
        settings.max_record_bytes,
        oldest_kept_ms=now_ms() - int(settings.raw_retention_s * 1000),
    )
    batches = within(
        group_batches(events if send_refused else screened.accepted, batch_size),
        settings.max_record_bytes,
    )
    records, count = asyncio.run(produce_batches(settings, batches))
    click.echo(f"produced {count} events in {records} records to {settings.topic_raw}", err=True)
    if screened.refused:
        click.echo(refusal_report(screened, settings, sent_anyway=send_refused), err=True)
        ctx.exit(1)


@main.command()
@click.argument("topic")
@click.option("--follow", "-f", is_flag=True, help="Keep reading new records.")
@click.option("--max", "limit", type=int, help="Stop after this many records.")
@click.pass_context
def tail(ctx: click.Context, topic: str, follow: bool, limit: int | None) -> None:
    """Print a topic's records from the beginning as JSON lines, tombstones included.

    TOPIC is a topic name or one of raw, definitions, events, dlq.
    """
    from fsstream.commands.tail import describe_record, read_topic

    settings = _settings(ctx)
    aliases = {
        "raw": settings.topic_raw,
        "definitions": settings.topic_definitions,
        "events": settings.topic_events,
        "dlq": settings.topic_dlq,
    }

    async def run() -> None:
        async for record in read_topic(
            settings, aliases.get(topic, topic), follow=follow, limit=limit
        ):
            _echo_json(describe_record(record))

    try:
        asyncio.run(run())
    except LookupError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option(
    "--to", "target", required=True, help="Warehouse to write: file://DIR or s3://BUCKET/PREFIX."
)
@click.pass_context
def replay(ctx: click.Context, target: str) -> None:
    """Rebuild a warehouse from the compacted events topic, idempotently."""
    from fsstream.commands.replay import replay as run_replay

    settings = _settings(ctx, warehouse_url=target)
    with click.progressbar(length=1, label="replaying", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.length = max(total, 1)
            bar.update(done - bar.pos)

        try:
            result = asyncio.run(run_replay(settings, progress))
        except LookupError as exc:
            raise click.ClickException(str(exc)) from exc
    click.echo(
        f"replayed {result.records} records ({result.tombstones} tombstones) into {target}: "
        f"{result.rows} rows in {result.files} files"
    )


@main.group()
def definitions() -> None:
    """Element, event and page definitions."""


@definitions.command("load")
@click.argument("source", type=click.File("rb"), default="-")
@click.pass_context
def definitions_load(ctx: click.Context, source: BinaryIO) -> None:
    """Check definitions (JSON array, object or NDJSON) and produce them all, or none."""
    from fsstream.commands.load_definitions import DefinitionFileError, load, parse_file

    settings = _settings(ctx)
    try:
        count = asyncio.run(load(settings, parse_file(source.read())))
    except DefinitionFileError as exc:
        raise click.ClickException(f"nothing produced:\n{exc}") from exc
    click.echo(f"produced {count} definitions to {settings.topic_definitions}", err=True)


@main.group()
def kafka() -> None:
    """The local single-node Kafka broker (fetched from Maven Central)."""


@kafka.command("fetch")
def kafka_fetch() -> None:
    """Fetch the broker's jars into the cache (no-op when present)."""
    from fsstream.devtools.localkafka import fetch_broker

    click.echo(str(fetch_broker()))


@kafka.command("start")
def kafka_start() -> None:
    """Run a local broker in the foreground until interrupted."""
    import signal

    from fsstream.devtools.localkafka import LocalKafka

    broker = LocalKafka().start()
    click.echo(f"Kafka ready at {broker.bootstrap} (pid {broker.pid}); Ctrl-C stops it")
    click.echo(f"export FSSTREAM_BROKER_URL=kafka://{broker.bootstrap}")
    stop = False

    def _stop(_signal: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()


@main.command()
@click.option("--sessions", default=3000, show_default=True)
@click.option("--seed", default=7, show_default=True)
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True
)
@click.pass_context
def demo(ctx: click.Context, sessions: int, seed: int, workdir: Path) -> None:
    """Run fsstream end to end on a local broker with generated traffic."""
    from fsstream.devtools.demo import run_demo

    run_demo(ctx.obj, sessions=sessions, seed=seed, workdir=workdir)


@main.command()
@click.option("--events", default=1_000_000, show_default=True, help="Events per input shape.")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["batched", "single"]),
    default=["batched", "single"],
    show_default=True,
)
@click.option("--rate", default=2_000, show_default=True, help="Live events/s for latency.")
@click.option("--live-seconds", default=20, show_default=True)
@click.option(
    "--workdir", type=click.Path(path_type=Path), default=Path("bench-output"), show_default=True
)
@click.pass_context
def bench(
    ctx: click.Context,
    events: int,
    modes: tuple[str, ...],
    rate: int,
    live_seconds: int,
    workdir: Path,
) -> None:
    """Measure CPU per million events, throughput, memory, latency and parquet size."""
    from fsstream.devtools.bench import run_bench

    run_bench(
        ctx.obj,
        events=events,
        rate=rate,
        live_seconds=live_seconds,
        workdir=workdir,
        modes=list(modes),
    )


main.add_command(export)

if __name__ == "__main__":
    main()

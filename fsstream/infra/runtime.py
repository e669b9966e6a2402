"""Process set-up shared by the long-running workers: logging and the garbage collector.

No configured secret ever reaches a log line or a traceback a process prints: the client
libraries' wire-level debug output (which carries SASL tokens and signed S3 requests)
stays off whatever the worker's level, and everything written through the root logger's
handlers or the exception hooks has each secret replaced by ``MASK``.
"""

from __future__ import annotations

import gc
import json
import logging
import re
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Iterable
from types import TracebackType

from fsstream.settings import Settings

GC_YOUNG_THRESHOLD = 50_000
"""Container allocations between young collections (CPython's default is 700).

A worker allocates a few dicts and tuples per event, nearly all freed by reference
counting; with the default, the collector ran every few records and its scans of the
long-lived view state cost about a third of the reorder worker's CPU.
"""

MASK = "**********"

WIRE_LOGGERS = {
    "aiokafka": logging.WARNING,
    "botocore": logging.INFO,
    "aiobotocore": logging.INFO,
    "boto3": logging.INFO,
    "s3transfer": logging.INFO,
    "urllib3": logging.INFO,
}
"""The least severe level each client library logs at: below it, they log requests
with their credentials (aiokafka's SASL handshake, botocore's signed headers)."""


STARTUP_GRACE_S = 60.0
"""How long after start a Kafka client's retriable start-up answers are expected."""

TRANSIENT_KAFKA_ERRORS = (
    "GroupCoordinatorNotAvailableError",
    "NotCoordinatorForGroupError",
    "CoordinatorLoadInProgressError",
    "NotLeaderForPartitionError",
    "LeaderNotAvailableError",
)
"""Broker answers that mean a group coordinator or a partition leader is still being
elected, as right after a broker, a topic or a group is created; aiokafka retries them."""


class TransientKafkaErrors(logging.Filter):
    """aiokafka logs the retriable answers above at ERROR and then retries: within the
    start-up grace they are expected and dropped; later they are warnings, since they
    only persist while the cluster itself is unwell."""

    def __init__(self, grace_s: float = STARTUP_GRACE_S) -> None:
        super().__init__()
        self.until = time.monotonic() + grace_s

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.WARNING or not record.name.startswith("aiokafka"):
            return True
        message = record.getMessage()
        if not any(name in message for name in TRANSIENT_KAFKA_ERRORS):
            return True
        if time.monotonic() < self.until:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def calm_transient_kafka_errors() -> None:
    """Install ``TransientKafkaErrors`` on the root logger's handlers (once each)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, TransientKafkaErrors) for f in handler.filters):
            handler.addFilter(TransientKafkaErrors())


class Redactor:
    """Replaces every secret in a text, also as it appears quoted, escaped or URL-encoded."""

    def __init__(self, secrets: Iterable[str]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret:
                forms |= {
                    secret,
                    repr(secret)[1:-1],
                    repr(secret.encode())[2:-1],
                    json.dumps(secret)[1:-1],
                    urllib.parse.quote(secret, safe=""),
                    urllib.parse.quote_plus(secret),
                }
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        return self._pattern.sub(MASK, text) if self._pattern is not None else text


class RedactingFormatter(logging.Formatter):
    """Another formatter's output with the secrets masked, tracebacks included."""

    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self.inner = inner
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(self.inner.format(record))


def redact_output(settings: Settings) -> Redactor:
    """Mask the secrets of ``settings`` in the root logger's handlers and uncaught errors.

    Safe to call again: a handler added since (``logging.basicConfig``) is covered too.
    """
    redact = Redactor(settings.secret_values())
    for handler in logging.getLogger().handlers:
        inner = handler.formatter
        if isinstance(inner, RedactingFormatter):
            inner = inner.inner
        handler.setFormatter(RedactingFormatter(inner or logging.Formatter(), redact))

    def print_uncaught(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
    ) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        sys.stderr.write(redact(text))

    def print_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            print_uncaught(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = print_uncaught
    threading.excepthook = print_uncaught_in_thread
    return redact


def quiet_wire_loggers() -> None:
    """Keep the client libraries' request-level debug output off (see ``WIRE_LOGGERS``)."""
    root = logging.getLogger().getEffectiveLevel()
    for name, least in WIRE_LOGGERS.items():
        logging.getLogger(name).setLevel(max(least, root))


def prepare_worker(settings: Settings) -> None:
    """Configure logging and the garbage collector of a worker process."""
    logging.basicConfig(
        level=settings.log_level.upper().replace("WARN", "WARNING"),
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    )
    quiet_wire_loggers()
    calm_transient_kafka_errors()
    redact_output(settings)
    tune_collector()


def tune_collector() -> None:
    """Freeze what is loaded so far, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)

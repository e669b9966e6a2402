"""Crash points: a worker that SIGKILLs itself at a named step, for resilience testing.

The windows that matter are between a step's effects (a send and its commit, an upload
and its record); a kill from outside rarely lands in them, a crash point always does.
Set with ``CRASH_POINT=POINT:N``: the Nth time the worker reaches POINT it dies.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)


class CrashPoints:
    """SIGKILL this process the Nth time it reaches the configured point."""

    def __init__(self, spec: str | None) -> None:
        self.point, _, count = (spec or "").partition(":")
        self.remaining = int(count) if count else 0

    def reached(self, point: str) -> None:
        if self.remaining and point == self.point:
            self.remaining -= 1
            if not self.remaining:
                log.warning("crash point %s reached: killing this process", point)
                logging.shutdown()
                os.kill(os.getpid(), signal.SIGKILL)

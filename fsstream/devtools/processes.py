"""Worker processes started and supervised from Python (demo, bench, failover checks)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from fsstream.settings import Settings


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``, in a
    Prometheus exposition (0 when there are none)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def settings_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child ``fsstream`` process use ``settings``."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if not k.startswith("FSSTREAM_")
    }
    for key, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"FSSTREAM_{key.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``fsstream worker ROLE`` as a child process, with its own web port and data dir."""

    def __init__(self, settings: Settings, role: str, log_path: Path) -> None:
        self.settings = settings
        self.role = role
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fsstream", "worker", self.role],
                env=settings_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def health(self) -> dict[str, Any] | None:
        url = f"http://{self.settings.web_host}:{self.settings.web_port}/health"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except (OSError, ValueError):
            return None

    def metrics(self) -> str:
        url = f"http://{self.settings.web_host}:{self.settings.web_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as response:
            text: str = response.read().decode()
            return text

    def metric(self, name: str, **labels: str) -> float:
        """The worker's current value of a metric: see ``metric_value``."""
        return metric_value(self.metrics(), name, **labels)

    def wait_assigned(self, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the worker serves health and owns at least one partition."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.role} worker exited with {self.process.returncode}; see {self.log_path}"
                )
            health = self.health()
            if health and health.get("status") == "ok" and health.get("assigned"):
                return health
            time.sleep(0.2)
        raise TimeoutError(f"{self.role} worker not ready in {timeout}s; see {self.log_path}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash a worker must survive."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not stop in time."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()

"""The whole pipeline on one machine: local broker, optional local S3 server, both workers."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fsstream.devtools.localkafka import LocalKafka, free_port
from fsstream.devtools.processes import WorkerProcess
from fsstream.settings import Settings


@dataclass
class EmbeddedPipeline:
    """Starts what a deployment would run, on loopback, and stops it all on exit."""

    workdir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    s3: bool = False
    kafka: LocalKafka | None = None
    settings: Settings | None = None
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start_broker(self) -> Settings:
        """Start the broker (and S3 server) and return the settings that point at them."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kafka = self._stack.enter_context(LocalKafka())
        values: dict[str, Any] = {
            "warehouse_url": f"file://{(self.workdir / 'warehouse').resolve()}",
            **self.overrides,
            "broker_url": f"kafka://{self.kafka.bootstrap}",
            "data_dir": self.workdir / "state",
        }
        if self.s3:
            values.update(self._start_s3())
        self.settings = Settings(**values)
        return self.settings

    def _start_s3(self) -> dict[str, Any]:
        import logging

        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        self._stack.callback(server.stop)
        endpoint = f"http://127.0.0.1:{port}"
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        ).create_bucket(Bucket="warehouse")
        return {
            "warehouse_url": "s3://warehouse/fsstream",
            "s3_endpoint_url": endpoint,
            "s3_access_key_id": "local",
            "s3_secret_access_key": "local",
        }

    def start_worker(self, role: str, name: str | None = None) -> WorkerProcess:
        """Start one worker process of ``role`` with its own port and state directory."""
        assert self.settings is not None
        name = name or role
        settings = self.settings.model_copy(
            update={"web_port": free_port(), "data_dir": self.workdir / "state" / name}
        )
        worker = WorkerProcess(settings, role, self.workdir / "logs" / f"{name}.log").start()
        self.workers[name] = worker
        self._stack.callback(worker.stop)
        return worker

    def metric(self, name: str) -> float:
        """A metric summed over every running worker."""
        total = 0.0
        for worker in self.workers.values():
            if worker.alive():
                with contextlib.suppress(OSError):
                    total += worker.metric(name)
        return total

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> EmbeddedPipeline:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

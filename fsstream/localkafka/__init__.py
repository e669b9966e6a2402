"""A single-node Apache Kafka broker (KRaft) on loopback, without Docker.

On first use the broker's jars are copied from Maven Central by Maven into a
cache directory that later runs reuse; each broker then formats its own
temporary storage, listens on free loopback ports and is stopped with its
owner (context exit, ``stop()``, or the process's exit).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from types import TracebackType

KAFKA_VERSION = "4.2.0"
READY_LINE = "Transition from STARTING to STARTED"


def new_cluster_id() -> str:
    """A random KRaft cluster id, never starting with "-" (the tool would take it for an
    option), as Kafka's own ``Uuid.randomUuid`` ensures."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched or started; the message says why."""


def cache_dir() -> Path:
    """Where the broker's jars are kept between runs."""
    configured = os.environ.get("FSSTREAM_CACHE_DIR")
    base = Path(configured) if configured else Path.home() / ".cache" / "fsstream"
    return base.expanduser()


def _resource(name: str) -> Path:
    return Path(str(resources.files(__name__) / name))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_broker(log: bool = True) -> Path:
    """Return the directory of the broker's jars, fetching them with Maven if needed."""
    libs = cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (mvn) is needed once to fetch the Kafka broker; install it")
    with _file_lock(libs.parent / ".lock"):
        if (libs / ".complete").exists():
            return libs
        staging = Path(tempfile.mkdtemp(prefix="libs-", dir=libs.parent))
        if log:
            print(
                f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {libs.parent} ...",
                flush=True,
            )
        started = time.monotonic()
        result = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(_resource("pom.xml")),
                f"-Dkafka.version={KAFKA_VERSION}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            raise LocalKafkaError(
                f"mvn dependency:copy-dependencies failed ({result.returncode}):\n"
                f"{result.stdout[-4000:]}{result.stderr[-4000:]}"
            )
        (staging / ".complete").write_text(KAFKA_VERSION)
        if libs.exists():
            shutil.rmtree(libs)
        staging.rename(libs)
        if log:
            print(f"fetched Kafka in {time.monotonic() - started:.1f}s", flush=True)
    return libs


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("a JDK 17+ is needed to run the local Kafka broker; install one")
    return java


class LocalKafka:
    """One broker+controller process on free loopback ports, stopped with its owner."""

    def __init__(self, *, heap: str = "1g", startup_timeout: float = 90.0) -> None:
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.port = 0
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port of the broker."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "broker.log"

    def start(self) -> LocalKafka:
        libs = fetch_broker()
        java = _java()
        self.workdir = Path(tempfile.mkdtemp(prefix="fsstream-kafka-"))
        self.port, controller_port = free_port(), free_port()
        data = self.workdir / "data"
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={data}",
                    "num.partitions=1",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "log.cleaner.backoff.ms=1000",
                    "log.segment.delete.delay.ms=1000",
                    "",
                ]
            )
        )
        classpath = f"{libs}/*"
        log4j = f"-Dlog4j2.configurationFile={_resource('log4j2.properties')}"
        cluster_id = new_cluster_id()
        fmt = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                log4j,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(config),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise LocalKafkaError(f"formatting KRaft storage failed:\n{fmt.stdout}{fmt.stderr}")
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [
                java,
                "-Xms256m",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                log4j,
                "-cp",
                classpath,
                "kafka.Kafka",
                str(config),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        atexit.register(self.stop)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalKafkaError(
                    f"broker exited with {self._process.returncode}:\n{self._log_tail()}"
                )
            if READY_LINE in self.log_path.read_text(errors="replace") and self._accepts():
                return
            time.sleep(0.1)
        self.stop()
        raise LocalKafkaError(f"broker not ready in {self.startup_timeout}s:\n{self._log_tail()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and remove its storage."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.workdir is not None and process is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

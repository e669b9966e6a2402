"""A single-node Apache Kafka broker (KRaft) on loopback, without Docker.

On first use the broker's jars are copied from Maven Central by Maven into a
cache directory that later runs reuse; each broker then formats its own
temporary storage, listens on free loopback ports and is stopped with its
owner (context exit, ``stop()``, or the process's exit).

Besides its PLAINTEXT listener, a broker can listen for SASL_PLAINTEXT (PLAIN and
SCRAM-SHA-512, each knowing the same users) and for SSL (a PEM key and certificate
chain, and optionally a CA whose client certificates it then requires), so that
authentication and encryption are exercised against a real broker.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType

KAFKA_VERSION = "4.2.0"
READY_LINE = "Transition from STARTING to STARTED"
SCRAM_ITERATIONS = 4096
"""The least the broker accepts for SCRAM-SHA-512."""
_UNSAFE_CREDENTIAL = re.compile(r'[\s"\\=,\[\];]')
"""Characters that would break the JAAS or --add-scram syntax the credentials go into."""


def new_cluster_id() -> str:
    """A random KRaft cluster id, never starting with "-" (the tool would take it for an
    option), as Kafka's own ``Uuid.randomUuid`` ensures."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


class LocalKafkaError(RuntimeError):
    """The local broker could not be fetched or started; the message says why."""


@dataclass(frozen=True)
class BrokerTls:
    """PEM files of an SSL listener.

    ``keystore`` holds the broker's unencrypted PKCS#8 private key followed by its
    certificate chain; with ``client_ca``, clients must present a certificate it signed.
    """

    keystore: Path
    client_ca: Path | None = None


def scram_credential(mechanism: str, name: str, password: str, salt: bytes) -> str:
    """A ``--add-scram`` argument holding the salted password only, never the password."""
    algorithm = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
    salted = hashlib.pbkdf2_hmac(algorithm, password.encode(), salt, SCRAM_ITERATIONS)
    return (
        f"{mechanism}=[name={name},iterations={SCRAM_ITERATIONS},"
        f'salt="{base64.b64encode(salt).decode()}",'
        f'saltedpassword="{base64.b64encode(salted).decode()}"]'
    )


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
    """One broker+controller process on free loopback ports, stopped with its owner.

    ``sasl_users`` (name → password) adds a SASL_PLAINTEXT listener where each user may
    log in with PLAIN or SCRAM-SHA-512; ``tls`` adds an SSL listener.
    """

    def __init__(
        self,
        *,
        heap: str = "1g",
        startup_timeout: float = 90.0,
        sasl_users: Mapping[str, str] | None = None,
        tls: BrokerTls | None = None,
    ) -> None:
        for name, password in (sasl_users or {}).items():
            if not name or not password or _UNSAFE_CREDENTIAL.search(name + password):
                raise ValueError(
                    "SASL user names and passwords must be non-empty and hold no"
                    ' whitespace or any of "\\=,[];'
                )
        self.heap = heap
        self.startup_timeout = startup_timeout
        self.sasl_users = dict(sasl_users or {})
        self.tls = tls
        self.port = 0
        self.sasl_port = 0
        self.ssl_port = 0
        self.workdir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """host:port of the broker's PLAINTEXT listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def sasl_bootstrap(self) -> str:
        """host:port of the SASL_PLAINTEXT listener."""
        if not self.sasl_port:
            raise LocalKafkaError("this broker has no SASL listener")
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def ssl_bootstrap(self) -> str:
        """host:port of the SSL listener."""
        if not self.ssl_port:
            raise LocalKafkaError("this broker has no SSL listener")
        return f"127.0.0.1:{self.ssl_port}"

    def _listener_config(self, controller_port: int) -> list[str]:
        listeners = {"PLAINTEXT": self.port}
        lines: list[str] = []
        if self.sasl_port:
            listeners["SASL_PLAINTEXT"] = self.sasl_port
            users = " ".join(f'user_{name}="{pw}"' for name, pw in self.sasl_users.items())
            prefix = "listener.name.sasl_plaintext"
            lines += [
                f"{prefix}.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512",
                f"{prefix}.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {users};",
                f"{prefix}.scram-sha-512.sasl.jaas.config="
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            ]
        if self.tls is not None and self.ssl_port:
            listeners["SSL"] = self.ssl_port
            lines += [
                "listener.name.ssl.ssl.keystore.type=PEM",
                f"listener.name.ssl.ssl.keystore.location={self.tls.keystore}",
            ]
            if self.tls.client_ca is not None:
                lines += [
                    "listener.name.ssl.ssl.truststore.type=PEM",
                    f"listener.name.ssl.ssl.truststore.location={self.tls.client_ca}",
                    "listener.name.ssl.ssl.client.auth=required",
                ]
        advertised = ",".join(f"{name}://127.0.0.1:{port}" for name, port in listeners.items())
        protocols = ",".join(f"{name}:{name}" for name in listeners)
        return [
            f"listeners={advertised},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners={advertised}",
            f"listener.security.protocol.map={protocols},CONTROLLER:PLAINTEXT",
            *lines,
        ]

    def _scram_arguments(self) -> list[str]:
        arguments: list[str] = []
        for name, password in self.sasl_users.items():
            credential = scram_credential("SCRAM-SHA-512", name, password, os.urandom(16))
            arguments += ["--add-scram", credential]
        return arguments

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "broker.log"

    def start(self) -> LocalKafka:
        libs = fetch_broker()
        java = _java()
        self.workdir = Path(tempfile.mkdtemp(prefix="fsstream-kafka-"))
        self.port, controller_port = free_port(), free_port()
        self.sasl_port = free_port() if self.sasl_users else 0
        self.ssl_port = free_port() if self.tls is not None else 0
        data = self.workdir / "data"
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                    *self._listener_config(controller_port),
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
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
                *self._scram_arguments(),
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

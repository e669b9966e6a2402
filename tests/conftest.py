"""Session fixtures: one real Kafka broker (KRaft, loopback) and one moto S3 server.

Tests of authentication and encryption get a second broker (``secure_kafka``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fsstream.devtools.localkafka import BrokerTls, LocalKafka, free_port
from fsstream.settings import Settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kill-suite-long",
        action="store_true",
        help="run the kill suite with more traffic and more kills (several minutes)",
    )


INFRASTRUCTURE = frozenset({"kafka", "secure_kafka", "s3_endpoint"})
"""Session fixtures that start a broker or an S3 server: a test using one is ``integration``."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/integration`` or needing a broker or S3 server, so that
    ``pytest -m "not integration"`` is the fast loop that starts nothing."""
    integration = Path(__file__).parent / "integration"
    for item in items:
        uses = INFRASTRUCTURE & set(getattr(item, "fixturenames", ()))
        if uses or integration in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def kafka() -> Iterator[LocalKafka]:
    """A broker shared by the whole session; tests keep apart by unique topic names."""
    with LocalKafka() as broker:
        yield broker


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def unique() -> str:
    """A short name part no other test uses."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def make_settings(kafka: LocalKafka, unique: str, tmp_path: Any) -> Callable[..., Settings]:
    """Settings on the session broker with this test's own topics, group and data dir."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "broker_url": f"kafka://{kafka.bootstrap}",
            "app_id": f"fsstream-{unique}",
            "topic_raw": f"raw-{unique}",
            "topic_definitions": f"definitions-{unique}",
            "topic_events": f"events-{unique}",
            "topic_dlq": f"dlq-{unique}",
            "raw_partitions": 4,
            "events_partitions": 4,
            "data_dir": tmp_path / "data",
            "warehouse_url": f"file://{tmp_path / 'warehouse'}",
            "web_port": free_port(),
        }
        values.update(overrides)
        return Settings(**values)

    return make


@dataclass(frozen=True)
class SecureKafka:
    """A second broker with SASL_PLAINTEXT and SSL listeners, and what clients need for them.

    Its user logs in with PLAIN or SCRAM-SHA-512; its SSL listener requires a client
    certificate signed by the test CA, whose key is encrypted with ``client_key_password``.
    """

    broker: LocalKafka
    username: str
    password: str
    cafile: Path
    client_certfile: Path
    client_keyfile: Path
    client_key_password: str

    def sasl_settings(self, mechanism: str, **overrides: Any) -> dict[str, Any]:
        """Settings values for the SASL_PLAINTEXT listener."""
        return {
            "broker_url": f"kafka://{self.broker.sasl_bootstrap}",
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": mechanism,
            "sasl_username": self.username,
            "sasl_password": self.password,
            **overrides,
        }

    def ssl_settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings values for the SSL listener, client certificate included."""
        return {
            "broker_url": f"kafka://{self.broker.ssl_bootstrap}",
            "security_protocol": "SSL",
            "ssl_cafile": self.cafile,
            "ssl_certfile": self.client_certfile,
            "ssl_keyfile": self.client_keyfile,
            "ssl_keyfile_password": self.client_key_password,
            **overrides,
        }


def make_test_pki(directory: Path, key_password: str) -> dict[str, Path]:
    """A CA, a broker certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(
        subject: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name | None = None,
        issuer_key: ec.EllipticCurvePrivateKey | None = None,
        san: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key or key, hashes.SHA256())

    def pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = certificate("fsstream test CA", ca_key)
    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = certificate(
        "localhost",
        broker_key,
        ca.subject,
        ca_key,
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = certificate("fsstream test client", client_key, ca.subject, ca_key)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "broker", "client", "client-key")}
    paths["ca"].write_bytes(pem(ca))
    paths["broker"].write_bytes(
        broker_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + pem(broker)
        + pem(ca)
    )
    paths["client"].write_bytes(pem(client))
    paths["client-key"].write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(key_password.encode()),
        )
    )
    return paths


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureKafka]:
    """A broker with SASL and SSL listeners, started only for the tests that use it."""
    import secrets

    directory = tmp_path_factory.mktemp("secure-kafka")
    password, key_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pki = make_test_pki(directory, key_password)
    username = f"svc-{secrets.token_hex(4)}"
    tls = BrokerTls(keystore=pki["broker"], client_ca=pki["ca"])
    with LocalKafka(heap="512m", sasl_users={username: password}, tls=tls) as broker:
        yield SecureKafka(
            broker=broker,
            username=username,
            password=password,
            cafile=pki["ca"],
            client_certfile=pki["client"],
            client_keyfile=pki["client-key"],
            client_key_password=key_password,
        )

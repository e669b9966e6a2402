import base64
import uuid

import pytest

from fsstream.devtools import localkafka


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes to "-" first in URL-safe base64, which the storage tool reads as an option.
    drawn = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" * 16)])
    monkeypatch.setattr(localkafka.uuid, "uuid4", lambda: next(drawn))
    cluster_id = localkafka.new_cluster_id()
    assert cluster_id == base64.urlsafe_b64encode(b"\x01" * 16).decode().rstrip("=")
    assert len(cluster_id) == 22

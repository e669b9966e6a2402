import io

import pytest
from fastavro import schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from fsstream import codec

RAW_EVENT = {
    "device_id": 42,
    "session_id": 7,
    "view_id": None,
    "event_time": "2024-01-01T00:00:00.123Z",
    "event_type": "click",
    "event_properties": '{"target":{"raw_selector":"body > a"}}',
    "source_type": "web",
    "source_properties": "{}",
}
EVENT = {
    "event_id": "abc",
    "event_time": "2024-01-01T00:00:00.123000Z",
    "processed_time": "2024-01-01T00:00:06.000000Z",
    "updated_time": None,
    "device_id": 42,
    "session_id": None,
    "view_id": 3,
    "event_type": None,
    "event_properties": "{}",
    "source_type": "web",
    "source_properties": "{}",
    "ingested_time": 1704067200123,
}
DEFINITION = {
    "kind": "page",
    "id": "p1",
    "name": "Checkout",
    "description": None,
    "state": "active",
    "rule": '{"url": "/checkout"}',
    "created_time": 1,
    "created_by": "ana",
    "modified_time": 2,
    "modified_by": None,
    "fs_link_id": "link",
    "is_user_defined": True,
}


@pytest.mark.parametrize(
    ("name", "record"),
    [
        (codec.RAW_EVENT, RAW_EVENT),
        (codec.RAW_EVENT_BATCH, {"ingested_time": 1704067200000, "events": [RAW_EVENT] * 3}),
        (codec.EVENT, EVENT),
        (codec.DEFINITION, DEFINITION),
    ],
)
def test_round_trip(name: str, record: dict) -> None:
    value = codec.encode(name, record)
    assert value[:2] == b"\xc3\x01"
    assert value[2:10] == codec.SCHEMAS[name].fingerprint
    assert codec.decode(value, expected=name) == record


def test_fingerprint_is_the_avro_spec_crc64_little_endian() -> None:
    # The Avro spec's CRC-64-AVRO, computed here independently of fastavro.
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)

    def crc64(data: bytes) -> int:
        fp = empty
        for byte in data:
            fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
        return fp

    from fastavro.schema import to_parsing_canonical_form

    for schema in codec.SCHEMAS.values():
        canonical = to_parsing_canonical_form(schema.parsed).encode()
        assert schema.fingerprint == crc64(canonical).to_bytes(8, "little")


def test_unknown_fingerprint_is_rejected() -> None:
    value = bytearray(codec.encode(codec.EVENT, EVENT))
    value[2:10] = b"\x00" * 8
    with pytest.raises(
        codec.UnknownSchemaError, match="unknown schema fingerprint 0000000000000000"
    ):
        codec.decode(bytes(value))


def test_other_known_schema_is_rejected_when_one_is_expected() -> None:
    value = codec.encode(codec.EVENT, EVENT)
    with pytest.raises(codec.UnknownSchemaError, match="RawEventBatch was expected"):
        codec.decode(value, expected=codec.RAW_EVENT_BATCH)


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_truncated_body_is_rejected(cut: int) -> None:
    value = codec.encode(codec.RAW_EVENT_BATCH, {"ingested_time": 1, "events": [RAW_EVENT]})
    with pytest.raises(codec.CorruptBodyError, match=r"corrupt io\.fsstream\.RawEventBatch body"):
        codec.decode(value[:-cut])


def test_trailing_bytes_are_rejected() -> None:
    value = codec.encode(codec.EVENT, EVENT) + b"\x00\x01"
    with pytest.raises(codec.CorruptBodyError, match="2 trailing bytes"):
        codec.decode(value)


@pytest.mark.parametrize(
    "value", [b"", b"{}", b"\xc3", b"\xc3\x02" + b"\x00" * 20, b"garbage bytes"]
)
def test_values_without_the_marker_are_rejected(value: bytes) -> None:
    with pytest.raises(codec.NotSingleObjectError, match="not an Avro single-object value"):
        codec.decode(value)


def test_body_of_a_different_schema_under_a_known_fingerprint_is_rejected() -> None:
    buf = io.BytesIO()
    schemaless_writer(
        buf,
        {"type": "record", "name": "X", "fields": [{"name": "s", "type": "string"}]},
        {"s": "x" * 40},
    )
    value = codec.SCHEMAS[codec.RAW_EVENT_BATCH].header + b"\x7f" + buf.getvalue()
    with pytest.raises(codec.CodecError):
        codec.decode(value)


@given(
    st.fixed_dictionaries(
        {
            "event_id": st.text(),
            "event_time": st.none() | st.text(),
            "processed_time": st.text(),
            "updated_time": st.none() | st.integers(-(2**63), 2**63 - 1),
            "device_id": st.integers(-(2**63), 2**63 - 1),
            "session_id": st.none() | st.integers(-(2**63), 2**63 - 1),
            "view_id": st.none() | st.integers(0, 2**40),
            "event_type": st.none() | st.text(max_size=20),
            "event_properties": st.text(),
            "source_type": st.text(max_size=10),
            "source_properties": st.text(),
            "ingested_time": st.integers(0, 2**50),
        }
    )
)
def test_the_fast_event_writer_writes_what_fastavro_writes(record: dict) -> None:
    schema = codec.SCHEMAS[codec.EVENT]
    assert schema.writer is not None
    buf = io.BytesIO()
    schemaless_writer(buf, schema.parsed, record)
    assert codec.encode(codec.EVENT, record) == schema.header + buf.getvalue()
    assert codec.decode(codec.encode(codec.EVENT, record)) == record


def test_schemas_with_nested_types_use_the_general_writer() -> None:
    assert codec.SCHEMAS[codec.RAW_EVENT_BATCH].writer is None
    assert codec.SCHEMAS[codec.DEFINITION].writer is None  # an enum field

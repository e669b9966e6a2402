import dataclasses
import io

import pytest
from fastavro import schemaless_reader, schemaless_writer
from hypothesis import given
from hypothesis import strategies as st

from fsstream.contract import codec

RAW_EVENT = {
    "device_id": 42,
    "session_id": 7,
    "view_id": None,
    "event_time": "2024-01-01T00:00:00.123Z",
    "event_type": "click",
    "event_properties": '{"target":{"raw_selector":"body > a"}}',
    "source_type": "web",
    "source_properties": "{}",
    "source_event_id": None,
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
            # Lengths on both sides of the one-, two- and three-byte encodings.
            "source_properties": st.sampled_from([63, 64, 8191, 8192, 20_000]).map("x".__mul__)
            | st.text(),
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


def _general_decode(value: bytes, expected: str | None = None) -> object:
    """What ``codec.decode`` gives (value, or error type and message) with fastavro alone."""
    with pytest.MonkeyPatch.context() as patch:
        schemas = {
            name: dataclasses.replace(schema, reader=None) for name, schema in codec.SCHEMAS.items()
        }
        patch.setattr(codec, "SCHEMAS", schemas)
        patch.setattr(codec, "_BY_FINGERPRINT", {s.fingerprint: s for s in schemas.values()})
        return _outcome(value, expected)


def _outcome(value: bytes, expected: str | None = None) -> object:
    try:
        return codec.decode(value, expected)
    except Exception as exc:
        return (type(exc), str(exc))


LONGS = st.integers(-(2**63), 2**63 - 1)
RAW_EVENTS = st.fixed_dictionaries(
    {
        "device_id": st.none() | LONGS,
        "session_id": st.none() | LONGS,
        "view_id": st.none() | LONGS,
        "event_time": st.text(),
        "event_type": st.none() | st.text(),
        "event_properties": st.text(),
        "source_type": st.none() | st.text(),
        "source_properties": st.text(max_size=300),
        "source_event_id": st.none() | st.text(max_size=40),
    }
)


@given(st.fixed_dictionaries({"ingested_time": LONGS, "events": st.lists(RAW_EVENTS, max_size=5)}))
def test_the_fast_batch_reader_reads_what_fastavro_reads(record: dict) -> None:
    schema = codec.SCHEMAS[codec.RAW_EVENT_BATCH]
    assert schema.reader is not None
    value = codec.encode(codec.RAW_EVENT_BATCH, record)
    body = io.BytesIO(value[codec.HEADER_SIZE :])
    assert schema.reader(value) == schemaless_reader(body, schema.parsed, None) == record


PREVIOUS_BATCH = bytes.fromhex("3fb607598001468a")
"""The batch schema before ``source_event_id``."""


@given(st.fixed_dictionaries({"ingested_time": LONGS, "events": st.lists(RAW_EVENTS, max_size=5)}))
def test_the_fast_reader_of_the_previous_batch_version_reads_what_fastavro_resolves(
    record: dict,
) -> None:
    previous = codec.schema_of(codec.MAGIC + PREVIOUS_BATCH)
    assert previous.reader is not None and previous.name == codec.RAW_EVENT_BATCH
    for event in record["events"]:
        del event["source_event_id"]
    buf = io.BytesIO()
    schemaless_writer(buf, previous.parsed, record)
    value = previous.header + buf.getvalue()
    today = codec.SCHEMAS[codec.RAW_EVENT_BATCH].parsed
    resolved = schemaless_reader(io.BytesIO(buf.getvalue()), previous.parsed, today)
    assert previous.reader(value) == resolved == codec.decode(value)
    assert all(e["source_event_id"] is None for e in resolved["events"])


def test_only_flat_schemas_get_the_fast_reader() -> None:
    assert codec.SCHEMAS[codec.RAW_EVENT].reader is not None
    assert codec.SCHEMAS[codec.EVENT].reader is not None
    assert codec.SCHEMAS[codec.DEFINITION].reader is None  # an enum and a boolean


BATCH = {
    "ingested_time": 1704067200000,
    "events": [
        RAW_EVENT,
        {**RAW_EVENT, "device_id": 2**63 - 1, "session_id": -(2**63), "event_type": None},
        {**RAW_EVENT, "event_time": "é\u00e9\u4e2d\U0001f600", "source_properties": "x" * 300},
    ],
}


def test_every_truncation_decodes_as_fastavro_decodes_it() -> None:
    value = codec.encode(codec.RAW_EVENT_BATCH, BATCH)
    for cut in range(codec.HEADER_SIZE, len(value) + 1):
        outcome = _outcome(value[:cut])
        assert outcome == _general_decode(value[:cut])
        assert (outcome == BATCH) == (cut == len(value))


@given(st.data())
def test_corrupt_bytes_decode_as_fastavro_decodes_them(data: st.DataObject) -> None:
    value = bytearray(codec.encode(codec.RAW_EVENT_BATCH, BATCH))
    for _ in range(data.draw(st.integers(1, 3))):
        value[data.draw(st.integers(codec.HEADER_SIZE, len(value) - 1))] = data.draw(
            st.integers(0, 255)
        )
    outcome = _outcome(bytes(value))
    if outcome != OVERLONG:  # fastavro reads past 64 bits; Avro's Java decoder refuses
        assert outcome == _general_decode(bytes(value))


OVERLONG = (
    codec.CorruptBodyError,
    "corrupt io.fsstream.RawEventBatch body: a long encoded in more than ten bytes",
)


def _event_body(*, device_id: bytes = b"\x02\x54") -> bytes:
    """A RawEvent body: the given device_id union, then ordinary fields."""
    text = b"\x04{}"
    body = device_id + b"\x00\x00" + b"\x02t" + b"\x02\x02c" + text + b"\x02\x02w" + text
    return body + b"\x00"  # no source_event_id


def _batch_of(event: bytes) -> bytes:
    """A RawEventBatch body of one block holding ``event``."""
    return b"\x02" + b"\x02" + event + b"\x00"


@pytest.mark.parametrize(
    "body",
    [
        # A negative block count is followed by the block's size in bytes.
        b"\x02" + b"\x01" + bytes([len(_event_body()) * 2]) + _event_body() + b"\x00",
        # Union branch 1 written in two bytes.
        _batch_of(_event_body(device_id=b"\x82\x00\x54")),
        # Union branch -1 (fastavro indexes from the end).
        _batch_of(_event_body(device_id=b"\x01\x54")),
        # The largest and smallest longs.
        _batch_of(_event_body(device_id=b"\x02" + b"\xfe" + b"\xff" * 8 + b"\x01")),
        _batch_of(_event_body(device_id=b"\x02" + b"\xff" * 9 + b"\x01")),
        # A block count far beyond the body.
        b"\x02" + b"\xfe\xff\xff\xff\x0f" + _event_body() + b"\x00",
        # A negative string length, and invalid UTF-8.
        _batch_of(_event_body()[:7] + b"\x03" + _event_body()[8:]),
        _batch_of(_event_body()[:8] + b"\xff" + _event_body()[9:]),
        b"\x02\x00\x00",
    ],
)
def test_unusual_encodings_decode_as_fastavro_decodes_them(body: bytes) -> None:
    value = codec.SCHEMAS[codec.RAW_EVENT_BATCH].header + body
    assert _outcome(value) == _general_decode(value)


@pytest.mark.parametrize(
    "device_id",
    [
        b"\x02" + b"\xff" * 9 + b"\x7f",  # ten bytes, a value past 64 bits
        b"\x02" + b"\xff" * 10 + b"\x01",  # eleven bytes
        b"\x02" + b"\x80" * 10 + b"\x00",  # eleven bytes for 0: fastavro reads 0
    ],
)
def test_longs_past_ten_bytes_are_corrupt(device_id: bytes) -> None:
    value = codec.SCHEMAS[codec.RAW_EVENT_BATCH].header + _batch_of(
        _event_body(device_id=device_id)
    )
    assert _outcome(value) == OVERLONG


def test_unusual_encodings_that_fastavro_accepts_keep_their_values() -> None:
    header = codec.SCHEMAS[codec.RAW_EVENT_BATCH].header
    blocked = b"\x02" + b"\x01" + bytes([len(_event_body()) * 2]) + _event_body() + b"\x00"
    assert codec.decode(header + blocked)["events"][0]["device_id"] == 42
    smallest = _batch_of(_event_body(device_id=b"\x02" + b"\xff" * 9 + b"\x01"))
    assert codec.decode(header + smallest)["events"][0]["device_id"] == -(2**63)

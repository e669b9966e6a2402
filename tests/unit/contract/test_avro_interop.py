"""The Avro contract against Apache's own ``avro`` package: same fingerprints, records
written by either read by the other, the previous fingerprint still read, and a record
written with another version of a schema resolved to today's."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import avro.io
import avro.schema
import pytest
from fastavro.schema import fingerprint

from fsstream.contract import codec
from tests.unit.contract.test_codec import DEFINITION, EVENT, RAW_EVENT

RECORDS = {
    codec.RAW_EVENT: RAW_EVENT,
    codec.RAW_EVENT_BATCH: {"ingested_time": 1704067200000, "events": [RAW_EVENT] * 3},
    codec.EVENT: EVENT,
    codec.DEFINITION: DEFINITION,
}


def apache_schema(document: dict[str, Any]) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(document))


def apache_encode(schema: avro.schema.Schema, record: dict[str, Any]) -> bytes:
    """A single-object value as Apache avro writes it: marker, fingerprint, body."""
    body = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(body))
    return b"\xc3\x01" + schema.fingerprint("CRC-64-AVRO") + body.getvalue()


def apache_decode(
    value: bytes, writer: avro.schema.Schema, reader: avro.schema.Schema | None = None
) -> Any:
    assert value[:2] == b"\xc3\x01" and value[2:10] == writer.fingerprint("CRC-64-AVRO")
    decoder = avro.io.BinaryDecoder(io.BytesIO(value[10:]))
    return avro.io.DatumReader(writer, reader or writer).read(decoder)


@pytest.mark.parametrize("name", list(RECORDS))
def test_each_schema_file_alone_has_the_fingerprint_fsstream_writes(name: str) -> None:
    assert (
        apache_schema(codec.schema_document(name)).fingerprint("CRC-64-AVRO")
        == codec.SCHEMAS[name].fingerprint
    )


def test_the_batch_fingerprint_is_that_of_the_whole_document() -> None:
    assert codec.SCHEMAS[codec.RAW_EVENT_BATCH].fingerprint.hex() == "3fb607598001468a"


def test_the_batch_document_inlines_the_raw_event_schema_unchanged() -> None:
    batch = codec.schema_document(codec.RAW_EVENT_BATCH)
    [events] = [f for f in batch["fields"] if f["name"] == "events"]
    assert events["type"]["items"] == codec.schema_document(codec.RAW_EVENT)


@pytest.mark.parametrize("name", list(RECORDS))
def test_records_apache_avro_writes_are_read_and_the_reverse(name: str) -> None:
    schema = apache_schema(codec.schema_document(name))
    record = RECORDS[name]
    assert codec.decode(apache_encode(schema, record), expected=name) == record
    written = codec.encode(name, record)
    assert written == apache_encode(schema, record)
    assert apache_decode(written, schema) == record


def test_records_written_with_the_previous_batch_fingerprint_are_still_read() -> None:
    """Before, the batch was fingerprinted with ``RawEvent`` as a bare name."""
    document = codec.schema_document(codec.RAW_EVENT_BATCH)
    inline = apache_schema(document).canonical_form
    event = apache_schema(codec.schema_document(codec.RAW_EVENT)).canonical_form
    bare = inline.replace(event, '"io.fsstream.RawEvent"')
    assert bare != inline
    legacy = bytes.fromhex(fingerprint(bare, "CRC-64-AVRO"))
    assert {legacy: codec.RAW_EVENT_BATCH} == codec.LEGACY_FINGERPRINTS
    record = RECORDS[codec.RAW_EVENT_BATCH]
    current = codec.encode(codec.RAW_EVENT_BATCH, record)
    old = current[:2] + legacy + current[10:]
    assert codec.decode(old, expected=codec.RAW_EVENT_BATCH) == record


def _with_source_event_id() -> dict[str, Any]:
    """The batch schema with an optional field added to its events."""
    document = copy.deepcopy(codec.schema_document(codec.RAW_EVENT_BATCH))
    [events] = [f for f in document["fields"] if f["name"] == "events"]
    events["type"]["items"]["fields"].append(
        {"name": "source_event_id", "type": ["null", "string"], "default": None}
    )
    return document


def test_a_version_with_an_added_optional_field_is_read_by_both_sides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "_BY_FINGERPRINT", dict(codec._BY_FINGERPRINT))
    evolved_document = _with_source_event_id()
    evolved = apache_schema(evolved_document)
    today = apache_schema(codec.schema_document(codec.RAW_EVENT_BATCH))
    record = RECORDS[codec.RAW_EVENT_BATCH]
    with_ids = {
        **record,
        "events": [{**e, "source_event_id": f"s{i}"} for i, e in enumerate(record["events"])],
    }
    value = apache_encode(evolved, with_ids)
    with pytest.raises(codec.UnknownSchemaError):
        codec.decode(value)
    fp = codec.add_writer_version(codec.RAW_EVENT_BATCH, evolved_document)
    assert (
        fp == evolved.fingerprint("CRC-64-AVRO") != codec.SCHEMAS[codec.RAW_EVENT_BATCH].fingerprint
    )
    # Today's reader reads the new version (the field it lacks is skipped), both fingerprints.
    assert codec.decode(value, expected=codec.RAW_EVENT_BATCH) == record
    assert codec.decode(codec.encode(codec.RAW_EVENT_BATCH, record)) == record
    assert apache_decode(value, evolved, today) == record
    # A reader of the new version reads today's records, the field at its default.
    old = codec.encode(codec.RAW_EVENT_BATCH, record)
    without = {**record, "events": [{**e, "source_event_id": None} for e in record["events"]]}
    assert apache_decode(old, today, evolved) == without

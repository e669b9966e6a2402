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
    codec.RAW_EVENT_BATCH: {
        "ingested_time": 1704067200000,
        "events": [RAW_EVENT, {**RAW_EVENT, "source_event_id": "srv-1"}, RAW_EVENT],
    },
    codec.EVENT: EVENT,
    codec.DEFINITION: DEFINITION,
}
PREVIOUS = {
    codec.RAW_EVENT: bytes.fromhex("45867534afeedc07"),
    codec.RAW_EVENT_BATCH: bytes.fromhex("3fb607598001468a"),
}
"""The fingerprints of the schemas before ``source_event_id``."""


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
    assert codec.SCHEMAS[codec.RAW_EVENT_BATCH].fingerprint.hex() == "592f0919bbe55113"
    assert codec.SCHEMAS[codec.RAW_EVENT].fingerprint.hex() == "61fdb3ac91bf4110"


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


def _raw_event_items(document: dict[str, Any]) -> dict[str, Any]:
    [events] = [f for f in document["fields"] if f["name"] == "events"]
    items: dict[str, Any] = events["type"]["items"]
    return items


def _without_source_ids(name: str, record: dict[str, Any]) -> dict[str, Any]:
    if name == codec.RAW_EVENT:
        return {k: v for k, v in record.items() if k != "source_event_id"}
    return {**record, "events": [_without_source_ids(codec.RAW_EVENT, e) for e in record["events"]]}


def test_the_previous_documents_are_todays_without_the_source_event_id() -> None:
    previous = codec.previous_documents()
    assert {fp: d["name"] for fp, d in previous.items()} == {
        fp: name.rpartition(".")[2] for name, fp in PREVIOUS.items()
    }
    for name, fp in PREVIOUS.items():
        assert apache_schema(previous[fp]).fingerprint("CRC-64-AVRO") == fp
        today = copy.deepcopy(codec.schema_document(name))
        fields = (_raw_event_items(today) if name == codec.RAW_EVENT_BATCH else today)["fields"]
        added = fields.pop()
        assert added == {
            "name": "source_event_id",
            "type": ["null", "string"],
            "default": None,
            "doc": added["doc"],
        }
        assert today == previous[fp]


def test_records_written_with_the_previous_batch_fingerprint_are_still_read() -> None:
    """Before, the batch was fingerprinted with ``RawEvent`` as a bare name."""
    previous = codec.previous_documents()
    document = previous[PREVIOUS[codec.RAW_EVENT_BATCH]]
    inline = apache_schema(document).canonical_form
    event = apache_schema(previous[PREVIOUS[codec.RAW_EVENT]]).canonical_form
    bare = inline.replace(event, '"io.fsstream.RawEvent"')
    assert bare != inline
    legacy = bytes.fromhex(fingerprint(bare, "CRC-64-AVRO"))
    assert {legacy: PREVIOUS[codec.RAW_EVENT_BATCH]} == codec.LEGACY_FINGERPRINTS
    record = RECORDS[codec.RAW_EVENT_BATCH]
    written = apache_encode(
        apache_schema(document), _without_source_ids(codec.RAW_EVENT_BATCH, record)
    )
    old = written[:2] + legacy + written[10:]
    without = {**record, "events": [{**e, "source_event_id": None} for e in record["events"]]}
    assert codec.decode(old, expected=codec.RAW_EVENT_BATCH) == without


@pytest.mark.parametrize("name", list(PREVIOUS))
def test_the_version_before_source_event_id_is_read_by_both_sides(name: str) -> None:
    old_schema = apache_schema(codec.previous_documents()[PREVIOUS[name]])
    today = apache_schema(codec.schema_document(name))
    record = RECORDS[name]
    old_record = _without_source_ids(name, record)
    # fsstream reads records of the previous version, the new field at its default.
    value = apache_encode(old_schema, old_record)
    decoded = codec.decode(value, expected=name)
    assert decoded == apache_decode(value, old_schema, today)
    assert _without_source_ids(name, decoded) == old_record
    assert codec.schema_of(value).reader is not None  # read by the fast reader too
    # A reader of the previous version reads today's records, the new field skipped.
    assert apache_decode(codec.encode(name, record), today, old_schema) == old_record


def test_a_writer_version_is_unknown_until_added(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_BY_FINGERPRINT", dict(codec._BY_FINGERPRINT))
    document = codec.previous_documents()[PREVIOUS[codec.RAW_EVENT_BATCH]]
    for fp in (PREVIOUS[codec.RAW_EVENT_BATCH], *codec.LEGACY_FINGERPRINTS):
        del codec._BY_FINGERPRINT[fp]
    record = _without_source_ids(codec.RAW_EVENT_BATCH, RECORDS[codec.RAW_EVENT_BATCH])
    value = apache_encode(apache_schema(document), record)
    with pytest.raises(codec.UnknownSchemaError):
        codec.decode(value)
    assert (
        codec.add_writer_version(codec.RAW_EVENT_BATCH, document) == PREVIOUS[codec.RAW_EVENT_BATCH]
    )
    assert _without_source_ids(codec.RAW_EVENT_BATCH, codec.decode(value)) == record

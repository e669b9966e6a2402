"""Avro single-object encoding of every fsstream record value.

The only module that touches fastavro. Schemas are parsed once at import; a
value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO fingerprint of the
writer schema's canonical form + the Avro binary body, so a reader needs no
schema registry and rejects anything it does not know.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

RAW_EVENT = "io.fsstream.RawEvent"
RAW_EVENT_BATCH = "io.fsstream.RawEventBatch"
DEFINITION = "io.fsstream.Definition"
EVENT = "io.fsstream.Event"

_SCHEMA_FILES = {
    RAW_EVENT: "raw_event.avsc",
    RAW_EVENT_BATCH: "raw_event_batch.avsc",
    DEFINITION: "definition.avsc",
    EVENT: "event.avsc",
}


class CodecError(ValueError):
    """A record value that cannot be decoded; the message says why."""


class UnknownSchemaError(CodecError):
    """The value names a schema fingerprint this reader does not know."""


class NotSingleObjectError(CodecError):
    """The value does not start with the Avro single-object marker."""


class CorruptBodyError(CodecError):
    """The Avro body is truncated, has trailing bytes or does not match the schema."""


@dataclass(frozen=True, slots=True)
class Schema:
    """A parsed Avro schema with its single-object header."""

    name: str
    parsed: Any
    fingerprint: bytes
    header: bytes
    writer: Callable[[dict[str, Any]], bytes] | None = None


_ONE_BYTE = [bytes([n]) for n in range(128)]
_NULL = b"\x00"
_PRESENT = b"\x02"


def _long(value: int) -> bytes:
    zigzag = (value << 1) ^ (value >> 63)
    if zigzag < 128:
        return _ONE_BYTE[zigzag]
    out = bytearray()
    while zigzag > 127:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode()
    return _long(len(data)) + data


def _optional(write: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    def write_optional(value: Any) -> bytes:
        return _NULL if value is None else _PRESENT + write(value)

    return write_optional


_PRIMITIVE_WRITERS: dict[str, Callable[[Any], bytes]] = {
    "string": _string,
    "long": _long,
    "int": _long,
}


def _flat_writer(parsed: Any) -> Callable[[dict[str, Any]], bytes] | None:
    """A writer for records of strings, longs and their nullable unions; None for others.

    Every record published goes through it, and it is faster than the general writer.
    """
    fields: list[tuple[str, Callable[[Any], bytes]]] = []
    for field in parsed["fields"]:
        kind = field["type"]
        if isinstance(kind, str) and kind in _PRIMITIVE_WRITERS:
            fields.append((field["name"], _PRIMITIVE_WRITERS[kind]))
        elif (
            isinstance(kind, list)
            and len(kind) == 2
            and kind[0] == "null"
            and isinstance(kind[1], str)
            and kind[1] in _PRIMITIVE_WRITERS
        ):
            fields.append((field["name"], _optional(_PRIMITIVE_WRITERS[kind[1]])))
        else:
            return None

    def write(record: dict[str, Any]) -> bytes:
        return b"".join([encode_field(record[name]) for name, encode_field in fields])

    return write


def _load() -> dict[str, Schema]:
    named: dict[str, Any] = {}
    schemas: dict[str, Schema] = {}
    folder = resources.files("fsstream") / "schemas"
    for name, filename in _SCHEMA_FILES.items():
        raw = json.loads((folder / filename).read_text(encoding="utf-8"))
        parsed = parse_schema(raw, named_schemas=named)
        # fastavro gives the CRC-64-AVRO fingerprint's bytes little-endian, as the spec stores them.
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        schemas[name] = Schema(name, parsed, fp, MAGIC + fp, _flat_writer(parsed))
    return schemas


SCHEMAS: dict[str, Schema] = _load()
_BY_FINGERPRINT: dict[bytes, Schema] = {s.fingerprint: s for s in SCHEMAS.values()}


def encode(schema_name: str, record: dict[str, Any]) -> bytes:
    """Encode ``record`` as an Avro single object of the named schema."""
    schema = SCHEMAS[schema_name]
    if schema.writer is not None:
        return schema.header + schema.writer(record)
    buf = io.BytesIO()
    buf.write(schema.header)
    schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


def schema_of(value: bytes) -> Schema:
    """The known schema a single-object value was written with."""
    if len(value) < HEADER_SIZE or value[:2] != MAGIC:
        raise NotSingleObjectError(
            "not an Avro single-object value: expected marker C3 01,"
            f" got {value[:2].hex() or 'empty'} ({len(value)} bytes)"
        )
    fp = bytes(value[2:HEADER_SIZE])
    schema = _BY_FINGERPRINT.get(fp)
    if schema is None:
        raise UnknownSchemaError(f"unknown schema fingerprint {fp.hex()}")
    return schema


def decode(value: bytes, expected: str | None = None) -> dict[str, Any]:
    """Decode a single-object value; with ``expected``, any other schema is an error."""
    schema = schema_of(value)
    if expected is not None and schema.name != expected:
        raise UnknownSchemaError(
            f"schema {schema.name} (fingerprint {schema.fingerprint.hex()})"
            f" where {expected} was expected"
        )
    buf = io.BytesIO(value)
    buf.seek(HEADER_SIZE)
    try:
        record = cast(dict[str, Any], schemaless_reader(buf, schema.parsed, None))
    except (EOFError, IndexError, UnicodeDecodeError, ValueError, TypeError, OverflowError) as exc:
        raise CorruptBodyError(f"corrupt {schema.name} body: {type(exc).__name__}: {exc}") from exc
    rest = len(value) - buf.tell()
    if rest:
        raise CorruptBodyError(f"corrupt {schema.name} body: {rest} trailing bytes")
    return record

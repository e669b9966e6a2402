"""Event fingerprints and event ids.

A fingerprint identifies an event within its view, so a redelivered event is
recognised: by the source's own event id when the source gives one, else by the event's
content (content-identical events of a source without ids are indistinguishable from
redeliveries). An event id hashes the view, the fingerprint and the predecessor's
fingerprint in view order, so the id of a row changes exactly when a late event
lands right before it, and is the same whatever order the view's events arrived in.
"""

from __future__ import annotations

from hashlib import blake2b

_SEP = b"\x1f"
_FIRST = b"first"
_IDENTIFY = b"identify"
_DETACHED = b"detached"
_SOURCE_PERSON = b"fsstream-source"
"""BLAKE2b personalisation of source-id fingerprints: a domain apart from content ones."""


def fingerprint(
    event_time_us: int,
    event_type: str,
    event_properties: str,
    source_type: str,
    source_properties: str,
) -> int:
    """A 64-bit content hash of one raw event (its ids are in the view key)."""
    # One UTF-8 encoding of the joined text: the same bytes as encoding each part.
    text = "\x1f".join(
        (f"{event_time_us:d}", event_type, event_properties, source_type, source_properties)
    )
    return int.from_bytes(blake2b(text.encode(), digest_size=8).digest(), "little")


def source_fingerprint(source_event_id: str) -> int:
    """A 64-bit hash of the source's own event id (the view is in the event id)."""
    return int.from_bytes(
        blake2b(source_event_id.encode(), digest_size=8, person=_SOURCE_PERSON).digest(), "little"
    )


def _id(view_key: str, fp: int, tail: bytes) -> str:
    return blake2b(
        view_key.encode() + _SEP + fp.to_bytes(8, "little") + _SEP + tail, digest_size=16
    ).hexdigest()


def event_id(view_key: str, fp: int, predecessor_fp: int | None) -> str:
    """The id of an event whose predecessor in view order is ``predecessor_fp`` (None: first)."""
    tail = _FIRST if predecessor_fp is None else predecessor_fp.to_bytes(8, "little")
    return _id(view_key, fp, tail)


def identify_event_id(view_key: str, fp: int) -> str:
    """Identify events never change id: a later one is a new event, not an update."""
    return _id(view_key, fp, _IDENTIFY)


def detached_event_id(view_key: str, fp: int) -> str:
    """The id of an event that arrived after its view's state expired; it is never reordered."""
    return _id(view_key, fp, _DETACHED)

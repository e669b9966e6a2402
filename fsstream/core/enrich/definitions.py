"""Definitions as they arrive on the definitions topic, checked and compiled once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from fsstream.core.enrich.errors import DefinitionError
from fsstream.core.enrich.events import EventRule, compile_event_rule
from fsstream.core.enrich.pages import PagePattern, parse_page_pattern
from fsstream.core.enrich.selectors import ElementSelector, compile_selector

KINDS = ("element", "event", "page")
ACTIVE = "active"
ARCHIVED = "archived"

CompiledRule = ElementSelector | PagePattern | EventRule

T = TypeVar("T")

_RULE_KEYS = {"element": frozenset({"selector"}), "page": frozenset({"url"})}


@dataclass(frozen=True, slots=True)
class Definition:
    """One version of a named element, defined event or page, its rule compiled."""

    kind: str
    id: str
    name: str
    description: str | None
    state: str
    rule: str
    created_time: int
    created_by: str | None
    modified_time: int
    modified_by: str | None
    fs_link_id: str | None
    is_user_defined: bool | None
    compiled: CompiledRule = field(compare=False, repr=False)

    @property
    def active(self) -> bool:
        return self.state == ACTIVE

    def to_record(self) -> dict[str, Any]:
        """The definition as a ``Definition`` record (the Avro schema's fields)."""
        return {
            "kind": self.kind,
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "state": self.state,
            "rule": self.rule,
            "created_time": self.created_time,
            "created_by": self.created_by,
            "modified_time": self.modified_time,
            "modified_by": self.modified_by,
            "fs_link_id": self.fs_link_id,
            "is_user_defined": self.is_user_defined,
        }


def parse_definition(data: Mapping[str, Any]) -> Definition:
    """Check a definition record and compile its rule; DefinitionError says what is wrong."""
    if not isinstance(data, Mapping):
        raise DefinitionError("a definition must be an object")
    kind = data.get("kind")
    definition_id = data.get("id")
    if not isinstance(definition_id, str) or not definition_id:
        raise DefinitionError(f"{kind or 'a'} definition needs a non-empty string 'id'")
    if kind not in KINDS:
        raise DefinitionError(
            f"definition {definition_id!r}: unknown kind {kind!r}; expected one of "
            f"{', '.join(KINDS)}"
        )
    try:
        return _parse(kind, definition_id, data)
    except DefinitionError as error:
        raise DefinitionError(f"{kind} definition {definition_id!r}: {error}") from None


def parse_definition_key(key: str) -> tuple[str, str]:
    """``(kind, id)`` of a definitions-topic key ``"<kind>:<id>"``."""
    kind, colon, definition_id = key.partition(":")
    if not colon or kind not in KINDS or not definition_id:
        raise DefinitionError(
            f"definition key {key!r} is not '<kind>:<id>' with kind one of {', '.join(KINDS)}"
        )
    return kind, definition_id


def _parse(kind: str, definition_id: str, data: Mapping[str, Any]) -> Definition:
    state = data.get("state")
    if state not in (ACTIVE, ARCHIVED):
        raise DefinitionError(f"state must be {ACTIVE!r} or {ARCHIVED!r}, not {state!r}")
    rule_text = data.get("rule")
    if not isinstance(rule_text, str):
        raise DefinitionError("'rule' must be a JSON string")
    try:
        rule = orjson.loads(rule_text)
    except orjson.JSONDecodeError as error:
        raise DefinitionError(f"rule is not valid JSON: {error}") from None
    if not isinstance(rule, dict):
        raise DefinitionError("rule must be a JSON object")
    return Definition(
        kind=kind,
        id=definition_id,
        name=_string(data, "name"),
        description=_optional(data, "description", str),
        state=state,
        rule=rule_text,
        created_time=_millis(data, "created_time"),
        created_by=_optional(data, "created_by", str),
        modified_time=_millis(data, "modified_time"),
        modified_by=_optional(data, "modified_by", str),
        fs_link_id=_optional(data, "fs_link_id", str),
        is_user_defined=_optional(data, "is_user_defined", bool),
        compiled=_compile(kind, rule),
    )


def _compile(kind: str, rule: dict[str, Any]) -> CompiledRule:
    if kind == "event":
        return compile_event_rule(rule)
    expected = _RULE_KEYS[kind]
    if set(rule) != expected:
        (key,) = expected
        raise DefinitionError(f"{kind} rule must be {{{key!r}: ...}}, got keys {sorted(rule)}")
    if kind == "element":
        return compile_selector(rule["selector"])
    return parse_page_pattern(rule["url"])


def _string(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str):
        raise DefinitionError(f"{key!r} must be a string")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type[T]) -> T | None:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise DefinitionError(f"{key!r} must be a {kind.__name__} or null")
    return value


def _millis(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise DefinitionError(f"{key!r} must be an integer (ms since the epoch)")
    return value

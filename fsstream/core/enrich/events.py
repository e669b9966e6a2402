"""Defined events: an event type, optionally narrowed to an element, a page and
property values.

A property path is dotted keys into ``event_properties`` (``event_properties.amount``
reaches into a custom event's payload); a decimal part indexes a list. Keys that
contain a dot cannot be reached. The operators:

- ``equals``: the value is present and equal as JSON (``1`` equals ``1.0``, ``true``
  never equals ``1``);
- ``contains``: a string contains the given string, or a list holds an equal item;
- ``exists``: the value is present and not null;
- ``gt`` / ``lt``: the value is a number greater / less than the given number.

A rule naming an element or page definition matches only while that definition
matched the event too; naming one that does not exist is not an error (definitions
arrive in any order) and simply never matches.

A rule holds at most ``MAX_PREDICATES`` property tests, and a test's ``value`` nests
lists and objects at most ``MAX_VALUE_NESTING`` deep: comparing it with an event's
value recurses no deeper than that, whatever the event holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fsstream.core.enrich.errors import DefinitionError
from fsstream.core.jsondepth import json_depth

OPERATORS = ("equals", "contains", "exists", "gt", "lt")
MAX_PREDICATES = 64
MAX_VALUE_NESTING = 32

_RULE_KEYS = frozenset({"event_type", "element_definition_id", "page_definition_id", "properties"})
_PREDICATE_KEYS = frozenset({"path", "op", "value"})
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class PropertyPredicate:
    """A test on one value of ``event_properties``, found by a dotted path."""

    path: tuple[str, ...]
    op: str
    value: Any = None
    holds: Callable[[Mapping[str, Any]], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "holds", _compile_test(self.path, _comparison(self.op, self.value))
        )


@dataclass(frozen=True, slots=True)
class EventRule:
    """What an event must be and carry to match a defined event."""

    event_type: str
    element_definition_id: str | None = None
    page_definition_id: str | None = None
    properties: tuple[PropertyPredicate, ...] = ()

    @property
    def predicate_count(self) -> int:
        """How specific the rule is: the event type, element, page and each property."""
        return (
            1
            + (self.element_definition_id is not None)
            + (self.page_definition_id is not None)
            + len(self.properties)
        )


def compile_event_rule(rule: Mapping[str, Any]) -> EventRule:
    """Check an event rule and compile its property paths."""
    unknown = set(rule) - _RULE_KEYS
    if unknown:
        raise DefinitionError(f"event rule has unknown keys {sorted(unknown)}")
    event_type = rule.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise DefinitionError("event rule needs a non-empty string 'event_type'")
    element_id = _optional_id(rule, "element_definition_id")
    page_id = _optional_id(rule, "page_definition_id")
    properties = rule.get("properties")
    if properties is None:
        properties = []
    if not isinstance(properties, list):
        raise DefinitionError("event rule 'properties' must be a list")
    if len(properties) > MAX_PREDICATES:
        raise DefinitionError(
            f"event rule has {len(properties)} properties; at most {MAX_PREDICATES} are allowed"
        )
    predicates = tuple(_predicate(i, item) for i, item in enumerate(properties))
    return EventRule(event_type, element_id, page_id, predicates)


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value, booleans only to booleans."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(json_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(b, list | dict):
        return False
    return bool(a == b)


def _optional_id(rule: Mapping[str, Any], key: str) -> str | None:
    value = rule.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise DefinitionError(f"event rule {key!r} must be a non-empty string")
    return value


def _predicate(index: int, item: Any) -> PropertyPredicate:
    where = f"event rule property {index}"
    if not isinstance(item, Mapping):
        raise DefinitionError(f"{where} must be an object with 'path', 'op' and 'value'")
    unknown = set(item) - _PREDICATE_KEYS
    if unknown:
        raise DefinitionError(f"{where} has unknown keys {sorted(unknown)}")
    path = item.get("path")
    if not isinstance(path, str) or not path:
        raise DefinitionError(f"{where} needs a non-empty string 'path'")
    parts = tuple(path.split("."))
    if not all(parts):
        raise DefinitionError(f"{where}: path {path!r} has an empty part")
    op = item.get("op")
    if op not in OPERATORS:
        raise DefinitionError(f"{where}: unknown op {op!r}; expected one of {', '.join(OPERATORS)}")
    value: Any = item.get("value")
    if op in ("equals", "contains") and "value" not in item:
        raise DefinitionError(f"{where}: op {op!r} needs a 'value'")
    if op in ("gt", "lt") and not (_is_number(value) and math.isfinite(value)):
        raise DefinitionError(f"{where}: op {op!r} needs a number 'value'")
    if json_depth(value, MAX_VALUE_NESTING) > MAX_VALUE_NESTING:
        raise DefinitionError(
            f"{where}: 'value' nests lists and objects more than {MAX_VALUE_NESTING} deep"
        )
    return PropertyPredicate(parts, op, value)


def _compile_test(
    path: tuple[str, ...], compare: Callable[[Any], bool]
) -> Callable[[Mapping[str, Any]], bool]:
    if len(path) == 1:
        key = path[0]

        def test_key(event_properties: Mapping[str, Any]) -> bool:
            actual = event_properties.get(key, _MISSING)
            return actual is not _MISSING and compare(actual)

        return test_key

    def test_path(event_properties: Mapping[str, Any]) -> bool:
        actual = _lookup(event_properties, path)
        return actual is not _MISSING and compare(actual)

    return test_path


def _comparison(op: str, value: Any) -> Callable[[Any], bool]:
    """The test of a present value, specialized for the operator and the given value."""
    if op == "exists":
        return lambda actual: actual is not None
    if op == "equals":
        if isinstance(value, str):
            return lambda actual: actual == value
        if value is None or isinstance(value, bool):
            return lambda actual: actual is value
        if _is_number(value):
            return lambda actual: (type(actual) is int or type(actual) is float) and actual == value
        return lambda actual: json_equal(actual, value)
    if op == "contains":

        def contains(actual: Any) -> bool:
            if isinstance(actual, str):
                return isinstance(value, str) and value in actual
            if isinstance(actual, list):
                return any(json_equal(item, value) for item in actual)
            return False

        return contains
    if op == "gt":
        return lambda actual: (type(actual) is int or type(actual) is float) and actual > value
    return lambda actual: (type(actual) is int or type(actual) is float) and actual < value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part, _MISSING)
            if data is _MISSING:
                return _MISSING
        elif isinstance(data, list) and part.isdecimal():
            index = int(part)
            if index >= len(data):
                return _MISSING
            data = data[index]
        else:
            return _MISSING
    return data

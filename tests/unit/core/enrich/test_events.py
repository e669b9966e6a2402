"""Defined-event rules: property predicates, refusals and the most-predicates rank."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pytest

from fsstream.core.enrich import DefinitionError, parse_definition
from fsstream.core.enrich.events import (
    MAX_PREDICATES,
    MAX_VALUE_NESTING,
    EventRule,
    compile_event_rule,
    json_equal,
)
from fsstream.core.enrich.matcher import EventMatcher

PROPS: dict[str, Any] = {
    "event_name": "Order Completed",
    "event_properties": {
        "amount": 120,
        "price": 9.5,
        "currency": "USD",
        "tags": ["a", "b", 3],
        "flag": True,
        "nothing": None,
        "items": [{"sku": "x1"}, {"sku": "x2"}],
    },
    "target": {"text": "Buy now", "masked": False},
}


def matches(
    rule: dict[str, Any],
    event_type: str,
    event_properties: Mapping[str, Any],
    element_ids: Sequence[str] = (),
    page_id: str | None = None,
) -> bool:
    """Whether an active event definition with ``rule`` matches the event, as enrichment
    decides it."""
    definition = parse_definition(
        {
            "kind": "event",
            "id": "v1",
            "name": "defined event",
            "description": None,
            "state": "active",
            "rule": orjson.dumps(rule).decode(),
            "created_time": 1,
            "created_by": None,
            "modified_time": 1,
            "modified_by": None,
            "fs_link_id": None,
            "is_user_defined": None,
        }
    )
    matched = EventMatcher([definition]).match(event_type, event_properties, element_ids, page_id)
    assert matched in ([], ["v1"])
    return matched == ["v1"]


def holds(path: str, op: str, value: Any = None, *, with_value: bool = True) -> bool:
    predicate: dict[str, Any] = {"path": path, "op": op}
    if with_value:
        predicate["value"] = value
    return matches({"event_type": "custom", "properties": [predicate]}, "custom", PROPS)


@pytest.mark.parametrize(
    ("path", "op", "value", "expected"),
    [
        ("event_name", "equals", "Order Completed", True),
        ("event_name", "equals", "order completed", False),
        ("event_properties.amount", "equals", 120, True),
        ("event_properties.amount", "equals", 120.0, True),
        ("event_properties.amount", "equals", "120", False),
        ("event_properties.price", "equals", 9.5, True),
        ("event_properties.flag", "equals", True, True),
        ("event_properties.flag", "equals", 1, False),
        ("event_properties.amount", "equals", True, False),
        ("event_properties.nothing", "equals", None, True),
        ("event_properties.missing", "equals", None, False),
        ("event_properties.tags", "equals", ["a", "b", 3], True),
        ("event_properties.tags", "equals", ["a", "b", 3.0], True),
        ("event_properties.tags", "equals", ["a", "b"], False),
        ("event_properties.items", "equals", [{"sku": "x1"}, {"sku": "x2"}], True),
        ("event_properties.items.1.sku", "equals", "x2", True),
        ("event_properties.items.2.sku", "equals", "x2", False),
        ("event_properties.items.first.sku", "equals", "x1", False),
        ("target.masked", "equals", False, True),
        ("target.masked", "equals", 0, False),
        ("event_name", "contains", "Order", True),
        ("event_name", "contains", "order", False),
        ("event_properties.tags", "contains", "a", True),
        ("event_properties.tags", "contains", "c", False),
        ("event_properties.tags", "contains", 3, True),
        ("event_properties.items", "contains", {"sku": "x2"}, True),
        ("event_properties.amount", "contains", 1, False),
        ("event_properties.amount", "contains", "1", False),
        ("event_properties.currency", "exists", None, True),
        ("event_properties.flag", "exists", None, True),
        ("event_properties.nothing", "exists", None, False),
        ("event_properties.missing", "exists", None, False),
        ("event_name.inner", "exists", None, False),
        ("event_properties.amount", "gt", 100, True),
        ("event_properties.amount", "gt", 120, False),
        ("event_properties.amount", "gt", 119.5, True),
        ("event_properties.amount", "lt", 121, True),
        ("event_properties.amount", "lt", 120, False),
        ("event_properties.price", "lt", 10, True),
        ("event_properties.currency", "gt", 1, False),
        ("event_properties.flag", "gt", 0, False),
        ("event_properties.missing", "lt", 1, False),
    ],
)
def test_property_operators(path: str, op: str, value: Any, expected: bool) -> None:
    assert holds(path, op, value) is expected


def test_exists_needs_no_value() -> None:
    assert holds("event_name", "exists", with_value=False)


def test_every_predicate_must_hold() -> None:
    rule = {
        "event_type": "custom",
        "properties": [
            {"path": "event_name", "op": "equals", "value": "Order Completed"},
            {"path": "event_properties.amount", "op": "gt", "value": 200},
        ],
    }
    assert not matches(rule, "custom", PROPS)


@pytest.mark.parametrize(
    ("element_ids", "page_id", "expected"),
    [
        (("el-1",), "pg-1", True),
        (("el-0", "el-1"), "pg-1", True),
        (("el-0",), "pg-1", False),
        ((), "pg-1", False),
        (("el-1",), "pg-2", False),
        (("el-1",), None, False),
    ],
)
def test_element_and_page_requirements(
    element_ids: tuple[str, ...], page_id: str | None, expected: bool
) -> None:
    rule = {"event_type": "click", "element_definition_id": "el-1", "page_definition_id": "pg-1"}
    assert matches(rule, "click", {}, element_ids, page_id) is expected


def test_event_type_must_equal() -> None:
    rule = {"event_type": "click"}
    assert matches(rule, "click", {})
    assert not matches(rule, "Click", {})
    assert not matches(rule, "change", {})


@pytest.mark.parametrize(
    ("rule", "predicates"),
    [
        ({"event_type": "click"}, 1),
        ({"event_type": "click", "element_definition_id": "e"}, 2),
        ({"event_type": "click", "page_definition_id": "p"}, 2),
        ({"event_type": "click", "element_definition_id": "e", "page_definition_id": "p"}, 3),
        (
            {
                "event_type": "custom",
                "page_definition_id": "p",
                "properties": [
                    {"path": "a", "op": "exists"},
                    {"path": "b", "op": "gt", "value": 1},
                ],
            },
            4,
        ),
        ({"event_type": "click", "properties": []}, 1),
        ({"event_type": "click", "properties": None}, 1),
    ],
)
def test_predicate_count(rule: dict[str, Any], predicates: int) -> None:
    assert compile_event_rule(rule).predicate_count == predicates


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({}, "needs a non-empty string 'event_type'"),
        ({"event_type": ""}, "needs a non-empty string 'event_type'"),
        ({"event_type": 3}, "needs a non-empty string 'event_type'"),
        ({"event_type": "click", "page": "p"}, "unknown keys ['page']"),
        ({"event_type": "click", "element_definition_id": ""}, "must be a non-empty string"),
        ({"event_type": "click", "page_definition_id": 7}, "must be a non-empty string"),
        ({"event_type": "click", "properties": {"path": "a"}}, "'properties' must be a list"),
        ({"event_type": "click", "properties": ["a"]}, "property 0 must be an object"),
        (
            {"event_type": "click", "properties": [{"path": "a", "op": "startswith", "value": 1}]},
            "unknown op 'startswith'; expected one of equals, contains, exists, gt, lt",
        ),
        ({"event_type": "click", "properties": [{"path": "a"}]}, "unknown op None"),
        ({"event_type": "click", "properties": [{"path": "", "op": "exists"}]}, "non-empty"),
        ({"event_type": "click", "properties": [{"op": "exists"}]}, "non-empty string 'path'"),
        ({"event_type": "click", "properties": [{"path": "a..b", "op": "exists"}]}, "empty part"),
        ({"event_type": "click", "properties": [{"path": ".a", "op": "exists"}]}, "empty part"),
        ({"event_type": "click", "properties": [{"path": "a", "op": "equals"}]}, "needs a 'value'"),
        (
            {"event_type": "click", "properties": [{"path": "a", "op": "contains"}]},
            "needs a 'value'",
        ),
        (
            {"event_type": "click", "properties": [{"path": "a", "op": "gt", "value": "3"}]},
            "op 'gt' needs a number 'value'",
        ),
        (
            {"event_type": "click", "properties": [{"path": "a", "op": "lt", "value": True}]},
            "op 'lt' needs a number 'value'",
        ),
        (
            {"event_type": "click", "properties": [{"path": "a", "op": "exists", "x": 1}]},
            "property 0 has unknown keys ['x']",
        ),
    ],
)
def test_refused_rules_say_why(rule: dict[str, Any], reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_event_rule(rule)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (1, 1.0, True),
        (True, 1, False),
        (1, True, False),
        (False, False, True),
        ([1, True], [1, True], True),
        ([1, True], [True, 1], False),
        ({"a": [1]}, {"a": [1.0]}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ("1", 1, False),
        (None, None, True),
        (None, 0, False),
        ([], {}, False),
    ],
)
def test_json_equal(a: Any, b: Any, expected: bool) -> None:
    assert json_equal(a, b) is expected
    assert json_equal(b, a) is expected


def test_rules_compare_by_content() -> None:
    assert compile_event_rule({"event_type": "click"}) == EventRule("click")


def _nested_value(levels: int) -> Any:
    value: Any = 1
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


def test_a_value_nested_up_to_the_limit_compares_without_deep_recursion() -> None:
    value = _nested_value(MAX_VALUE_NESTING)
    rule = compile_event_rule(
        {"event_type": "custom", "properties": [{"path": "v", "op": "equals", "value": value}]}
    )
    assert rule.properties[0].holds({"v": _nested_value(MAX_VALUE_NESTING)})
    deep_event_value = _nested_value(5_000)
    assert not rule.properties[0].holds({"v": deep_event_value})
    contains = compile_event_rule(
        {"event_type": "custom", "properties": [{"path": "v", "op": "contains", "value": value}]}
    )
    assert not contains.properties[0].holds({"v": [deep_event_value]})


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (
            {
                "event_type": "custom",
                "properties": [
                    {"path": "v", "op": "equals", "value": _nested_value(MAX_VALUE_NESTING + 1)}
                ],
            },
            f"nests lists and objects more than {MAX_VALUE_NESTING} deep",
        ),
        (
            {
                "event_type": "custom",
                "properties": [{"path": "v", "op": "contains", "value": _nested_value(900)}],
            },
            "nests lists and objects more than",
        ),
        (
            {
                "event_type": "click",
                "properties": [{"path": "p", "op": "exists"}] * (MAX_PREDICATES + 1),
            },
            f"at most {MAX_PREDICATES} are allowed",
        ),
    ],
)
def test_oversized_rules_are_refused(rule: dict[str, Any], reason: str) -> None:
    with pytest.raises(DefinitionError, match=reason):
        compile_event_rule(rule)

"""The definition catalog: validation, version history, forward-only matching, one page
per pattern, and the matcher cache."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsstream.core.enrich import (
    Catalog,
    DefinitionError,
    parse_definition,
    parse_definition_key,
)

BUTTON = "body > main > form#checkout > button.btn[type=submit]"


def definition(
    kind: str,
    definition_id: str,
    rule: dict[str, Any],
    *,
    state: str = "active",
    created: int = 1,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": definition_id,
        "name": f"{kind} {definition_id}",
        "description": None,
        "state": state,
        "rule": orjson.dumps(rule).decode(),
        "created_time": created,
        "created_by": "someone@example.com",
        "modified_time": created,
        "modified_by": None,
        "fs_link_id": None,
        "is_user_defined": None,
        **fields,
    }


def element(definition_id: str, selector: str, **kw: Any) -> dict[str, Any]:
    return definition("element", definition_id, {"selector": selector}, **kw)


def page(definition_id: str, url: str, **kw: Any) -> dict[str, Any]:
    return definition("page", definition_id, {"url": url}, **kw)


def elements_at(catalog: Catalog, ts: int, raw: str = BUTTON) -> tuple[str, ...]:
    return catalog.matcher_at(ts).elements.match(raw)


def page_at(catalog: Catalog, ts: int, url: str) -> str | None:
    return catalog.matcher_at(ts).pages.match({"full_url": url})


# -- validation ---------------------------------------------------------------


def test_valid_definitions_are_applied_and_match() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button.btn"), 1000)
    catalog.apply(
        "page", "p1", page("p1", "/checkout", fs_link_id="abc", is_user_defined=True), 1000
    )
    catalog.apply("event", "v1", definition("event", "v1", {"event_type": "click"}), 1000)
    catalog.apply(
        "event", "v2", definition("event", "v2", {"event_type": "click"}, state="archived"), 1000
    )
    assert [(d.kind, d.id, d.state) for d in catalog.current()] == [
        ("element", "e1", "active"),
        ("event", "v1", "active"),
        ("event", "v2", "archived"),
        ("page", "p1", "active"),
    ]
    matcher = catalog.matcher_at(1000)
    assert matcher.elements.match(BUTTON) == ("e1",)
    assert matcher.pages.match({"full_url": "https://shop.example.com/checkout"}) == "p1"
    assert matcher.events.match("click", {}, ("e1",), "p1") == ["v1"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (
            {**element("e1", "a"), "rule": "{not json"},
            "element definition 'e1': rule is not valid JSON",
        ),
        ({**element("e1", "a"), "rule": "[1]"}, "rule must be a JSON object"),
        ({**element("e1", "a"), "rule": {"selector": "a"}}, "'rule' must be a JSON string"),
        ({**element("e1", "a"), "kind": "widget"}, "definition 'e1': unknown kind 'widget'"),
        ({**element("e1", "a"), "state": "deleted"}, "state must be 'active' or 'archived'"),
        ({**element("e1", "a"), "id": ""}, "needs a non-empty string 'id'"),
        ({**element("e1", "a"), "name": None}, "'name' must be a string"),
        ({**element("e1", "a"), "created_time": "1"}, "'created_time' must be an integer"),
        ({**element("e1", "a"), "modified_time": True}, "'modified_time' must be an integer"),
        ({**element("e1", "a"), "description": 3}, "'description' must be a str or null"),
        ({**page("p1", "/"), "is_user_defined": "yes"}, "'is_user_defined' must be a bool"),
        (element("e1", "li:nth-child(2)"), "element definition 'e1': selector 'li:nth-child(2)'"),
        (element("e1", "a + b"), "sibling combinator"),
        (element("e1", "a:hover"), "unknown or undecidable pseudo-class ':hover'"),
        (definition("element", "e1", {"css": "a"}), "element rule must be {'selector': ...}"),
        (definition("element", "e1", {"selector": "a", "x": 1}), "got keys ['selector', 'x']"),
        (page("p1", "/prod*"), "page definition 'p1': url pattern '/prod*'"),
        (definition("page", "p1", {"path": "/"}), "page rule must be {'url': ...}"),
        (definition("event", "v1", {"element_definition_id": "e"}), "'event_type'"),
        (
            definition("event", "v1", {"event_type": "click", "properties": [{"path": ""}]}),
            "event definition 'v1': event rule property 0",
        ),
        ("not a mapping", "a definition must be an object"),
    ],
)
def test_invalid_definitions_are_refused_with_the_reason(data: Any, reason: str) -> None:
    catalog = Catalog()
    with pytest.raises(DefinitionError) as caught:
        catalog.apply("element", "e1", data, 1)
    assert reason in str(caught.value)
    assert catalog.versions() == [] and catalog.current() == []
    assert catalog.matcher_at(1).elements.match(BUTTON) == ()


def test_definition_error_is_a_value_error() -> None:
    assert issubclass(DefinitionError, ValueError)


def test_to_record_round_trips() -> None:
    data = page("p1", "/x", fs_link_id="link", is_user_defined=True)
    parsed = parse_definition(data)
    assert parsed.to_record() == data
    assert parse_definition(parsed.to_record()) == parsed


@pytest.mark.parametrize(
    ("key", "expected"),
    [("element:e1", ("element", "e1")), ("page:a:b", ("page", "a:b"))],
)
def test_definition_keys(key: str, expected: tuple[str, str]) -> None:
    assert parse_definition_key(key) == expected


@pytest.mark.parametrize("key", ["element", "widget:1", "page:", ":1", ""])
def test_bad_definition_keys(key: str) -> None:
    with pytest.raises(DefinitionError, match="is not '<kind>:<id>'"):
        parse_definition_key(key)


def test_unknown_kind_and_mismatched_key_are_refused() -> None:
    catalog = Catalog()
    with pytest.raises(DefinitionError, match="unknown definition kind 'widget'"):
        catalog.apply("widget", "e1", None, 1)
    with pytest.raises(DefinitionError, match="record for element:e2 carries the definition"):
        catalog.apply("element", "e2", element("e1", "a"), 1)
    with pytest.raises(DefinitionError, match="carries the definition page:e1"):
        catalog.apply_record("element:e1", page("e1", "/"), 1)
    assert catalog.versions() == []


# -- forward only ---------------------------------------------------------------


def test_an_event_before_a_definition_is_created_is_not_matched() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    assert elements_at(catalog, 999) == ()
    assert elements_at(catalog, 1000) == ("e1",)
    assert elements_at(catalog, 10**12) == ("e1",)


def test_a_modification_changes_only_later_timestamps() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    before = catalog.matcher_at(1500)
    catalog.apply("element", "e1", element("e1", "a"), 2000)
    assert elements_at(catalog, 1500) == ("e1",)
    assert elements_at(catalog, 1999) == ("e1",)
    assert elements_at(catalog, 2000) == ()
    assert elements_at(catalog, 2000, "body > a") == ("e1",)
    assert elements_at(catalog, 1999, "body > a") == ()
    assert catalog.matcher_at(1500) is before


def test_archive_and_delete_stop_matching_from_then_on() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    catalog.apply("element", "e2", element("e2", ".btn"), 1000)
    catalog.apply("element", "e1", element("e1", "button", state="archived"), 2000)
    catalog.apply_record("element:e2", None, 3000)
    assert elements_at(catalog, 1999) == ("e2", "e1")
    assert elements_at(catalog, 2000) == ("e2",)
    assert elements_at(catalog, 2999) == ("e2",)
    assert elements_at(catalog, 3000) == ()
    catalog.apply("element", "e1", element("e1", "button"), 4000)
    assert elements_at(catalog, 3999) == ()
    assert elements_at(catalog, 4000) == ("e1",)


def test_a_late_record_takes_effect_at_the_newest_applied_timestamp() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 5000)
    catalog.apply("element", "e2", element("e2", ".btn"), 3000)
    assert elements_at(catalog, 4000) == ()
    assert elements_at(catalog, 5000) == ("e2", "e1")
    assert [v.valid_from_ms for v in catalog.versions()] == [5000, 5000]
    assert catalog.high_water_ms == 5000


def test_two_versions_at_one_timestamp_keep_the_last() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "a"), 1000)
    catalog.matcher_at(1000)
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    assert elements_at(catalog, 1000) == ("e1",)
    assert len(catalog.versions()) == 1


def test_reapplying_the_same_definition_adds_no_version() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    catalog.apply("element", "e1", element("e1", "button"), 2000)
    catalog.apply("element", "e9", None, 2500)
    assert len(catalog.versions()) == 1
    assert catalog.high_water_ms == 1000


@given(
    st.lists(
        st.tuples(
            st.integers(1, 60),
            st.sampled_from(["button", "a", "form button", None, "archived"]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_applying_a_version_never_changes_what_earlier_timestamps_match(
    steps: list[tuple[int, str | None]],
) -> None:
    catalog = Catalog()
    at = 0
    for gap, selector in steps:
        before = {ts: elements_at(catalog, ts) for ts in range(0, at + 1, 7)}
        at += gap
        if selector is None:
            catalog.apply("element", "e1", None, at)
        elif selector == "archived":
            catalog.apply("element", "e1", element("e1", "button", state="archived"), at)
        else:
            catalog.apply("element", "e1", element("e1", selector), at)
        after = {ts: elements_at(catalog, ts) for ts in range(0, at, 7) if ts in before}
        assert after == {ts: m for ts, m in before.items() if ts < at}
        expected = ("e1",) if selector in ("button", "form button") else ()
        assert elements_at(catalog, at) == expected


# -- one active page per pattern -------------------------------------------------


def test_a_second_active_page_with_the_same_pattern_is_refused() -> None:
    catalog = Catalog()
    catalog.apply("page", "p1", page("p1", "shop.example.com/checkout"), 1000)
    with pytest.raises(DefinitionError) as caught:
        catalog.apply("page", "p2", page("p2", "https://SHOP.example.com/checkout/"), 2000)
    message = str(caught.value)
    assert "page definition 'p2'" in message
    assert "'shop.example.com/checkout'" in message
    assert "already used by active page 'p1'" in message
    assert [d.id for d in catalog.current()] == ["p1"]
    assert page_at(catalog, 2500, "https://shop.example.com/checkout") == "p1"
    assert catalog.high_water_ms == 1000


def test_the_same_pattern_is_accepted_after_the_first_page_is_archived() -> None:
    catalog = Catalog()
    catalog.apply("page", "p1", page("p1", "/checkout"), 1000)
    catalog.apply("page", "p2", page("p2", "/checkout", state="archived"), 1500)
    with pytest.raises(DefinitionError):
        catalog.apply("page", "p2", page("p2", "/checkout"), 1800)
    catalog.apply("page", "p1", page("p1", "/checkout", state="archived"), 2000)
    catalog.apply("page", "p2", page("p2", "/checkout/"), 3000)
    url = "https://x.com/checkout"
    assert page_at(catalog, 1999, url) == "p1"
    assert page_at(catalog, 2500, url) is None
    assert page_at(catalog, 3000, url) == "p2"
    with pytest.raises(DefinitionError, match="already used by active page 'p2'"):
        catalog.apply("page", "p1", page("p1", "/checkout"), 4000)


def test_the_same_pattern_is_accepted_after_the_first_page_is_deleted() -> None:
    catalog = Catalog()
    catalog.apply("page", "p1", page("p1", "/a?x=1&y=2"), 1000)
    with pytest.raises(DefinitionError):
        catalog.apply("page", "p2", page("p2", "/a?y=2&x=1"), 1500)
    catalog.apply_record("page:p1", None, 2000)
    catalog.apply("page", "p2", page("p2", "/a?y=2&x=1"), 2000)
    assert page_at(catalog, 1999, "https://x.com/a?x=1&y=2") == "p1"
    assert page_at(catalog, 2000, "https://x.com/a?x=1&y=2") == "p2"


def test_the_same_pattern_is_accepted_after_the_first_page_changes_pattern() -> None:
    catalog = Catalog()
    catalog.apply("page", "p1", page("p1", "/a"), 1000)
    catalog.apply("page", "p1", page("p1", "/b"), 2000)
    catalog.apply("page", "p2", page("p2", "/a"), 3000)
    assert page_at(catalog, 3000, "https://x.com/a") == "p2"
    assert page_at(catalog, 3000, "https://x.com/b") == "p1"


def test_a_page_may_be_updated_keeping_its_own_pattern() -> None:
    catalog = Catalog()
    catalog.apply("page", "p1", page("p1", "/a", name="Old"), 1000)
    catalog.apply("page", "p1", page("p1", "/a/", name="New"), 2000)
    assert [d.name for d in catalog.current()] == ["New"]


# -- queries and cache -----------------------------------------------------------


def test_current_lists_archived_but_not_deleted_definitions() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "a", state="archived"), 1)
    catalog.apply("element", "e2", element("e2", "a"), 1)
    catalog.apply("page", "p1", page("p1", "/"), 1)
    catalog.apply("page", "p1", None, 2)
    assert [(d.kind, d.id) for d in catalog.current()] == [("element", "e1"), ("element", "e2")]
    assert [d.id for d in catalog.definitions_at(1)] == ["e2", "p1"]
    assert [d.id for d in catalog.definitions_at(2)] == ["e2"]
    assert catalog.definitions_at(0) == []


def test_an_empty_catalog_matches_nothing() -> None:
    catalog = Catalog()
    matcher = catalog.matcher_at(123)
    assert matcher.elements.match(BUTTON) == ()
    assert matcher.pages.match({"full_url": "https://x.com/"}) is None
    assert matcher.events.match("click", {}, (), None) == []
    assert catalog.high_water_ms is None


def test_one_matcher_per_version_window() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    catalog.apply("element", "e2", element("e2", "a"), 2000)
    first = catalog.matcher_at(1000)
    assert catalog.matcher_at(1999) is first
    second = catalog.matcher_at(2000)
    assert second is not first
    assert catalog.matcher_at(10**15) is second
    assert catalog.matcher_at(1500) is first
    assert catalog.matcher_at(999) is catalog.matcher_at(-5)


def test_a_change_of_one_kind_keeps_the_other_kinds_matchers() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    catalog.apply("page", "p1", page("p1", "/"), 1000)
    first = catalog.matcher_at(1000)
    first.elements.match(BUTTON)
    catalog.apply("page", "p2", page("p2", "/x"), 2000)
    second = catalog.matcher_at(2000)
    assert second.elements is first.elements
    assert second.pages is not first.pages
    assert second.pages.match({"full_url": "https://a.com/x"}) == "p2"
    assert first.pages.match({"full_url": "https://a.com/x"}) is None


def test_a_replaced_version_at_the_same_timestamp_is_not_served_from_cache() -> None:
    catalog = Catalog()
    catalog.apply("page", "p1", page("p1", "/a"), 1000)
    assert page_at(catalog, 1000, "https://x.com/a") == "p1"
    catalog.apply("page", "p1", page("p1", "/b"), 1000)
    assert page_at(catalog, 1000, "https://x.com/a") is None
    assert page_at(catalog, 1000, "https://x.com/b") == "p1"


def test_prune_keeps_answers_from_its_timestamp_on() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "a"), 1000)
    catalog.apply("element", "e1", element("e1", "button"), 2000)
    catalog.apply("element", "e2", element("e2", ".btn"), 2500)
    catalog.apply("element", "e2", None, 2600)
    catalog.apply("element", "e3", element("e3", "form button"), 3000)
    answers = {ts: elements_at(catalog, ts) for ts in (2600, 2999, 3000, 4000)}
    catalog.prune(2700)
    assert {ts: elements_at(catalog, ts) for ts in answers} == answers
    assert [(v.definition_id, v.valid_from_ms) for v in catalog.versions()] == [
        ("e1", 2000),
        ("e3", 3000),
    ]


@pytest.mark.parametrize("nesting", [241, 242, 1000])
def test_a_deeply_nested_selector_is_refused_and_leaves_the_catalog_unchanged(
    nesting: int,
) -> None:
    catalog = Catalog()
    catalog.apply("element", "ok", definition("element", "ok", {"selector": "button"}), 10)
    selector = ":is(" * nesting + "a" + ")" * nesting
    reason = "nested more than 32 deep" if len(selector) <= 4096 else "characters is longer"
    with pytest.raises(DefinitionError, match=reason):
        catalog.apply("element", "deep", definition("element", "deep", {"selector": selector}), 20)
    assert [d.id for d in catalog.current()] == ["ok"]
    assert catalog.matcher_at(30).elements.match(BUTTON) == ("ok",)

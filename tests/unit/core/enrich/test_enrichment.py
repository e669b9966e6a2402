"""Enriching events: the output fields, ranking and tie-breaks of all three kinds, and
properties that hold for any event."""

from __future__ import annotations

import copy
import random
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsstream.core.enrich import Catalog, Matcher, enrich, parse_definition
from fsstream.devtools.enrich_bench import benchmark_catalog, events, workload

CHECKOUT = "body > div#app > main > form#checkout > button.btn.btn-primary[type=submit]"
CHECKOUT_URL = {
    "full_url": "https://shop.example.com/checkout?step=2",
    "host": "shop.example.com",
    "path": "/checkout",
    "query": {"step": {"values": ["2"]}},
    "hash_path": "",
    "hash_query": {},
}


def definition(
    kind: str, definition_id: str, rule: dict[str, Any], *, created: int = 1
) -> dict[str, Any]:
    return {
        "kind": kind,
        "id": definition_id,
        "name": definition_id,
        "description": None,
        "state": "active",
        "rule": orjson.dumps(rule).decode(),
        "created_time": created,
        "created_by": None,
        "modified_time": created,
        "modified_by": None,
        "fs_link_id": None,
        "is_user_defined": None,
    }


def element(definition_id: str, selector: str, created: int = 1) -> dict[str, Any]:
    return definition("element", definition_id, {"selector": selector}, created=created)


def page(definition_id: str, url: str, created: int = 1) -> dict[str, Any]:
    return definition("page", definition_id, {"url": url}, created=created)


def event(definition_id: str, created: int = 1, **rule: Any) -> dict[str, Any]:
    return definition("event", definition_id, rule, created=created)


def matcher(*definitions: dict[str, Any]) -> Matcher:
    return Matcher.of([parse_definition(d) for d in definitions])


def click(raw_selector: str = CHECKOUT, **props: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    target = {"raw_selector": raw_selector, "text": "Pay", "masked": False}
    return {"target": target, **props}, {"url": copy.deepcopy(CHECKOUT_URL)}


# -- outputs -----------------------------------------------------------------------


def test_all_outputs_of_a_click() -> None:
    m = matcher(
        element("e-btn", ".btn"),
        element("e-form", "#checkout button"),
        element("e-link", "a"),
        page("p-checkout", "/checkout"),
        event("v-click", event_type="click"),
        event("v-pay", event_type="click", element_definition_id="e-btn"),
        event("v-change", event_type="change"),
    )
    props, source = click()
    result = enrich("click", props, source, m)
    assert result == (props, source)
    assert source["page_definition_id"] == "p-checkout"
    assert props["target"]["element_definition_id"] == "e-form"
    assert props["target"]["additional_element_definition_ids"] == ["e-btn"]
    assert props["event_definition_id"] == "v-pay"
    assert props["additional_event_definition_ids"] == ["v-click"]


def test_nothing_is_added_when_no_definition_is_loaded() -> None:
    props, source = click()
    original = copy.deepcopy((props, source))
    enrich("click", props, source, matcher())
    assert (props, source) == original


def test_no_match_adds_no_id_and_no_list() -> None:
    m = matcher(element("e1", "span"), page("p1", "/elsewhere"), event("v1", event_type="change"))
    props, source = click()
    enrich("click", props, source, m)
    assert "element_definition_id" not in props["target"]
    assert "additional_element_definition_ids" not in props["target"]
    assert "event_definition_id" not in props
    assert "additional_event_definition_ids" not in props
    assert "page_definition_id" not in source


def test_ids_the_source_set_are_kept_for_kinds_with_no_definitions() -> None:
    props, source = click()
    props["target"]["element_definition_id"] = "src-el"
    props["target"]["additional_element_definition_ids"] = ["src-el-2"]
    props["event_definition_id"] = "src-ev"
    source["page_definition_id"] = "src-page"
    original = copy.deepcopy((props, source))
    enrich("click", props, source, matcher())
    assert (props, source) == original


def test_event_definitions_see_the_element_and_page_the_source_set() -> None:
    m = matcher(
        event("v-el", event_type="click", element_definition_id="src-el-2"),
        event("v-page", event_type="click", page_definition_id="src-page"),
    )
    props, source = click()
    props["target"]["element_definition_id"] = "src-el"
    props["target"]["additional_element_definition_ids"] = ["src-el-2"]
    props["event_definition_id"] = "src-ev"
    source["page_definition_id"] = "src-page"
    enrich("click", props, source, m)
    assert props["target"]["element_definition_id"] == "src-el"
    assert source["page_definition_id"] == "src-page"
    assert props["event_definition_id"] == "v-el"
    assert props["additional_event_definition_ids"] == ["v-page"]


def test_a_single_match_leaves_the_additional_lists_empty() -> None:
    m = matcher(element("e1", "button"), event("v1", event_type="click"))
    props, source = click()
    enrich("click", props, source, m)
    assert props["target"]["element_definition_id"] == "e1"
    assert props["target"]["additional_element_definition_ids"] == []
    assert props["event_definition_id"] == "v1"
    assert props["additional_event_definition_ids"] == []


def test_events_without_a_target_get_no_element_fields() -> None:
    m = matcher(element("e1", "*"), event("v1", event_type="navigate"))
    props: dict[str, Any] = {"navigate_reason": "reload"}
    source: dict[str, Any] = {"url": copy.deepcopy(CHECKOUT_URL)}
    enrich("navigate", props, source, m)
    assert props == {
        "navigate_reason": "reload",
        "event_definition_id": "v1",
        "additional_event_definition_ids": [],
    }


def test_a_target_without_a_raw_selector_gets_no_element_fields() -> None:
    m = matcher(element("e1", "*"))
    props: dict[str, Any] = {"target": {"text": "x"}}
    enrich("click", props, {}, m)
    assert props["target"] == {"text": "x"}


def test_an_unparseable_raw_selector_matches_no_element() -> None:
    m = matcher(element("e1", "*"))
    props, source = click("div >> span")
    enrich("click", props, source, m)
    assert "additional_element_definition_ids" not in props["target"]
    assert "element_definition_id" not in props["target"]


def test_mobile_events_without_a_url_get_no_page() -> None:
    m = matcher(page("p1", "/**"))
    props: dict[str, Any] = {}
    source: dict[str, Any] = {"app_screen_name": "home"}
    enrich("custom", props, source, m)
    assert "page_definition_id" not in source


def test_ids_left_by_an_earlier_enrichment_are_replaced() -> None:
    props, source = click()
    props["target"]["element_definition_id"] = "stale"
    props["target"]["additional_element_definition_ids"] = ["stale"]
    props["event_definition_id"] = "stale"
    props["additional_event_definition_ids"] = ["stale"]
    source["page_definition_id"] = "stale"
    m = matcher(element("e1", "span"), page("p1", "/elsewhere"), event("v1", event_type="click"))
    enrich("click", props, source, m)
    assert "additional_element_definition_ids" not in props["target"]
    assert "element_definition_id" not in props["target"]
    assert props["event_definition_id"] == "v1"
    assert props["additional_event_definition_ids"] == []
    assert "page_definition_id" not in source


def test_output_lists_are_never_shared_between_events() -> None:
    m = matcher(element("e1", "button"), element("e2", ".btn"))
    first, source1 = click()
    second, source2 = click()
    enrich("click", first, source1, m)
    enrich("click", second, source2, m)
    first["target"]["additional_element_definition_ids"].append("mutated")
    assert second["target"]["additional_element_definition_ids"] == ["e1"]


# -- event definitions use the page and element results -----------------------------


def test_event_definitions_see_additional_element_ids_and_the_page() -> None:
    m = matcher(
        element("e-specific", "#checkout > button.btn"),
        element("e-generic", "button"),
        page("p-checkout", "/checkout"),
        page("p-any", "/**"),
        event("v-generic-el", event_type="click", element_definition_id="e-generic"),
        event("v-page", event_type="click", page_definition_id="p-checkout"),
        event("v-other-page", event_type="click", page_definition_id="p-any"),
        event("v-missing-el", event_type="click", element_definition_id="e-unknown"),
    )
    props, source = click()
    enrich("click", props, source, m)
    assert props["target"]["element_definition_id"] == "e-specific"
    assert source["page_definition_id"] == "p-checkout"
    assert props["event_definition_id"] == "v-generic-el"
    assert props["additional_event_definition_ids"] == ["v-page"]


def test_event_property_predicates_read_event_properties() -> None:
    m = matcher(
        event(
            "v-big-order",
            event_type="custom",
            properties=[
                {"path": "event_name", "op": "equals", "value": "Order Completed"},
                {"path": "event_properties.amount", "op": "gt", "value": 100},
            ],
        ),
        event(
            "v-order",
            event_type="custom",
            properties=[{"path": "event_name", "op": "contains", "value": "Order"}],
        ),
    )
    big: dict[str, Any] = {"event_name": "Order Completed", "event_properties": {"amount": 150}}
    small: dict[str, Any] = {"event_name": "Order Completed", "event_properties": {"amount": 50}}
    enrich("custom", big, {}, m)
    enrich("custom", small, {}, m)
    assert (big["event_definition_id"], big["additional_event_definition_ids"]) == (
        "v-big-order",
        ["v-order"],
    )
    assert (small["event_definition_id"], small["additional_event_definition_ids"]) == (
        "v-order",
        [],
    )


# -- ranking and tie-breaks ------------------------------------------------------------


def element_ranking(*definitions: dict[str, Any], raw: str = CHECKOUT) -> list[str]:
    props, source = click(raw)
    enrich("click", props, source, matcher(*definitions))
    target = props["target"]
    best = [target["element_definition_id"]] if "element_definition_id" in target else []
    return best + target["additional_element_definition_ids"]


@pytest.mark.parametrize(
    ("selectors", "expected"),
    [
        (
            {"a": ".btn", "b": "button.btn", "c": "#checkout button", "d": "button", "e": "*"},
            ["c", "b", "a", "d", "e"],
        ),
        (
            {
                "is": ":is(#checkout) button",
                "where": ":where(#checkout) button",
                "plain": "form button",
            },
            ["is", "plain", "where"],
        ),
        (
            {"where2": ":where(.x, #checkout) > button", "type": "button", "cls": ".btn-primary"},
            ["cls", "where2", "type"],
        ),
        (
            {"not": "button:not(#other)", "id": "#checkout > *"},
            ["not", "id"],
        ),
        (
            {"list": "a, #checkout > button", "classes": ".btn.btn-primary"},
            ["list", "classes"],
        ),
        (
            {"list": "#nope, button", "classes": ".btn"},
            ["classes", "list"],
        ),
        (
            {"attr": "[type=submit]", "cls": ".btn"},
            ["attr", "cls"],
        ),
        (
            {"percent": ".btn-primary", "nomatch": ".w-1\\/2"},
            ["percent"],
        ),
    ],
)
def test_elements_rank_by_specificity(selectors: dict[str, str], expected: list[str]) -> None:
    definitions = [element(i, s, created=n) for n, (i, s) in enumerate(selectors.items())]
    assert element_ranking(*definitions) == expected
    assert element_ranking(*reversed(definitions)) == expected


def test_equal_specificity_ranks_the_deeper_match_first() -> None:
    ranking = element_ranking(
        element("shallow", "button", created=1),
        element("deeper", ":where(form) button", created=5),
        element("deepest", "* > * > :where(main > form) > button", created=9),
    )
    assert ranking == ["deepest", "deeper", "shallow"]


def test_equal_specificity_and_depth_rank_earlier_created_then_smaller_id() -> None:
    ranking = element_ranking(
        element("z-old", "main button", created=1),
        element("b-new", "form button", created=2),
        element("a-new", "div button", created=2),
    )
    assert ranking == ["z-old", "a-new", "b-new"]


def page_ranking(url: str, *definitions: dict[str, Any]) -> str | None:
    props: dict[str, Any] = {}
    source: dict[str, Any] = {"url": {"full_url": url}}
    enrich("navigate", props, source, matcher(*definitions))
    return source.get("page_definition_id")


def test_pages_rank_most_literal_first_and_only_one_is_written() -> None:
    patterns = [
        "/**",
        "/products/**",
        "/products/*/*",
        "/products/shoes/**",
        "/products/shoes/*",
        "/products/shoes/42",
        "/products/shoes/42?color=red",
    ]
    url = "https://shop.example.com/products/shoes/42?color=red"
    for n in range(1, len(patterns) + 1):
        definitions = [page(f"p{i}", p) for i, p in enumerate(patterns[:n])]
        assert page_ranking(url, *definitions) == f"p{n - 1}"
        assert page_ranking(url, *reversed(definitions)) == f"p{n - 1}"


def test_equally_literal_pages_rank_earlier_created_then_smaller_id() -> None:
    url = "https://x.com/a/b"
    assert page_ranking(url, page("p2", "/a/*", created=1), page("p1", "/*/b", created=2)) == "p2"
    assert page_ranking(url, page("p2", "/a/*", created=1), page("p1", "/*/b", created=1)) == "p1"


def test_events_rank_by_predicate_count_then_created_then_id() -> None:
    m = matcher(
        element("e1", "button"),
        page("p1", "/checkout"),
        event("v-type", event_type="click", created=0),
        event("v-el", event_type="click", element_definition_id="e1", created=3),
        event("v-page", event_type="click", page_definition_id="p1", created=2),
        event("v-page-b", event_type="click", page_definition_id="p1", created=2),
        event(
            "v-all",
            event_type="click",
            element_definition_id="e1",
            page_definition_id="p1",
            properties=[{"path": "target.text", "op": "exists"}],
            created=9,
        ),
    )
    props, source = click()
    enrich("click", props, source, m)
    ranking = [props["event_definition_id"], *props["additional_event_definition_ids"]]
    assert ranking == ["v-all", "v-page", "v-page-b", "v-el", "v-type"]


# -- forward only, end to end ----------------------------------------------------------


def test_enrichment_uses_the_versions_active_at_the_record_timestamp() -> None:
    catalog = Catalog()
    catalog.apply("element", "e1", element("e1", "button"), 1000)
    catalog.apply("event", "v1", event("v1", event_type="click"), 1000)
    catalog.apply("event", "v2", event("v2", event_type="click", element_definition_id="e1"), 2000)
    catalog.apply("element", "e1", None, 3000)

    def ids_at(ts: int) -> tuple[Any, ...]:
        props, source = click()
        enrich("click", props, source, catalog.matcher_at(ts))
        return (
            props["target"].get("element_definition_id"),
            props.get("event_definition_id"),
            props.get("additional_event_definition_ids"),
        )

    assert ids_at(999) == (None, None, None)
    assert ids_at(1000) == ("e1", "v1", [])
    assert ids_at(2000) == ("e1", "v2", ["v1"])
    assert ids_at(3000) == (None, "v1", [])


# -- properties --------------------------------------------------------------------------

_SELECTORS = ["button", ".btn", "#checkout button", "form > button", ":is(main, nav) button", "a"]
_PATTERNS = ["/", "/checkout", "/checkout/**", "/*", "shop.example.com/**", "/products/*"]
_EVENT_RULES: list[dict[str, Any]] = [
    {"event_type": "click"},
    {"event_type": "click", "element_definition_id": "e0"},
    {"event_type": "click", "page_definition_id": "p1"},
    {"event_type": "navigate"},
    {
        "event_type": "click",
        "properties": [{"path": "target.text", "op": "equals", "value": "Pay"}],
    },
]


@st.composite
def definition_sets(draw: st.DrawFn) -> list[tuple[str, str, dict[str, Any]]]:
    created = st.integers(0, 3)
    chosen: list[tuple[str, str, dict[str, Any]]] = []
    for i, selector in enumerate(_SELECTORS):
        if draw(st.booleans()):
            chosen.append(("element", f"e{i}", element(f"e{i}", selector, draw(created))))
    for i, pattern in enumerate(_PATTERNS):
        if draw(st.booleans()):
            chosen.append(("page", f"p{i}", page(f"p{i}", pattern, draw(created))))
    for i, rule in enumerate(_EVENT_RULES):
        if draw(st.booleans()):
            chosen.append(("event", f"v{i}", event(f"v{i}", draw(created), **rule)))
    return chosen


_SAMPLE_EVENTS: list[tuple[str, str | None, str]] = [
    ("click", CHECKOUT, "https://shop.example.com/checkout"),
    ("click", "body > nav > a.btn", "https://shop.example.com/products/1"),
    ("click", "body > main > button", "https://other.example.org/"),
    ("navigate", None, "https://shop.example.com/checkout/done"),
]


def _enrich_samples(m: Matcher) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for event_type, raw, url in _SAMPLE_EVENTS:
        props: dict[str, Any] = (
            {} if raw is None else {"target": {"raw_selector": raw, "text": "Pay"}}
        )
        source: dict[str, Any] = {"url": {"full_url": url}}
        out.append(enrich(event_type, props, source, m))
    return out


@given(definition_sets(), st.randoms(use_true_random=False))
def test_the_order_definitions_are_applied_at_one_timestamp_does_not_matter(
    chosen: list[tuple[str, str, dict[str, Any]]], rng: random.Random
) -> None:
    shuffled = list(chosen)
    rng.shuffle(shuffled)
    results = []
    for order in (chosen, shuffled):
        catalog = Catalog()
        for kind, definition_id, data in order:
            catalog.apply(kind, definition_id, data, 1000)
        results.append(_enrich_samples(catalog.matcher_at(1000)))
    assert results[0] == results[1]


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_OUTPUT_KEYS = {
    "event_definition_id",
    "additional_event_definition_ids",
    "element_definition_id",
    "additional_element_definition_ids",
    "page_definition_id",
}


@st.composite
def raw_events(draw: st.DrawFn) -> tuple[str, dict[str, Any], dict[str, Any]]:
    event_type = draw(st.sampled_from(["click", "navigate", "custom", "change"]))
    props: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), _JSON, max_size=4))
    if draw(st.booleans()):
        target: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), _JSON, max_size=3))
        if draw(st.booleans()):
            target["raw_selector"] = draw(
                st.sampled_from([CHECKOUT, "body > a.btn", "main > button#x", "??"])
            )
        props["target"] = target
    source: dict[str, Any] = draw(st.dictionaries(st.text(max_size=8), _JSON, max_size=3))
    if draw(st.booleans()):
        source["url"] = draw(
            st.sampled_from([copy.deepcopy(CHECKOUT_URL), {"full_url": "https://a.b/x"}, {}])
        )
    return event_type, props, source


def _without_outputs(value: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in value.items() if k not in _OUTPUT_KEYS}
    if isinstance(kept.get("target"), dict):
        kept["target"] = _without_outputs(kept["target"])
    return kept


_PROPERTY_MATCHER = Matcher.of(
    [parse_definition(element(f"e{i}", s)) for i, s in enumerate(_SELECTORS)]
    + [parse_definition(page(f"p{i}", p)) for i, p in enumerate(_PATTERNS)]
    + [parse_definition(event(f"v{i}", **r)) for i, r in enumerate(_EVENT_RULES)]
    + [parse_definition(element("all", "*")), parse_definition(page("any", "/**"))]
)


@given(raw_events())
def test_enrichment_keeps_every_other_key_and_is_idempotent(
    raw: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    event_type, props, source = raw
    original_props, original_source = copy.deepcopy(props), copy.deepcopy(source)
    enrich(event_type, props, source, _PROPERTY_MATCHER)
    assert _without_outputs(props) == _without_outputs(original_props)
    assert _without_outputs(source) == _without_outputs(original_source)
    assert ("event_definition_id" in props) == isinstance(
        props.get("additional_event_definition_ids"), list
    )
    target = props.get("target")
    if isinstance(target, dict):
        assert ("element_definition_id" in target) == isinstance(
            target.get("additional_element_definition_ids"), list
        )
    once = copy.deepcopy((props, source))
    enrich(event_type, props, source, _PROPERTY_MATCHER)
    assert (props, source) == once


def test_the_benchmark_workload_exercises_every_kind() -> None:
    catalog = benchmark_catalog()
    assert len(catalog.definitions_at(1000)) == 90
    rng = random.Random(1)
    batch = events(rng, workload(rng, n_selectors=200, n_urls=100), 2000)
    m = catalog.matcher_at(1000)
    for event_type, props, source in batch:
        enrich(event_type, props, source, m)
    with_target = [p["target"] for _, p, _ in batch if "target" in p]
    assert sum("element_definition_id" in t for t in with_target) > len(with_target) / 2
    assert any(t.get("additional_element_definition_ids") for t in with_target)
    assert sum("page_definition_id" in s for _, _, s in batch) > len(batch) / 2
    assert sum("event_definition_id" in p for _, p, _ in batch) > len(batch) / 2
    assert any(p.get("additional_event_definition_ids") for _, p, _ in batch)


def test_results_stay_right_when_the_caches_evict() -> None:
    catalog = Catalog(element_cache_size=2, page_cache_size=2)
    catalog.apply("element", "e-btn", element("e-btn", "button"), 1)
    catalog.apply("element", "e-a", element("e-a", "a"), 1)
    catalog.apply("page", "p-a", page("p-a", "/a"), 1)
    catalog.apply("page", "p-b", page("p-b", "/b/*"), 1)
    m = catalog.matcher_at(1)
    cases = [
        ("body > button", ("e-btn",), "https://x.com/a", "p-a"),
        ("body > a", ("e-a",), "https://x.com/b/1", "p-b"),
        ("body > span", (), "https://x.com/c", None),
    ]
    for _ in range(3):
        for raw, element_ids, url, page_id in cases:
            assert m.elements.match(raw) == element_ids
            assert m.pages.match({"full_url": url}) == page_id
    assert len(m.elements._cache) == 2
    assert len(m.pages._cache) == 2


def test_the_matching_benchmark_reports_linear_figures_for_every_point() -> None:
    from fsstream.devtools import enrich_bench as bench

    costs = bench.matching_costs((10, 2_000), (1, 50))
    assert [n for n, _ in costs["by_path_elements"]] == [10, 2_000]
    assert [n for n, _ in costs["by_definitions"]] == [1, 50]
    series = costs["by_path_elements"] + costs["by_definitions"]
    assert all(us > 0 for _, us in series)
    (_, short), (_, deep) = costs["by_path_elements"]
    assert deep < short * 200 * 4  # 200 times the path, within a generous factor
    lines = bench.describe_matching(costs)
    assert "by path elements" in lines[0] and "2000:" in lines[0]


@given(raw_events())
def test_with_no_definitions_an_event_keeps_exactly_what_the_source_sent(
    raw: tuple[str, dict[str, Any], dict[str, Any]],
) -> None:
    event_type, props, source = raw
    original = copy.deepcopy((props, source))
    enrich(event_type, props, source, matcher())
    assert (props, source) == original

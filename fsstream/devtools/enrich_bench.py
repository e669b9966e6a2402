"""Micro-benchmark of enrichment alone: ``python -m fsstream.devtools.enrich_bench``.

Builds a catalog of 50 element, 20 page and 20 event definitions and a stream of
varied events whose selectors and URLs repeat with a long-tailed distribution, as
real traffic does, then reports the time per event of ``matcher_at`` (once per raw
record of 20 events) plus ``enrich``, for a cold start and for warm caches.

``matching_costs`` times one uncached element match against deep paths and many
definitions, the worst case hostile events can ask for: it grows linearly with the
path's length and with the number of definitions.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from fsstream.core.enrich.catalog import Catalog
from fsstream.core.enrich.definitions import parse_definition
from fsstream.core.enrich.matcher import ElementMatcher, enrich

EventTuple = tuple[str, dict[str, Any], dict[str, Any]]

_TAGS = ["div", "section", "span", "ul", "li", "nav", "article", "p"]
_LEAF_TAGS = ["button", "a", "input", "img", "span", "label", "select", "li"]
_CLASSES = [
    "card",
    "btn",
    "btn-primary",
    "btn-secondary",
    "nav-item",
    "link",
    "product",
    "product-grid",
    "add-to-cart",
    "remove",
    "search-box",
    "hero",
    "footer-links",
    "menu",
    "active",
    "disabled",
    "w-1%2F2",
    "md%3Aflex",
    "text-sm",
    "px-4",
    "container",
    "row",
    "col",
    "modal",
    "close",
    "checkout",
    "cta",
    "banner",
    "price",
    "qty",
]
_IDS = ["app", "root", "checkout", "cart", "search", "signup", "login", "promo", "menu"]
_TEST_IDS = ["product-card", "product-buy", "nav-home", "cart-remove", "signup-submit"]
_ELEMENT_SELECTORS = [
    "button.add-to-cart",
    "button.btn.btn-primary",
    ".btn",
    "#checkout button",
    "form#checkout > button[type=submit]",
    "nav a",
    "nav > a.link",
    ":is(header, footer) a.link",
    ":where(#app) .card button",
    "[data-testid^=product-]",
    '[data-testid="cart-remove"]',
    "main .card:not(.disabled) button",
    "input.search-box",
    "input[type=email]",
    "a[href$='.pdf']",
    ".w-1\\/2",
    ".md\\:flex > span",
    "li.nav-item > a",
    "div.modal button.close",
    "section.hero .cta",
    "img",
    "a",
    "button",
    "ul.menu li a",
    ".price",
    "select.qty",
    "label",
    "#signup button[type=submit]",
    "#login input",
    "article.product a",
    ".container .row .col button",
    "div.banner",
    "#promo *",
    "button:not(.btn-secondary)",
    ".product-grid > div.card",
    "footer a",
    "header nav li",
    "[aria-label]",
    "span.text-sm",
    ".px-4 > a.link",
    "#cart .remove",
    "body > div#app main button",
    "div.card > button.btn",
    "a.link.active",
    ":is(.btn, .cta):not(.disabled)",
    "[class~=btn-primary]",
    "input:is([type=text], [type=email])",
    "#root a[href^='/products']",
    "p > span",
    "nav.menu a[aria-label*=home i]",
]
_HOSTS = ["shop.example.com", "www.example.com", "blog.example.com", "app.example.com"]
_PAGE_PATTERNS = [
    "/",
    "/products/**",
    "/products/*",
    "/products/*/reviews",
    "shop.example.com/checkout",
    "/checkout/**",
    "/cart?step=2",
    "/cart",
    "app.example.com/app#/orders/*",
    "app.example.com/app#/orders",
    "*.example.com/blog/**",
    "blog.example.com/blog/*/*",
    "/search?q",
    "/search?q&sort=price",
    "/account/settings",
    "/account/**",
    "/help/*",
    "www.example.com/",
    "/promo/summer?utm_source=mail",
    "/products/shoes/**",
]
_PATHS = [
    "/",
    "/products",
    "/products/shoes",
    "/products/shoes/{n}",
    "/products/{n}",
    "/products/{n}/reviews",
    "/checkout",
    "/checkout/payment",
    "/cart",
    "/search",
    "/account/settings",
    "/account/orders/{n}",
    "/help/faq",
    "/blog/2024/{n}",
    "/promo/summer",
    "/app",
]
_EVENT_RULES: list[dict[str, Any]] = [
    {"event_type": "click"},
    {"event_type": "click", "element_definition_id": "el-0"},
    {"event_type": "click", "element_definition_id": "el-3", "page_definition_id": "pg-4"},
    {"event_type": "click", "page_definition_id": "pg-1"},
    {
        "event_type": "click",
        "properties": [{"path": "fs_rage_count", "op": "gt", "value": 2}],
    },
    {
        "event_type": "click",
        "properties": [{"path": "target.text", "op": "contains", "value": "Buy"}],
    },
    {"event_type": "change", "element_definition_id": "el-13"},
    {
        "event_type": "change",
        "properties": [{"path": "target.masked", "op": "equals", "value": True}],
    },
    {"event_type": "navigate", "page_definition_id": "pg-4"},
    {"event_type": "navigate", "page_definition_id": "pg-7"},
    {"event_type": "navigate"},
    {
        "event_type": "custom",
        "properties": [{"path": "event_name", "op": "equals", "value": "Order Completed"}],
    },
    {
        "event_type": "custom",
        "properties": [
            {"path": "event_name", "op": "equals", "value": "Order Completed"},
            {"path": "event_properties.amount", "op": "gt", "value": 100},
        ],
    },
    {"event_type": "custom", "properties": [{"path": "event_properties.coupon", "op": "exists"}]},
    {
        "event_type": "custom",
        "properties": [{"path": "event_properties.amount", "op": "lt", "value": 10}],
    },
    {"event_type": "load", "properties": [{"path": "load_time_millis", "op": "gt", "value": 3000}]},
    {"event_type": "load", "page_definition_id": "pg-1"},
    {"event_type": "copy"},
    {"event_type": "element_seen", "element_definition_id": "el-9"},
    {"event_type": "click", "element_definition_id": "el-2", "page_definition_id": "pg-6"},
]
_EVENT_TYPES = ["click"] * 8 + ["change"] * 3 + ["navigate"] * 3 + ["custom"] * 2
_EVENT_TYPES += ["load"] * 2 + ["copy", "element_seen"]
_CUSTOM_NAMES = ["Order Completed", "Product Viewed", "Signed Up", "Coupon Applied"]


def definition(kind: str, index: int, rule: dict[str, Any]) -> dict[str, Any]:
    """A definitions-topic record for the benchmark catalog."""
    prefix = {"element": "el", "page": "pg", "event": "ev"}[kind]
    return {
        "kind": kind,
        "id": f"{prefix}-{index}",
        "name": f"{kind} {index}",
        "description": None,
        "state": "active",
        "rule": orjson.dumps(rule).decode(),
        "created_time": 1_700_000_000_000 + index,
        "created_by": "bench@example.com",
        "modified_time": 1_700_000_000_000 + index,
        "modified_by": None,
        "fs_link_id": None,
        "is_user_defined": True if kind == "page" else None,
    }


def benchmark_catalog() -> Catalog:
    """50 element, 20 page and 20 event definitions, all active from ts 1000."""
    catalog = Catalog()
    for i, selector in enumerate(_ELEMENT_SELECTORS):
        catalog.apply("element", f"el-{i}", definition("element", i, {"selector": selector}), 1000)
    for i, pattern in enumerate(_PAGE_PATTERNS):
        catalog.apply("page", f"pg-{i}", definition("page", i, {"url": pattern}), 1000)
    for i, rule in enumerate(_EVENT_RULES):
        catalog.apply("event", f"ev-{i}", definition("event", i, rule), 1000)
    return catalog


@dataclass(frozen=True, slots=True)
class Workload:
    """The distinct selectors and URLs events draw from, with long-tailed weights."""

    selectors: list[str]
    urls: list[dict[str, Any]]
    selector_weights: list[float]
    url_weights: list[float]


def workload(rng: random.Random, n_selectors: int = 3000, n_urls: int = 1500) -> Workload:
    """A DOM of varied paths and a site of varied URLs, deterministic for ``rng``."""
    selectors = sorted({_raw_selector(rng) for _ in range(n_selectors)})
    rng.shuffle(selectors)
    urls = [_url(rng) for _ in range(n_urls)]
    return Workload(
        selectors,
        urls,
        [1.0 / (k + 1) for k in range(len(selectors))],
        [1.0 / (k + 1) for k in range(len(urls))],
    )


def events(rng: random.Random, load: Workload, count: int) -> list[EventTuple]:
    """``count`` fresh events drawn from the workload."""
    types = rng.choices(_EVENT_TYPES, k=count)
    selectors = rng.choices(load.selectors, load.selector_weights, k=count)
    urls = rng.choices(load.urls, load.url_weights, k=count)
    out: list[EventTuple] = []
    for event_type, selector, url in zip(types, selectors, urls, strict=True):
        props: dict[str, Any]
        if event_type in ("click", "change", "copy", "element_seen"):
            props = {"target": {"raw_selector": selector, "text": "Buy now", "masked": False}}
            if event_type == "click" and rng.random() < 0.1:
                props["fs_rage_count"] = rng.randrange(1, 6)
        elif event_type == "custom":
            props = {
                "event_name": rng.choice(_CUSTOM_NAMES),
                "event_properties": {"amount": rng.randrange(1, 300), "currency": "USD"},
            }
        elif event_type == "load":
            props = {"load_time_millis": rng.randrange(200, 6000)}
        else:
            props = {"navigate_reason": "navigate"}
        source = {"url": dict(url), "user_agent": {"browser": "Chrome"}, "origin": "dom"}
        out.append((event_type, props, source))
    return out


def _raw_selector(rng: random.Random) -> str:
    parts = ["body", "div#app" if rng.random() < 0.8 else "div#root"]
    parts.append(rng.choice(["header", "main", "main", "main", "footer", "aside"]))
    for _ in range(rng.randrange(1, 7)):
        parts.append(_compound(rng, rng.choice(_TAGS)))
    parts.append(_compound(rng, rng.choice(_LEAF_TAGS), leaf=True))
    return " > ".join(parts)


def _compound(rng: random.Random, tag: str, leaf: bool = False) -> str:
    text = tag
    if rng.random() < 0.1:
        text += "#" + rng.choice(_IDS)
    for token in rng.sample(_CLASSES, rng.choice([0, 1, 1, 2, 3])):
        text += "." + token
    if leaf:
        if tag == "button" and rng.random() < 0.4:
            text += "[type=submit]"
        if tag == "input":
            text += f"[type={rng.choice(['text', 'email', 'password'])}]"
        if tag == "a":
            text += f'[href="{rng.choice(["/products/1", "/help", "/doc.pdf"])}"]'
        if rng.random() < 0.2:
            text += f"[data-testid={rng.choice(_TEST_IDS)}]"
        if rng.random() < 0.1:
            text += "[aria-label=Home%20page]"
    return text


def _url(rng: random.Random) -> dict[str, Any]:
    host = rng.choice(_HOSTS)
    path = rng.choice(_PATHS).replace("{n}", str(rng.randrange(1, 500)))
    query: dict[str, Any] = {}
    if rng.random() < 0.3:
        query["q"] = {"values": [rng.choice(["shoes", "hat", "sale"])]}
    if rng.random() < 0.2:
        query["step"] = {"values": [str(rng.randrange(1, 4))]}
    if rng.random() < 0.1:
        query["utm_source"] = {"values": ["mail"]}
    hash_path = f"/orders/{rng.randrange(1, 50)}" if path == "/app" else ""
    query_text = "&".join(f"{k}={v['values'][0]}" for k, v in query.items())
    full_url = f"https://{host}{path}" + (f"?{query_text}" if query_text else "")
    full_url += f"#{hash_path}" if hash_path else ""
    return {
        "full_url": full_url,
        "host": host,
        "path": path,
        "query": query,
        "hash_path": hash_path,
        "hash_query": {},
    }


def encoded(batch: list[EventTuple]) -> list[tuple[str, bytes, bytes]]:
    """The events as the pipeline sees them: property objects still JSON."""
    return [(t, orjson.dumps(props), orjson.dumps(source)) for t, props, source in batch]


def run_enrichment(
    catalog: Catalog | None, batch: list[tuple[str, bytes, bytes]], per_record: int
) -> float:
    """Seconds to parse and (unless ``catalog`` is None) enrich every event."""
    loads = orjson.loads
    start = time.perf_counter()
    for offset in range(0, len(batch), per_record):
        matcher = catalog.matcher_at(5000 + offset) if catalog is not None else None
        for event_type, props_json, source_json in batch[offset : offset + per_record]:
            props = loads(props_json)
            source = loads(source_json)
            if matcher is not None:
                enrich(event_type, props, source, matcher)
    return time.perf_counter() - start


MATCH_PATH_LENGTHS = (10, 100, 1_000, 4_000, 8_000)
MATCH_DEFINITION_COUNTS = (1, 10, 100, 1_000)
_MATCH_SHAPES = (
    "body div a",
    "div.c > div a.t",
    ":is(main, div.c) div a",
    "body div:not(.x) a.t",
    "div div div a",
)


def deep_raw_selector(elements: int) -> str:
    """A path ``elements`` deep: body, then ``div.c`` elements, then the target ``a.t``."""
    return " > ".join(["body", *["div.c"] * (elements - 2), "a.t"])


def matching_definitions(count: int) -> ElementMatcher:
    """``count`` element definitions, all targeting the deep path's ``a.t`` and all
    matching it, so every one is tried against every ancestor."""
    definitions = [
        parse_definition(
            definition("element", i, {"selector": _MATCH_SHAPES[i % len(_MATCH_SHAPES)]})
        )
        for i in range(count)
    ]
    bound = max(MATCH_PATH_LENGTHS)
    return ElementMatcher(definitions, max_path_chars=bound * 8, max_path_elements=bound)


def match_cost(
    elements: ElementMatcher, raw_selector: str, budget_s: float = 0.05, min_runs: int = 3
) -> float:
    """Seconds for one uncached match, the best of at least ``min_runs`` runs and of as
    many as fit ``budget_s`` (one run alone can be a scheduler's or collector's pause)."""
    best = float("inf")
    spent = 0.0
    runs = 0
    while spent < budget_s or runs < min_runs:
        start = time.perf_counter()
        elements._match(raw_selector)
        took = time.perf_counter() - start
        best = min(best, took)
        spent += took
        runs += 1
        if took > budget_s / 3 and runs >= min_runs:
            break
    return best


def matching_costs(
    path_lengths: tuple[int, ...] = MATCH_PATH_LENGTHS,
    definition_counts: tuple[int, ...] = MATCH_DEFINITION_COUNTS,
    *,
    definitions_for_paths: int = 10,
    path_for_definitions: int = 100,
) -> dict[str, Any]:
    """µs per uncached element match: by path length (``definitions_for_paths``
    definitions), and by definition count (a ``path_for_definitions``-element path)."""
    elements = matching_definitions(definitions_for_paths)
    by_path = [[float(n), match_cost(elements, deep_raw_selector(n)) * 1e6] for n in path_lengths]
    raw = deep_raw_selector(path_for_definitions)
    by_count = [
        [float(n), match_cost(matching_definitions(n), raw) * 1e6] for n in definition_counts
    ]
    return {
        "by_path_elements": by_path,
        "definitions_for_paths": definitions_for_paths,
        "by_definitions": by_count,
        "path_for_definitions": path_for_definitions,
    }


def describe_matching(costs: dict[str, Any]) -> list[str]:
    """Report lines for ``matching_costs``, each figure with its growth over the first."""

    def series(points: list[list[float]]) -> str:
        first_n, first_us = points[0]
        return ", ".join(
            f"{int(n)}: {us:,.0f} µs (x{us / max(first_us, 1e-9):,.0f} for x{n / first_n:,.0f})"
            for n, us in points
        )

    definitions = costs["definitions_for_paths"]
    elements = costs["path_for_definitions"]
    return [
        f"  by path elements ({definitions} definitions): {series(costs['by_path_elements'])}",
        f"  by definitions ({elements}-element path): {series(costs['by_definitions'])}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    load = workload(rng)
    catalog = benchmark_catalog()
    cold_batch = encoded(events(rng, load, args.events))
    warm_batch = encoded(events(rng, load, args.events))
    n = args.events
    parse = min(
        run_enrichment(None, batch, 20) for batch in (cold_batch, warm_batch) for _ in range(3)
    )
    cold = min(run_enrichment(benchmark_catalog(), cold_batch, 20) for _ in range(3)) - parse
    warm = min(run_enrichment(catalog, warm_batch, 20) for _ in range(4)) - parse
    print(f"{len(load.selectors)} distinct selectors, {len(load.urls)} distinct URLs")
    print(f"JSON parsing alone (not counted): {parse / n * 1e6:.2f} us/event")
    print(f"enrichment, cold caches: {cold / n * 1e6:.2f} us/event")
    print(f"enrichment, warm caches: {warm / n * 1e6:.2f} us/event")
    elements = catalog.matcher_at(5000).elements
    uncached = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for selector in load.selectors:
            elements._match(selector)
        uncached = min(uncached, (time.perf_counter() - start) / len(load.selectors))
    print(f"one uncached element match (50 definitions): {uncached * 1e6:.1f} us")
    print("one uncached element match against deep paths, all definitions matching:")
    print("\n".join(describe_matching(matching_costs())))


if __name__ == "__main__":
    main()

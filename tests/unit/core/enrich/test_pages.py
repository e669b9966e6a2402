"""Page URL patterns: grammar, matching, normalization and the most-literal rank."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsstream.core.enrich import DefinitionError
from fsstream.core.enrich.pages import MAX_PATTERN_CHARS, parse_page_pattern, url_parts


def matches(pattern: str, url: dict[str, Any]) -> bool:
    parts = url_parts(url)
    assert parts is not None
    return parse_page_pattern(pattern).matches(parts)


def full(url: str) -> dict[str, Any]:
    return {"full_url": url}


@pytest.mark.parametrize(
    ("pattern", "url", "expected"),
    [
        ("/", "https://x.com/", True),
        ("/", "https://x.com", True),
        ("/", "https://x.com/a", False),
        ("/products/*", "https://x.com/products/shoes", True),
        ("/products/*", "https://x.com/products/shoes/", True),
        ("/products/*", "https://x.com/products", False),
        ("/products/*", "https://x.com/products/shoes/42", False),
        ("/products/**", "https://x.com/products", True),
        ("/products/**", "https://x.com/products/a/b/c", True),
        ("/products/**", "https://x.com/productsx", False),
        ("/products/**/reviews", "https://x.com/products/reviews", True),
        ("/products/**/reviews", "https://x.com/products/1/2/reviews", True),
        ("/products/**/reviews", "https://x.com/products/1/reviews/x", False),
        ("/*/shoes/*", "https://x.com/products/shoes/42", True),
        ("/*/shoes/*", "https://x.com/shoes/42", False),
        ("/**/42", "https://x.com/products/shoes/42", True),
        ("/**", "https://x.com/anything/at/all?x=1#y", True),
        ("/a//b/", "https://x.com/a/b", True),
        ("/a/b", "https://x.com/a//b/", True),
        ("/Products", "https://x.com/products", False),
        ("/caf%C3%A9", "https://x.com/caf%C3%A9", True),
        ("/café", "https://x.com/caf%C3%A9", True),
        ("shop.example.com/checkout", "https://shop.example.com/checkout", True),
        ("shop.example.com/checkout", "https://www.example.com/checkout", False),
        ("shop.example.com/checkout", "https://SHOP.Example.com:8443/checkout", True),
        ("SHOP.example.com:443/checkout", "http://shop.example.com/checkout", True),
        ("https://shop.example.com/checkout", "http://shop.example.com/checkout", True),
        ("*.example.com/checkout", "https://shop.example.com/checkout", True),
        ("*.example.com/checkout", "https://example.com/checkout", False),
        ("*.example.com/checkout", "https://a.b.example.com/checkout", False),
        ("**.example.com/checkout", "https://example.com/checkout", True),
        ("**.example.com/checkout", "https://a.b.example.com/checkout", True),
        ("**.example.com/checkout", "https://example.org/checkout", False),
        ("example.com", "https://example.com/", True),
        ("example.com", "https://example.com/a", False),
        ("/search?q", "https://x.com/search?q=shoes", True),
        ("/search?q", "https://x.com/search?q=", True),
        ("/search?q", "https://x.com/search?q", True),
        ("/search?q", "https://x.com/search?sort=price", False),
        ("/search?q=shoes", "https://x.com/search?q=hat&q=shoes", True),
        ("/search?q=shoes", "https://x.com/search?q=hat", False),
        ("/search?q=red+shoes", "https://x.com/search?q=red%20shoes", True),
        ("/search?q=", "https://x.com/search?q=", True),
        ("/search?q=", "https://x.com/search?q=x", False),
        ("/search?q=shoes&sort=price", "https://x.com/search?sort=price&q=shoes", True),
        ("/search?q=shoes&sort=price", "https://x.com/search?q=shoes", False),
        ("/app#/orders/*", "https://x.com/app#/orders/12", True),
        ("/app#/orders/*", "https://x.com/app#/orders", False),
        ("/app#/orders/*", "https://x.com/app", False),
        ("/app#/orders/**", "https://x.com/app#/orders", True),
        ("/app#orders", "https://x.com/app#/orders", True),
        ("/app", "https://x.com/app#/orders/12", True),
        ("/app#", "https://x.com/app", True),
        ("/app#", "https://x.com/app#/x", False),
        ("/app#/orders?tab=all", "https://x.com/app#/orders?tab=all", True),
        ("/app#/orders?tab=all", "https://x.com/app#/orders?tab=new", False),
        ("/app#/orders?tab=all", "https://x.com/app?tab=all#/orders", False),
        ("/app?tab=all", "https://x.com/app#/orders?tab=all", False),
    ],
)
def test_pattern_matches_url(pattern: str, url: str, expected: bool) -> None:
    assert matches(pattern, full(url)) is expected


def test_structured_fields_are_used_when_present() -> None:
    url = {
        "full_url": "https://a.com/from-full-url?x=1",
        "host": "b.com",
        "path": "/from-fields",
        "query": {"q": {"values": ["shoes", "hats"]}},
        "hash_path": "/orders/1",
        "hash_query": {"tab": {"values": ["all"]}},
    }
    assert matches("b.com/from-fields?q=hats#/orders/*?tab=all", url)
    assert not matches("/from-full-url", url)
    assert not matches("/from-fields?x=1", url)


def test_missing_structured_fields_come_from_full_url() -> None:
    url = {"full_url": "https://a.com/p?x=1#/h?t=2", "path": "/other"}
    assert matches("a.com/other?x=1#/h?t=2", url)


def test_structured_fields_alone_suffice() -> None:
    assert matches("shop.example.com/cart", {"host": "shop.example.com", "path": "/cart"})
    assert url_parts({"app_screen_name": "home"}) is None
    assert url_parts({"full_url": "http://[::1"}) is None


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "url pattern must be a non-empty string"),
        ("/a b", "whitespace is not allowed"),
        ("/prod*", "'*' and '**' must be a whole path segment (got 'prod*')"),
        ("/a/***", "must be a whole path segment"),
        ("/a#/x*", "must be a whole path segment"),
        ("sh*p.example.com/", "'*' and '**' must be a whole host label (got 'sh*p')"),
        ("a..b/", "empty host label"),
        ("user@a.com/", "invalid host"),
        (":./", "invalid host"),
        ("/x?=1", "query parameter without a name"),
        ("?q=1", "expected '/' or a host at the start"),
        ("#/a", "expected '/' or a host at the start"),
    ],
)
def test_refused_patterns_say_why(pattern: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_page_pattern(pattern)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Shop.Example.com/Checkout/", "shop.example.com/Checkout"),
        ("https://x.com:8080/a", "x.com/a"),
        ("x.com", "x.com/"),
        ("/a?b=2&a=1", "/a?a=1&b=2"),
        ("/a?a=1&a=1", "/a?a=1"),
        ("/a?&a=1&", "/a?a=1"),
        ("/a?", "/a"),
        ("/a/**/**", "/a/**"),
        ("/a/**/*", "/a/*/**"),
        ("/a/**/*/**/b", "/a/*/**/b"),
        ("/caf%C3%A9", "/café"),
        ("/search?q=red+shoes", "/search?q=red%20shoes"),
        ("/a#/b", "/a#b"),
        ("/a#", "/a#/"),
        ("/a//b", "/a/b"),
    ],
)
def test_equivalent_patterns_normalize_alike(a: str, b: str) -> None:
    assert parse_page_pattern(a).normalized == parse_page_pattern(b).normalized


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("/A", "/a"),
        ("/a?x", "/a?x="),
        ("/a", "/a#"),
        ("/a/*", "/a/**"),
        ("/a/%2A", "/a/*"),
        ("x.com/a", "/a"),
        ("/a%2Fb", "/a/b"),
    ],
)
def test_different_patterns_normalize_apart(a: str, b: str) -> None:
    assert parse_page_pattern(a).normalized != parse_page_pattern(b).normalized


def test_rank_most_literal_first() -> None:
    ordered = [
        "/products/shoes/42?color=red",
        "shop.example.com/products/shoes/42",
        "/products/shoes/42",
        "/products/shoes/*",
        "/products/shoes/**",
        "/products/*/*",
        "/products/**",
        "/*/*/*",
        "/**",
    ]
    ranked = sorted(ordered[::-1], key=lambda p: parse_page_pattern(p).rank)
    assert ranked == ordered


def test_rank_counts_fragment_segments_as_literal_and_fragment_as_a_constraint() -> None:
    def rank(pattern: str) -> tuple[int, ...]:
        return parse_page_pattern(pattern).rank

    assert rank("/app#/orders") < rank("/app/*")
    assert rank("/app#/orders") < rank("/app/orders")
    assert rank("/app/orders/x") < rank("/app#/orders")
    assert rank("/app/x#") < rank("/app/x")


_SEGMENTS = st.lists(st.sampled_from(["a", "b", "shoes", "42", "caf%C3%A9"]), max_size=6)


@given(_SEGMENTS, st.data())
def test_wildcards_in_place_of_segments_still_match(
    segments: list[str], data: st.DataObject
) -> None:
    url = full("https://x.com/" + "/".join(segments))
    stars = ["*" if data.draw(st.booleans()) else s for s in segments]
    assert matches("/" + "/".join(stars), url)
    if segments:
        start = data.draw(st.integers(0, len(segments)))
        end = data.draw(st.integers(start, len(segments)))
        collapsed = [*segments[:start], "**", *segments[end:]]
        assert matches("/" + "/".join(collapsed), url)
        assert not matches("/" + "/".join([*segments, "*"]), url)


_PATTERN_TEXT = st.text(alphabet=st.sampled_from(list("ab/*?#&=.:%2Fx")), max_size=20)
_JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


@given(st.one_of(st.text(max_size=20), _PATTERN_TEXT))
def test_any_text_parses_or_is_refused_with_a_definition_error(text: str) -> None:
    try:
        pattern = parse_page_pattern(text)
    except DefinitionError:
        return
    assert parse_page_pattern(pattern.normalized).normalized == pattern.normalized


@given(
    st.dictionaries(
        st.sampled_from(["full_url", "host", "path", "query", "hash_path", "hash_query"]),
        _JSON_VALUE | st.text(alphabet=st.sampled_from(list("htps:/[]?#&=.x%")), max_size=20),
    )
)
def test_any_url_object_is_read_and_matched_by_its_shape(url: dict[str, Any]) -> None:
    parts = url_parts(url)
    if parts is None:
        return
    assert parse_page_pattern("/**").matches(parts)
    assert not parse_page_pattern("/**?parameter-never-sent").matches(parts)
    assert parse_page_pattern("/" + "/".join(["*"] * len(parts.path))).matches(parts)
    assert not parse_page_pattern("/" + "/".join(["*"] * (len(parts.path) + 1))).matches(parts)


def test_an_oversized_pattern_is_refused() -> None:
    with pytest.raises(DefinitionError, match=f"longer than the {MAX_PATTERN_CHARS} allowed"):
        parse_page_pattern("/" + "a/" * MAX_PATTERN_CHARS)
    parse_page_pattern("/" + "a" * (MAX_PATTERN_CHARS - 1))


def test_matching_a_long_url_against_many_wildcards_stays_fast() -> None:
    import time

    pattern = parse_page_pattern("/" + "/".join(["**", "x"] * 200) + "/y")
    parts = url_parts({"host": "a.test", "path": "/" + "x/" * 20_000 + "z"})
    assert parts is not None
    started = time.perf_counter()
    assert not pattern.matches(parts)
    assert time.perf_counter() - started < 5.0

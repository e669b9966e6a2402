"""Raw selector paths: the linear scanner against the regular-expression reading it
replaces, its time on hostile input, and its bounds."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsstream.core.enrich import Matcher, enrich, parse_definition
from fsstream.core.enrich.matcher import CACHED_SELECTOR_CHARS, PATHS_TOO_LONG, ElementMatcher
from fsstream.core.enrich.paths import (
    MAX_PATH_CHARS,
    MAX_PATH_ELEMENTS,
    PathElement,
    PathTooLong,
    decode_token,
    parse_path,
)

# The reading the scanner replaces, kept as its specification: same language, same
# decoded elements. Its nested quantifiers backtrack exponentially, so it only ever
# sees the short inputs generated here.
_QUOTED = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
_ATTRIBUTE = rf"""\[([^\]"'=]+)(?:=({_QUOTED}|[^\]]*))?\]"""
_BARE_ATTRIBUTE = rf"""\[[^\]"'=]+(?:=(?:{_QUOTED}|[^\]]*))?\]"""
_TOKEN = r"[#.][^#.\[\s>]+"
_COMPOUND = re.compile(rf"\s*([^#.\[\s>]*)((?:{_TOKEN}|{_BARE_ATTRIBUTE})*)\s*(>|\Z)")
_PART = re.compile(rf"([#.])([^#.\[\s>]+)|{_ATTRIBUTE}")
_ESCAPE = re.compile(r"\\(.)")


def regex_parse_path(raw_selector: str) -> tuple[PathElement, ...] | None:
    elements: list[PathElement] = []
    pos = 0
    while True:
        match = _COMPOUND.match(raw_selector, pos)
        if match is None:
            return None
        tag, parts, separator = match.groups()
        if not tag and not parts:
            return None
        element_id: str | None = None
        classes: list[str] = []
        attributes: dict[str, str] = {}
        for sigil, token, name, value in _PART.findall(parts):
            if sigil == "#":
                element_id = decode_token(token)
            elif sigil == ".":
                classes.append(decode_token(token))
            elif value[:1] in ("'", '"'):
                attributes[name.strip().lower()] = decode_token(_ESCAPE.sub(r"\1", value[1:-1]))
            else:
                attributes[name.strip().lower()] = decode_token(value)
        if classes and "class" not in attributes:
            attributes["class"] = " ".join(classes)
        if element_id is not None and "id" not in attributes:
            attributes["id"] = element_id
        elements.append(PathElement(tag.lower(), element_id, frozenset(classes), attributes))
        pos = match.end()
        if not separator:
            return tuple(elements) if pos == len(raw_selector) else None


_WORD = st.text(alphabet=st.sampled_from(list("abZ09-_/: %é")), min_size=1, max_size=6)
_TOKEN_TEXT = _WORD.map(lambda w: quote(w, safe=""))
_VALUE_CHARS = st.sampled_from(list("ab >#.[]=/\\\"' é"))


def _quoted(quote_char: str, content: str) -> str:
    escaped = content.replace("\\", "\\\\").replace(quote_char, "\\" + quote_char)
    return f"{quote_char}{escaped}{quote_char}"


_ATTRIBUTE_TEXT = st.one_of(
    st.builds(lambda n: f"[{n}]", st.sampled_from(["hidden", "data-x", " Type "])),
    st.builds(
        lambda n, v: f"[{n}={v}]",
        st.sampled_from(["type", "data-id", "class", "id"]),
        st.text(alphabet=st.sampled_from(list("ab >#.[=/% é")), max_size=6),
    ),
    st.builds(
        lambda n, q, v: f"[{n}={_quoted(q, v)}]",
        st.sampled_from(["title", "href", "aria-label"]),
        st.sampled_from(["'", '"']),
        st.text(alphabet=_VALUE_CHARS, max_size=8),
    ),
)
_PART_TEXT = st.one_of(
    _TOKEN_TEXT.map(lambda t: "." + t), _TOKEN_TEXT.map(lambda t: "#" + t), _ATTRIBUTE_TEXT
)
_COMPOUND_TEXT = st.builds(
    lambda tag, parts: tag + "".join(parts),
    st.sampled_from(["", "div", "A", "my-widget", "svg"]),
    st.lists(_PART_TEXT, max_size=4),
).filter(bool)
_PATH_TEXT = st.builds(
    lambda compounds, sep: sep.join(compounds),
    st.lists(_COMPOUND_TEXT, min_size=1, max_size=5),
    st.sampled_from([" > ", ">", "  >\t", "\u00a0>\u00a0"]),
)


@settings(max_examples=1000)
@given(_PATH_TEXT)
def test_valid_paths_read_as_the_regular_expressions_read_them(raw: str) -> None:
    expected = regex_parse_path(raw)
    assert expected is not None
    assert parse_path(raw) == expected


_HOSTILE = st.text(alphabet=st.sampled_from(list("ab#.[]=\"'\\ >\n\t%2F\x1c\u00a0é")), max_size=24)


@settings(max_examples=1000)
@given(st.one_of(_HOSTILE, _PATH_TEXT.map(lambda raw: raw[:-1]), st.text(max_size=30)))
def test_any_text_is_accepted_exactly_when_the_regular_expressions_accept_it(raw: str) -> None:
    assert (parse_path(raw) is None) == (regex_parse_path(raw) is None)


def _timed(parse: Callable[[], Any]) -> float:
    started = time.perf_counter()
    parse()
    return time.perf_counter() - started


@pytest.mark.parametrize(
    "hostile",
    [
        "a" + '[b=""]' * 34_000 + "!",
        "a" + '[b="]' * 40_000,
        "a" + '[b="x].y"]' * 20_000,
        "a" + "[b='x]" * 30_000 + '[c="' + "]" * 20_000,
        "a" + "[" * 200_000,
        "a[b" + "=" * 200_000,
        'a[b="' + '\\"' * 100_000 + '"]',
        "a" + " " * 200_000 + "b",
        " > ".join(["div.c"] * 35_000),
    ],
    ids=[
        "redos",
        "open-quotes",
        "bracket-in-quotes",
        "mixed",
        "brackets",
        "equals",
        "escapes",
        "spaces",
        "deep",
    ],
)
def test_a_200_kb_hostile_selector_is_read_in_linear_time(hostile: str) -> None:
    assert len(hostile) >= 175_000
    unbounded = {"max_chars": len(hostile), "max_elements": len(hostile)}
    assert _timed(lambda: parse_path(hostile, **unbounded)) < 1.0
    with pytest.raises(PathTooLong):
        parse_path(hostile)


def test_the_selector_that_froze_the_worker_is_read_at_once() -> None:
    raw = "body > div" + '[data-x=""]' * 16 + "!"
    assert _timed(lambda: parse_path(raw)) < 0.05
    assert parse_path(raw) is None
    assert parse_path(raw[:-1]) is not None


def test_paths_within_the_bounds_are_read_and_beyond_them_refused() -> None:
    deepest = " > ".join(["div"] * MAX_PATH_ELEMENTS)
    path = parse_path(deepest)
    assert path is not None and len(path) == MAX_PATH_ELEMENTS
    with pytest.raises(PathTooLong, match="deeper than"):
        parse_path(deepest + " > a")
    longest = "a" * MAX_PATH_CHARS
    assert parse_path(longest) is not None
    with pytest.raises(PathTooLong, match="characters"):
        parse_path(longest + "a")


def _elements(*selectors: str) -> ElementMatcher:
    definitions = [
        parse_definition(
            {
                "kind": "element",
                "id": f"el-{i}",
                "name": selector,
                "state": "active",
                "rule": f'{{"selector": "{selector}"}}',
                "created_time": 1,
                "modified_time": 1,
            }
        )
        for i, selector in enumerate(selectors)
    ]
    return Matcher.of(definitions).elements


def test_a_path_too_long_or_deep_matches_nothing_and_is_counted() -> None:
    elements = _elements("body div a", "a")
    deep = " > ".join(["body", *["div"] * MAX_PATH_ELEMENTS, "a"])
    long = "body > div > a.x" + "y" * MAX_PATH_CHARS
    before = PATHS_TOO_LONG.value
    assert elements.match(deep) == ()
    assert elements.match(deep) == ()
    assert elements.match(long) == ()
    assert PATHS_TOO_LONG.value == before + 3
    assert elements.match("body > div > a") == ("el-0", "el-1")
    assert PATHS_TOO_LONG.value == before + 3


def test_long_raw_selectors_are_matched_but_not_remembered() -> None:
    elements = _elements("body div a")
    long = "body > div.x" + "y" * CACHED_SELECTOR_CHARS + " > a"
    assert elements.match(long) == ("el-0",)
    assert elements.match("body > a") == ()
    assert long not in elements._cache
    assert "body > a" in elements._cache


def test_an_event_with_a_hostile_raw_selector_is_enriched_promptly() -> None:
    empty = Matcher.of([])
    matcher = Matcher(_elements("body div a", "div a", "a"), empty.pages, empty.events)
    for raw in ("div" + '[b=""]' * 30 + "!", " > ".join(["div"] * 8_000 + ["a"])):
        props: dict[str, Any] = {"target": {"raw_selector": raw}}
        assert _timed(lambda: enrich("click", props, {}, matcher)) < 0.5  # noqa: B023
        assert "additional_element_definition_ids" not in props["target"]
        assert "element_definition_id" not in props["target"]

"""CSS selectors decided on a raw selector path: parsing, refusal, matching, ranking."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsstream.core.enrich import DefinitionError
from fsstream.core.enrich.paths import PathElement, parse_path
from fsstream.core.enrich.selectors import (
    MAX_COMPOUNDS,
    MAX_NESTING,
    MAX_SELECTOR_CHARS,
    ComplexSelector,
    CompoundSelector,
    compile_selector,
    match_depth,
)

CHECKOUT = "body > div#app > main > form#checkout > button.btn.btn-primary[type=submit]"


def matches(selector: str, raw_selector: str) -> bool:
    return depth(selector, raw_selector) >= 0


def depth(selector: str, raw_selector: str) -> int:
    """The best depth over the selector list's alternatives, -1 if none matches."""
    path = parse_path(raw_selector)
    assert path is not None
    alternatives = compile_selector(selector).alternatives
    return max(match_depth(alt, path, len(path) - 1) for alt in alternatives)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("button", True),
        ("BUTTON", True),
        ("a", False),
        ("*", True),
        (".btn", True),
        (".btn.btn-primary", True),
        (".btn.missing", False),
        ("button.btn-primary[type=submit]", True),
        ("#checkout", False),
        ("form", False),
        ("#checkout button", True),
        ("#checkout > button", True),
        ("main button", True),
        ("main > button", False),
        ("div#app > form button", False),
        ("div#app form > button", True),
        ("div#app > main > form > button", True),
        ("body > div#app > main > form#checkout > button.btn", True),
        ("body button", True),
        ("html button", False),
        ("body > button", False),
        ("form form button", False),
        ("main * button", True),
        ("main > * > button", True),
        ("main > * > * > button", False),
        ("a, button", True),
        ("a, section", False),
    ],
)
def test_type_id_class_and_combinators(selector: str, expected: bool) -> None:
    assert matches(selector, CHECKOUT) is expected


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (":is(form, section) > button", True),
        (":is(section, aside) > button", False),
        (":where(#checkout) button", True),
        (":where(#other) button", False),
        (":not(.btn)", False),
        ("button:not(.disabled)", True),
        ("button:not(.disabled, .btn)", False),
        (":not(form button)", False),
        (":not(section button)", True),
        ("button:not(:is(.a, .b))", True),
        ("form :is(button.btn, a)", True),
        (":is(main form) > button", True),
        (":is(main > form) > button", True),
        (":is(div > form) > button", False),
        ("button:is(form > button)", True),
        ("button:is(main > button)", False),
        (":is(:where(#app) main) button", True),
    ],
)
def test_is_where_not(selector: str, expected: bool) -> None:
    assert matches(selector, CHECKOUT) is expected


LINK = (
    'body > p > a.link[href="/docs/guide.pdf"][lang=en-US][rel="noopener noreferrer"]'
    "[data-x][title=Home%20page]"
)


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("[href]", True),
        ("[missing]", False),
        ('[href="/docs/guide.pdf"]', True),
        ("[href='/docs/guide.pdf']", True),
        ("[href=guide]", False),
        ('[href^="/docs"]', True),
        ('[href^="/guide"]', False),
        ('[href^=""]', False),
        ('[href$=".pdf"]', True),
        ('[href$=".PDF"]', False),
        ('[href$=".PDF" i]', True),
        ('[href$=".PDF" s]', False),
        ('[href$=""]', False),
        ("[href*=guide]", True),
        ("[href*=nope]", False),
        ('[href*=""]', False),
        ("[rel~=noreferrer]", True),
        ("[rel~=noref]", False),
        ('[rel~="noopener noreferrer"]', False),
        ('[rel="noopener noreferrer"]', True),
        ("[lang|=en]", True),
        ("[lang|=en-US]", True),
        ("[lang|=e]", False),
        ("[lang=EN-us i]", True),
        ("[lang=EN-us]", False),
        ("[LANG=en-US]", True),
        ("[data-x]", True),
        ('[data-x=""]', True),
        ('[title="Home page"]', True),
        ("[title^=Home%20]", True),
        ("[class=link]", True),
        ("[class~=link]", True),
        ("a[href][lang]", True),
        ("a[href][missing]", False),
    ],
)
def test_attribute_operators(selector: str, expected: bool) -> None:
    assert matches(selector, LINK) is expected


TAILWIND = "body > div.w-1%2F2.md%3Aflex > span.text-%5B13px%5D[data-label=a%3Db]"


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        (".w-1\\/2 span", True),
        (".w-1%2F2 > span", True),
        (".md\\:flex > span", True),
        (".md\\3A flex > span", True),
        (".w-1\\/2.md\\:flex > span", True),
        (".text-\\[13px\\]", True),
        (".text-%5B13px%5D", True),
        (".w-1%2F2", False),
        ("[data-label='a=b']", True),
        ("[data-label=a%3Db]", True),
        ("[data-label='a%3Db']", False),
    ],
)
def test_percent_encoded_tokens(selector: str, expected: bool) -> None:
    assert matches(selector, TAILWIND) is expected


def test_a_quoted_path_attribute_may_contain_the_separator() -> None:
    raw = 'div > a[title="a > b \\" c"] > span'
    path = parse_path(raw)
    assert path is not None
    assert [e.tag for e in path] == ["div", "a", "span"]
    assert path[1].attributes["title"] == 'a > b " c'
    assert matches('a[title="a > b \\" c"] > span', raw)


@pytest.mark.parametrize(
    "raw",
    ["", "body >", "> body", "body >> div", "div span", "a[b=c]d", "a[=b]", "div.", "div#"],
)
def test_what_is_not_a_path(raw: str) -> None:
    assert parse_path(raw) is None


def test_path_elements_are_decoded() -> None:
    path = parse_path("BODY > div#my%20app.a.b%2Fc[data-id=x%2Fy][hidden]")
    assert path is not None
    body, div = path
    assert body.tag == "body"
    assert div.id == "my app"
    assert div.classes == frozenset({"a", "b/c"})
    assert div.attributes == {
        "data-id": "x/y",
        "hidden": "",
        "class": "a b/c",
        "id": "my app",
    }


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ("a + b", "the sibling combinator '+'"),
        ("a ~ b", "the sibling combinator '~'"),
        ("a+b", "the sibling combinator '+'"),
        ("+ a", "the sibling combinator '+'"),
        ("a || b", "column combinator"),
        (":is(a ~ b)", "the sibling combinator '~'"),
        ("li:nth-child(2)", "':nth-child' depends on the element's position among its siblings"),
        ("li:nth-of-type(2n+1)", "':nth-of-type' depends on the element's position"),
        ("li:nth-last-child(1)", "':nth-last-child' depends on the element's position"),
        ("li:nth-last-of-type(1)", "':nth-last-of-type' depends on the element's position"),
        ("li:first-child", "':first-child' depends on the element's position"),
        ("li:last-child", "':last-child' depends on the element's position"),
        ("li:only-child", "':only-child' depends on the element's position"),
        ("li:first-of-type", "':first-of-type' depends on the element's position"),
        ("li:last-of-type", "':last-of-type' depends on the element's position"),
        ("li:only-of-type", "':only-of-type' depends on the element's position"),
        (":root", "':root' depends on the element's position"),
        ("button:not(li:first-child)", "':first-child' depends"),
        ("div:has(> img)", "':has' depends on the element's descendants"),
        ("div:empty", "':empty' depends on the element's descendants"),
        ("a:hover", "unknown or undecidable pseudo-class ':hover'"),
        ("input:checked", "unknown or undecidable pseudo-class ':checked'"),
        ("a:matches(.x)", "unknown or undecidable pseudo-class ':matches'"),
        ("p::before", "the pseudo-element '::before' is never an event target"),
        ("p:after", "the pseudo-element ':after' is never an event target"),
        (":is", "':is' needs a selector list in parentheses"),
        (":is()", "expected a selector, found ')'"),
        ("a:is(b", "missing ')'"),
        ("a,", "expected a selector, found the end"),
        ("a >", "expected a selector, found the end"),
        ("> a", "a selector cannot start with a combinator"),
        ("a[href", "expected an attribute operator or ']'"),
        ("a[href=]", "expected an attribute value"),
        ("a[href=x y]", "expected ']'"),
        ('[title="x]', "unterminated string"),
        ("svg|a", "namespaces are not supported"),
        ("[*|href]", "namespaces are not supported"),
        (".a%zz", "'%' must start a percent escape"),
        (".w-1/2", "unexpected '/'"),
        ("a\\", "cannot end with a backslash"),
        ("a)", "unexpected ')'"),
        ("   ", "selector must be a non-empty string"),
    ],
)
def test_refused_selectors_say_why(selector: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_selector(selector)
    assert reason in str(caught.value)
    if selector.strip():
        assert repr(selector) in str(caught.value)


@pytest.mark.parametrize(
    ("selector", "specificity"),
    [
        ("*", (0, 0, 0)),
        ("button", (0, 0, 1)),
        (".btn", (0, 1, 0)),
        ("#x", (1, 0, 0)),
        (".a.a", (0, 2, 0)),
        ("button.btn.btn-primary[type=submit]", (0, 3, 1)),
        ("#a > b .c", (1, 1, 1)),
        (":is(#a, .b) c", (1, 0, 1)),
        (":is(.b, #a) c", (1, 0, 1)),
        (":where(#a, .b) c", (0, 0, 1)),
        (":not(.a, #b)", (1, 0, 0)),
        ("a:not(.b)", (0, 1, 1)),
        (":is(:where(#a) .b, c)", (0, 1, 0)),
        ("* > *", (0, 0, 0)),
    ],
)
def test_specificity(selector: str, specificity: tuple[int, int, int]) -> None:
    (alternative,) = compile_selector(selector).alternatives
    assert alternative.specificity == specificity


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("button", 1),
        ("form button", 2),
        ("#checkout > button", 2),
        ("* > * > button", 3),
        ("body * button", 3),
        (":where(form) button", 2),
        (":is(main form) button", 3),
        (":is(main form, form) button", 3),
        (":is(section form, form) button", 2),
        ("button:is(form > button)", 2),
        ("button:not(div > button)", 1),
        (":is(button, form > button)", 2),
        ("a, main button", 2),
        ("section button", -1),
    ],
)
def test_depth_counts_the_path_elements_a_match_is_anchored_on(
    selector: str, expected: int
) -> None:
    assert depth(selector, CHECKOUT) == expected


def test_descendant_search_backtracks_past_a_nearer_ancestor() -> None:
    raw = "body > div.a > section > div.a > p > span"
    assert matches("div.a > section div.a span", raw)
    assert matches("div.a > section span", raw)
    assert not matches("div.a > p > section span", raw)
    assert matches("body > div.a span", raw)


_TAGS = st.sampled_from(["div", "span", "main", "section", "a", "li"])
_CLASSES = st.lists(st.sampled_from(["x", "y", "w-1/2", "a b"]), max_size=2, unique=True)


@st.composite
def paths(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    return draw(st.lists(st.tuples(_TAGS, _CLASSES), min_size=1, max_size=6))


def _raw(path: list[tuple[str, list[str]]]) -> str:
    from urllib.parse import quote

    return " > ".join(tag + "".join("." + quote(c, safe="") for c in cs) for tag, cs in path)


def _css(path: list[tuple[str, list[str]]], combinator: str) -> str:
    def escape(token: str) -> str:
        return "".join(c if c.isalnum() or c == "-" else "\\" + c for c in token)

    return combinator.join(tag + "".join("." + escape(c) for c in cs) for tag, cs in path)


@given(paths())
def test_a_path_written_as_a_selector_matches_itself(path: list[tuple[str, list[str]]]) -> None:
    raw = _raw(path)
    assert depth(_css(path, " > "), raw) == len(path)
    assert depth(_css(path, " "), raw) == len(path)
    assert depth(_css(path[-1:], " "), raw) == 1


@given(paths(), st.sampled_from(["nav", "footer"]))
def test_an_ancestor_the_path_lacks_never_matches(
    path: list[tuple[str, list[str]]], missing: str
) -> None:
    raw = _raw(path)
    assert depth(f"{missing} {_css(path[-1:], ' ')}", raw) == -1
    assert depth(f"{missing} > {_css(path, ' > ')}", raw) == -1


_SELECTOR_TEXT = st.text(alphabet=st.sampled_from(list("ab#.-_[]=~|^$*'\"():, >+\\%2F9i")))


@given(st.one_of(st.text(max_size=30), _SELECTOR_TEXT))
def test_any_text_compiles_or_is_refused_with_a_definition_error(text: str) -> None:
    try:
        compiled = compile_selector(text)
    except DefinitionError:
        return
    path = parse_path("body > main > div#x.a.b > a.c[href=x]")
    assert path is not None
    for alternative in compiled.alternatives:
        for index in range(len(path)):
            expected = _reference_depth(alternative, path, index)
            assert match_depth(alternative, path, index) == expected


def _spelled(path: Sequence[PathElement]) -> str:
    """A raw selector for ``path``: every token and value percent-encoded, every attribute
    (``class`` and ``id`` included) listed, so that it reads back as ``path``."""
    from urllib.parse import quote

    def element(e: PathElement) -> str:
        parts = [e.tag]
        if e.id is not None:
            parts.append("#" + quote(e.id, safe=""))
        parts.extend("." + quote(c, safe="") for c in sorted(e.classes))
        parts.extend(
            f"[{name or ' '}={quote(value, safe='')}]" for name, value in e.attributes.items()
        )
        return "".join(parts)

    return " > ".join(element(e) for e in path)


@given(st.one_of(st.text(max_size=40), _SELECTOR_TEXT))
def test_any_text_is_a_path_that_reads_back_the_same_or_none(text: str) -> None:
    path = parse_path(text)
    if path is None:
        return
    if "[" not in text:  # outside attribute values, every ">" separates two elements
        assert len(path) == text.count(">") + 1
    assert parse_path(_spelled(path)) == path


def _nested(depth: int, inner: str = "a") -> str:
    return ":is(" * depth + inner + ")" * depth


def test_nesting_up_to_the_limit_compiles_and_matches() -> None:
    assert depth(_nested(MAX_NESTING), "div > a") == 1
    assert depth(":not(" * MAX_NESTING + "b" + ")" * MAX_NESTING, "a") == (
        1 if MAX_NESTING % 2 else -1
    )


@pytest.mark.parametrize("nesting", [MAX_NESTING + 1, 241, 242, 1000, 100_000])
def test_deeper_nesting_is_refused_with_a_definition_error(nesting: int) -> None:
    with pytest.raises(DefinitionError) as caught:
        compile_selector(_nested(nesting)[:MAX_SELECTOR_CHARS])
    message = str(caught.value)
    assert f"nested more than {MAX_NESTING} deep" in message
    assert len(message) < 300


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        (" ".join(["div"] * (MAX_COMPOUNDS + 1)), f"more than {MAX_COMPOUNDS} compound"),
        (", ".join(["a"] * (MAX_COMPOUNDS + 1)), f"more than {MAX_COMPOUNDS} compound"),
        (":is(" + ", ".join(["a b"] * 65) + ")", f"more than {MAX_COMPOUNDS} compound"),
        ("." + "x" * MAX_SELECTOR_CHARS, f"longer than the {MAX_SELECTOR_CHARS} allowed"),
        (" ".join(["div"] * 1200), "longer than the"),
    ],
)
def test_oversized_selectors_are_refused(selector: str, reason: str) -> None:
    with pytest.raises(DefinitionError, match=reason):
        compile_selector(selector)
    compile_selector(" ".join(["div"] * MAX_COMPOUNDS))


def _reference_depth(selector: ComplexSelector, path: Sequence[PathElement], index: int) -> int:
    """Every way of anchoring the compounds tried, as the definition of depth says."""

    def extra(compound: CompoundSelector, k: int) -> int:
        element = path[k]
        if compound.tag is not None and compound.tag != element.tag:
            return -1
        if any(i != element.id for i in compound.ids):
            return -1
        if not set(compound.classes) <= element.classes:
            return -1
        if not all(t.holds(element.attributes.get(t.name)) for t in compound.attributes):
            return -1
        total = 0
        for pseudo in compound.pseudo_classes:
            depths = [_reference_depth(arg, path, k) for arg in pseudo.arguments]
            if pseudo.name == "not":
                if max(depths) >= 0:
                    return -1
            elif max(depths) < 0:
                return -1
            elif pseudo.name != "not":
                total += max(depths) - 1
        return total

    def anchored(j: int, k: int) -> int:
        e = extra(selector.compounds[j], k)
        if e < 0:
            return -1
        if j == 0:
            return e + 1
        if selector.child[j - 1]:
            rest = anchored(j - 1, k - 1) if k > 0 else -1
        else:
            rest = max((anchored(j - 1, earlier) for earlier in range(k)), default=-1)
        return -1 if rest < 0 else e + 1 + rest

    return anchored(len(selector.compounds) - 1, index)


_SIMPLE = st.builds(
    lambda tag, parts: tag + "".join(parts) or "*",
    st.sampled_from(["", "a", "div", "*"]),
    st.lists(st.sampled_from([".x", ".y", "#i", "[k]", "[k=v]"]), max_size=2),
)


@st.composite
def _selectors(draw: st.DrawFn, nesting: int = 0) -> str:
    text = ""
    for n in range(draw(st.integers(1, 4))):
        if n:
            text += draw(st.sampled_from([" ", " > "]))
        compound = draw(_SIMPLE)
        if nesting < 2 and draw(st.booleans()):
            arguments = draw(st.lists(_selectors(nesting + 1), min_size=1, max_size=2))
            name = draw(st.sampled_from(["is", "where", "not"]))
            compound += f":{name}({', '.join(arguments)})"
        text += compound
    return text


_ELEMENT = st.builds(
    lambda tag, parts: tag + "".join(parts),
    st.sampled_from(["a", "div", "span"]),
    st.lists(st.sampled_from([".x", ".y", "#i", "[k]", "[k=v]"]), max_size=2),
)


@settings(max_examples=250)
@given(_selectors(), st.lists(_ELEMENT, min_size=1, max_size=7).map(" > ".join))
def test_matching_agrees_with_trying_every_anchoring(selector: str, raw: str) -> None:
    path = parse_path(raw)
    assert path is not None
    for alternative in compile_selector(selector).alternatives:
        for index in range(len(path)):
            expected = _reference_depth(alternative, path, index)
            assert match_depth(alternative, path, index) == expected


def _deep_path(elements: int, root: str = "div") -> tuple[PathElement, ...]:
    raw = " > ".join([root, *["div"] * (elements - 2), "a"])
    path = parse_path(raw, max_chars=len(raw), max_elements=elements)
    assert path is not None
    return path


@pytest.mark.parametrize(
    "selector",
    [
        "body div a",
        "body div div div a",
        "body > div a",
        ":is(body div) a",
        "div:not(body div) div a",
        " ".join(["div"] * (MAX_COMPOUNDS - 1) + ["a"]),
        " > ".join(["div"] * (MAX_COMPOUNDS - 1) + ["a"]),
        _nested(MAX_NESTING, "body div a"),
    ],
)
def test_matching_a_deep_path_takes_linear_time_and_no_deep_recursion(selector: str) -> None:
    path = _deep_path(8_000)
    (alternative,) = compile_selector(selector).alternatives
    started = time.perf_counter()
    found = match_depth(alternative, path, len(path) - 1)
    assert time.perf_counter() - started < 2.0
    if "body" in selector and "not" not in selector:
        assert found == -1
        assert match_depth(alternative, _deep_path(8_000, "body"), len(path) - 1) >= 0
    else:
        assert found >= 0


def test_matching_time_grows_linearly_with_the_path() -> None:
    (alternative,) = compile_selector("body div a").alternatives

    def cost(elements: int) -> float:
        path = _deep_path(elements)
        started = time.perf_counter()
        for _ in range(3):
            match_depth(alternative, path, len(path) - 1)
        return time.perf_counter() - started

    cost(1_000)
    assert cost(16_000) < 40 * max(cost(2_000), 1e-4)

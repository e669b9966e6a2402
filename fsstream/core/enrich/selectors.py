"""CSS selectors decided on one element path.

An event's ``raw_selector`` records the target element and its ancestors, nothing
else: no siblings, no children, no state. A definition's selector is therefore
accepted only if it can be decided from that path (type, universal, id, class and
attribute selectors, ``:is()``, ``:where()``, ``:not()``, descendant and child
combinators, selector lists); anything else is refused when the definition is loaded,
because it would match arbitrarily.

Identifiers in a selector accept CSS escapes (``.w-1\\/2``) and, since ``%`` cannot
otherwise appear in a CSS identifier, the percent escapes a raw selector uses
(``.w-1%2F2``), so a token copied from a raw selector means the same thing. Quoted
attribute values are CSS strings and are taken literally.

Tag and attribute names compare case-insensitively (HTML); ids, classes and attribute
values compare exactly unless the attribute selector carries the ``i`` flag.

A selector is refused past ``MAX_SELECTOR_CHARS`` characters, ``MAX_COMPOUNDS``
compound selectors (nested ones included) or ``MAX_NESTING`` levels of ``:is()``,
``:where()`` and ``:not()``, so compiling and matching one stays cheap. Matching takes
time linear in the path's length times the selector's size (``PathMatch``).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fsstream.core.enrich.errors import DefinitionError, rule_text
from fsstream.core.enrich.paths import PathElement, decode_token

Specificity = tuple[int, int, int]

MAX_SELECTOR_CHARS = 4_096
"""The longest selector a definition may have."""
MAX_COMPOUNDS = 128
"""The most compound selectors one definition's selector may hold, nested ones included."""
MAX_NESTING = 32
"""The deepest nesting of ``:is()``, ``:where()`` and ``:not()``."""

_WHITESPACE = " \t\n\r\f"
_HEX = "0123456789abcdefABCDEF"
_STRUCTURAL = frozenset(
    {
        "first-child",
        "last-child",
        "only-child",
        "first-of-type",
        "last-of-type",
        "only-of-type",
        "root",
    }
)
_LEGACY_PSEUDO_ELEMENTS = frozenset({"before", "after", "first-line", "first-letter"})


@dataclass(frozen=True, slots=True)
class AttributeTest:
    """An attribute selector such as ``[type=submit]`` or ``[href^="/shop" i]``."""

    name: str
    operator: str | None
    value: str = ""
    ignore_case: bool = False

    def holds(self, actual: str | None) -> bool:
        if actual is None:
            return False
        op = self.operator
        if op is None:
            return True
        if self.ignore_case:
            actual = actual.lower()
        value = self.value
        if op == "=":
            return actual == value
        if op == "~=":
            return bool(value) and not _has_whitespace(value) and value in actual.split()
        if op == "|=":
            return actual == value or actual.startswith(value + "-")
        if not value:
            return False
        if op == "^=":
            return actual.startswith(value)
        if op == "$=":
            return actual.endswith(value)
        return value in actual


@dataclass(frozen=True, slots=True)
class PseudoClass:
    """``:is()``, ``:where()`` or ``:not()`` with its selector-list argument."""

    name: str
    arguments: tuple[ComplexSelector, ...]


@dataclass(frozen=True, slots=True)
class CompoundSelector:
    """Simple selectors that all apply to one element."""

    tag: str | None
    ids: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    attributes: tuple[AttributeTest, ...] = ()
    pseudo_classes: tuple[PseudoClass, ...] = ()
    class_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_set", frozenset(self.classes))


@dataclass(frozen=True, slots=True)
class ComplexSelector:
    """Compound selectors joined by combinators, the target's compound last.

    ``child[k]`` is True when ``compounds[k]`` must be the parent of
    ``compounds[k + 1]`` and False when it may be any ancestor.
    """

    compounds: tuple[CompoundSelector, ...]
    child: tuple[bool, ...]
    specificity: Specificity = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "specificity", _sum(_compound_specificity(c) for c in self.compounds)
        )


@dataclass(frozen=True, slots=True)
class ElementSelector:
    """A definition's selector list, compiled."""

    text: str
    alternatives: tuple[ComplexSelector, ...]


def compile_selector(text: str) -> ElementSelector:
    """Parse a definition's selector, refusing what one element path cannot decide."""
    text = rule_text(text, "selector", MAX_SELECTOR_CHARS)
    return ElementSelector(text, _SelectorParser(text).parse())


def match_depth(selector: ComplexSelector, path: Sequence[PathElement], index: int) -> int:
    """How deep ``selector`` matches with its last compound on ``path[index]``; -1 if not.

    The depth of a match is the number of path elements its compound selectors are
    anchored on: one per compound, plus, for ``:is()``/``:where()``, the extra
    ancestors anchored by the deepest matching argument (``:not()`` anchors nothing).
    Where a descendant combinator allows several matches, the deepest counts.
    """
    if not 0 <= index < len(path):
        return -1
    return PathMatch(path, index).depth(selector)


class PathMatch:
    """Selectors matched against one path, the target at ``path[index]``.

    Compounds are anchored left to right: for each compound, the positions where the
    selector up to it matches, with the best depth there, found from the previous
    compound's positions (a prefix maximum for the descendant combinator). Each
    (compound, position) pair is decided once, so a selector costs at most its size
    times the path's length, and the only recursion is into ``:is()``/``:where()``/
    ``:not()`` arguments, as deep as their nesting (``MAX_NESTING``). Candidate
    positions come from an index of the path by id, class and tag, so a compound
    looks only at the elements that could satisfy it.
    """

    __slots__ = ("_by_class", "_by_id", "_by_tag", "_results", "index", "path")

    def __init__(self, path: Sequence[PathElement], index: int) -> None:
        self.path = path
        self.index = index
        self._results: dict[int, dict[int, int]] = {}
        self._by_tag: dict[str, list[int]] | None = None
        self._by_id: dict[str, list[int]] = {}
        self._by_class: dict[str, list[int]] = {}

    def depth(self, selector: ComplexSelector) -> int:
        """``match_depth`` of ``selector`` at the target."""
        compounds = selector.compounds
        index = self.index
        extra = self._extra(compounds[-1], index)
        if extra < 0:
            return -1
        if len(compounds) == 1:
            return extra + 1
        before = self._anchors(selector, len(compounds) - 1, index - 1)
        parent = selector.child[-1]
        rest = before.get(index - 1, -1) if parent else max(before.values(), default=-1)
        return -1 if rest < 0 else extra + 1 + rest

    def _anchors(self, selector: ComplexSelector, count: int, upto: int) -> dict[int, int]:
        """Position → best depth of ``compounds[:count]`` with its last compound there,
        for positions up to ``upto``, in increasing position order."""
        compounds = selector.compounds
        child = selector.child
        found: dict[int, int] = {}
        for j in range(count):
            compound = compounds[j]
            anchored: dict[int, int] = {}
            if j == 0:
                for k in self._positions(compound, 0, upto):
                    extra = self._extra(compound, k)
                    if extra >= 0:
                        anchored[k] = extra + 1
            elif child[j - 1]:
                for k, rest in found.items():
                    if k >= upto:
                        break
                    extra = self._extra(compound, k + 1)
                    if extra >= 0:
                        anchored[k + 1] = extra + 1 + rest
            else:
                earlier = list(found.items())
                i = 0
                best = -1
                for k in self._positions(compound, earlier[0][0] + 1, upto):
                    while i < len(earlier) and earlier[i][0] < k:
                        if earlier[i][1] > best:
                            best = earlier[i][1]
                        i += 1
                    extra = self._extra(compound, k)
                    if extra >= 0:
                        anchored[k] = extra + 1 + best
            found = anchored
            if not found:
                break
        return found

    def _positions(self, compound: CompoundSelector, first: int, last: int) -> Sequence[int]:
        """Positions from ``first`` to ``last`` where ``compound`` might match."""
        if first > last:
            return ()
        if compound.ids or compound.classes or compound.tag is not None:
            if self._by_tag is None:
                self._index()
            if compound.ids:
                candidates = self._by_id.get(compound.ids[0], [])
            elif compound.classes:
                candidates = self._by_class.get(compound.classes[0], [])
            else:
                assert self._by_tag is not None
                candidates = self._by_tag.get(compound.tag or "", [])
            return candidates[bisect_left(candidates, first) : bisect_right(candidates, last)]
        return range(first, last + 1)

    def _index(self) -> None:
        by_tag: dict[str, list[int]] = {}
        by_id = self._by_id
        by_class = self._by_class
        for k, element in enumerate(self.path[: self.index + 1]):
            by_tag.setdefault(element.tag, []).append(k)
            if element.id is not None:
                by_id.setdefault(element.id, []).append(k)
            for token in element.classes:
                by_class.setdefault(token, []).append(k)
        self._by_tag = by_tag

    def _argument(self, selector: ComplexSelector) -> dict[int, int]:
        """Position → depth of a pseudo-class argument, for every position at once."""
        key = id(selector)
        known = self._results.get(key)
        if known is None:
            known = self._anchors(selector, len(selector.compounds), self.index)
            self._results[key] = known
        return known

    def _extra(self, compound: CompoundSelector, k: int) -> int:
        """-1 if ``compound`` does not match ``path[k]``, else the extra depth it anchors."""
        element = self.path[k]
        if compound.tag is not None and compound.tag != element.tag:
            return -1
        for id_ in compound.ids:
            if id_ != element.id:
                return -1
        if compound.class_set and not compound.class_set <= element.classes:
            return -1
        if compound.attributes:
            attributes = element.attributes
            for test in compound.attributes:
                if not test.holds(attributes.get(test.name)):
                    return -1
        extra = 0
        for pseudo in compound.pseudo_classes:
            if pseudo.name == "not":
                for arg in pseudo.arguments:
                    if self._argument(arg).get(k, -1) >= 0:
                        return -1
                continue
            best = -1
            for arg in pseudo.arguments:
                depth = self._argument(arg).get(k, -1)
                if depth > best:
                    best = depth
            if best < 0:
                return -1
            extra += best - 1
        return extra


def _has_whitespace(text: str) -> bool:
    return any(c in _WHITESPACE for c in text)


def _sum(parts: Iterable[Specificity]) -> Specificity:
    a = b = c = 0
    for x, y, z in parts:
        a += x
        b += y
        c += z
    return (a, b, c)


def _compound_specificity(compound: CompoundSelector) -> Specificity:
    a = len(compound.ids)
    b = len(compound.classes) + len(compound.attributes)
    c = 0 if compound.tag is None else 1
    for pseudo in compound.pseudo_classes:
        if pseudo.name == "where":
            continue
        x, y, z = max(arg.specificity for arg in pseudo.arguments)
        a, b, c = a + x, b + y, c + z
    return (a, b, c)


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in _WHITESPACE:
        pos += 1
    return pos


def _is_name_char(c: str) -> bool:
    return not c.isascii() or c.isalnum() or c in "-_\\%"


class _SelectorParser:
    """Recursive descent over one selector's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.nesting = 0
        self.compounds = 0

    def error(self, reason: str, pos: int | None = None) -> DefinitionError:
        at = self.pos if pos is None else pos
        shown = repr(self.text) if len(self.text) <= 120 else repr(self.text[:100]) + "..."
        return DefinitionError(f"selector {shown}: {reason} (at position {at})")

    def peek(self, ahead: int = 0) -> str:
        at = self.pos + ahead
        return self.text[at] if at < len(self.text) else ""

    def skip_ws(self) -> bool:
        start = self.pos
        self.pos = _skip_ws(self.text, self.pos)
        return self.pos > start

    def parse(self) -> tuple[ComplexSelector, ...]:
        return self.selector_list(nested=False)

    def selector_list(self, *, nested: bool) -> tuple[ComplexSelector, ...]:
        selectors = [self.complex()]
        while True:
            c = self.peek()
            if c == ",":
                self.pos += 1
                selectors.append(self.complex())
            elif (c == ")" and nested) or (c == "" and not nested):
                return tuple(selectors)
            elif c == "":
                raise self.error("missing ')'")
            else:
                raise self.error(f"unexpected {c!r}")

    def refuse_combinator(self, c: str) -> DefinitionError:
        if c in "+~":
            return self.error(
                f"the sibling combinator {c!r} depends on the element's siblings, "
                "which a selector path does not record"
            )
        return self.error("the column combinator '||' is not supported")

    def complex(self) -> ComplexSelector:
        self.skip_ws()
        c = self.peek()
        if c in ("+", "~") or (c == "|" and self.peek(1) == "|"):
            raise self.refuse_combinator(c)
        if c == ">":
            raise self.error("a selector cannot start with a combinator")
        compounds = [self.compound()]
        child: list[bool] = []
        while True:
            had_space = self.skip_ws()
            c = self.peek()
            if c == ">":
                self.pos += 1
                self.skip_ws()
                child.append(True)
                compounds.append(self.compound())
            elif c in ("+", "~") or (c == "|" and self.peek(1) == "|"):
                raise self.refuse_combinator(c)
            elif c in ("", ",", ")"):
                return ComplexSelector(tuple(compounds), tuple(child))
            elif had_space:
                child.append(False)
                compounds.append(self.compound())
            else:
                raise self.error(f"unexpected {c!r}")

    def compound(self) -> CompoundSelector:
        self.compounds += 1
        if self.compounds > MAX_COMPOUNDS:
            raise self.error(f"more than {MAX_COMPOUNDS} compound selectors")
        start = self.pos
        tag: str | None = None
        c = self.peek()
        if c == "*":
            self.pos += 1
        elif c and _is_name_char(c):
            tag = self.name().lower()
        if self.peek() == "|":
            raise self.error("namespaces are not supported")
        ids: list[str] = []
        classes: list[str] = []
        attributes: list[AttributeTest] = []
        pseudo_classes: list[PseudoClass] = []
        while True:
            c = self.peek()
            if c == "#":
                self.pos += 1
                ids.append(self.name())
            elif c == ".":
                self.pos += 1
                classes.append(self.name())
            elif c == "[":
                attributes.append(self.attribute())
            elif c == ":":
                pseudo_classes.append(self.pseudo_class())
            else:
                break
        if self.pos == start:
            found = repr(c) if c else "the end"
            raise self.error(f"expected a selector, found {found}")
        return CompoundSelector(
            tag, tuple(ids), tuple(classes), tuple(attributes), tuple(pseudo_classes)
        )

    def name(self) -> str:
        """An identifier or name token, with CSS escapes and percent escapes decoded."""
        text = self.text
        n = len(text)
        start = self.pos
        out: list[str] = []
        run: list[str] = []
        while self.pos < n:
            c = text[self.pos]
            if c == "\\":
                out.append(decode_token("".join(run)))
                run.clear()
                out.append(self.escape())
            elif c == "%":
                pair = text[self.pos + 1 : self.pos + 3]
                if len(pair) != 2 or not all(h in _HEX for h in pair):
                    raise self.error("'%' must start a percent escape such as %2F")
                run.append(text[self.pos : self.pos + 3])
                self.pos += 3
            elif _is_name_char(c):
                run.append(c)
                self.pos += 1
            else:
                break
        out.append(decode_token("".join(run)))
        if self.pos == start:
            found = repr(self.peek()) if self.peek() else "the end"
            raise self.error(f"expected a name, found {found}")
        return "".join(out)

    def escape(self) -> str:
        """The character a CSS escape at ``self.pos`` stands for."""
        text = self.text
        n = len(text)
        self.pos += 1
        if self.pos >= n:
            raise self.error("a selector cannot end with a backslash")
        c = text[self.pos]
        if c in _HEX:
            end = self.pos
            while end < n and end - self.pos < 6 and text[end] in _HEX:
                end += 1
            code = int(text[self.pos : end], 16)
            self.pos = end
            if text.startswith("\r\n", self.pos):
                self.pos += 2
            elif self.pos < n and text[self.pos] in _WHITESPACE:
                self.pos += 1
            if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
                return "\ufffd"
            return chr(code)
        if c in "\r\n\f":
            raise self.error("a backslash cannot escape a newline")
        self.pos += 1
        return c

    def string(self) -> str:
        text = self.text
        n = len(text)
        quote = text[self.pos]
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= n:
                raise self.error("unterminated string", start)
            c = text[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c == "\\":
                if self.peek(1) == "\n":
                    self.pos += 2
                    continue
                out.append(self.escape())
            elif c in "\r\n\f":
                raise self.error("unterminated string", start)
            else:
                out.append(c)
                self.pos += 1

    def attribute(self) -> AttributeTest:
        self.pos += 1
        self.skip_ws()
        if self.peek() in ("*", "|"):
            raise self.error("namespaces are not supported")
        name = self.name().lower()
        if self.peek() == "|" and self.peek(1) != "=":
            raise self.error("namespaces are not supported")
        self.skip_ws()
        c = self.peek()
        if c == "]":
            self.pos += 1
            return AttributeTest(name, None)
        if c == "=":
            operator = "="
            self.pos += 1
        elif c in ("~", "|", "^", "$", "*") and self.peek(1) == "=":
            operator = c + "="
            self.pos += 2
        else:
            raise self.error("expected an attribute operator or ']'")
        self.skip_ws()
        c = self.peek()
        if c in ("'", '"'):
            value = self.string()
        elif c and _is_name_char(c):
            value = self.name()
        else:
            raise self.error("expected an attribute value")
        self.skip_ws()
        ignore_case = False
        c = self.peek()
        if c in ("i", "I", "s", "S"):
            ignore_case = c in ("i", "I")
            self.pos += 1
            self.skip_ws()
        if self.peek() != "]":
            raise self.error("expected ']'")
        self.pos += 1
        if ignore_case:
            value = value.lower()
        return AttributeTest(name, operator, value, ignore_case)

    def pseudo_class(self) -> PseudoClass:
        start = self.pos
        self.pos += 1
        if self.peek() == ":":
            self.pos += 1
            name = self.name().lower()
            raise self.error(f"the pseudo-element '::{name}' is never an event target", start)
        name = self.name().lower()
        if name in ("is", "where", "not"):
            if self.peek() != "(":
                raise self.error(f"':{name}' needs a selector list in parentheses")
            self.nesting += 1
            if self.nesting > MAX_NESTING:
                raise self.error(
                    f":is(), :where() and :not() nested more than {MAX_NESTING} deep", start
                )
            self.pos += 1
            arguments = self.selector_list(nested=True)
            self.pos += 1
            self.nesting -= 1
            return PseudoClass(name, arguments)
        if name in _LEGACY_PSEUDO_ELEMENTS:
            raise self.error(f"the pseudo-element ':{name}' is never an event target", start)
        if name in _STRUCTURAL or name.startswith("nth-"):
            raise self.error(
                f"':{name}' depends on the element's position among its siblings, "
                "which a selector path does not record",
                start,
            )
        if name in ("has", "empty"):
            raise self.error(
                f"':{name}' depends on the element's descendants, which a selector path "
                "does not record",
                start,
            )
        raise self.error(
            f"unknown or undecidable pseudo-class ':{name}'; only :is(), :where() and "
            ":not() can be decided on a selector path",
            start,
        )

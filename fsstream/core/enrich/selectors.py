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
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from fsstream.core.enrich.errors import DefinitionError
from fsstream.core.enrich.paths import PathElement, decode_token

Specificity = tuple[int, int, int]

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
    ``compounds[k + 1]`` and False when it may be any ancestor. ``fixed_depth`` says
    every match has the same depth, so the first match found is as deep as any.
    """

    compounds: tuple[CompoundSelector, ...]
    child: tuple[bool, ...]
    specificity: Specificity = field(init=False)
    fixed_depth: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "specificity", _sum(_compound_specificity(c) for c in self.compounds)
        )
        object.__setattr__(
            self, "fixed_depth", all(_compound_has_fixed_depth(c) for c in self.compounds)
        )


@dataclass(frozen=True, slots=True)
class ElementSelector:
    """A definition's selector list, compiled."""

    text: str
    alternatives: tuple[ComplexSelector, ...]


def compile_selector(text: str) -> ElementSelector:
    """Parse a definition's selector, refusing what one element path cannot decide."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError("selector must be a non-empty string")
    return ElementSelector(text, _SelectorParser(text).parse())


def match_depth(selector: ComplexSelector, path: Sequence[PathElement], index: int) -> int:
    """How deep ``selector`` matches with its last compound on ``path[index]``; -1 if not.

    The depth of a match is the number of path elements its compound selectors are
    anchored on: one per compound, plus, for ``:is()``/``:where()``, the extra
    ancestors anchored by the deepest matching argument (``:not()`` anchors nothing).
    Where a descendant combinator allows several matches, the deepest counts.
    """
    compounds = selector.compounds
    last = len(compounds) - 1
    if last == 0:
        extra = _compound_extra(compounds[0], path, index)
        return extra + 1 if extra >= 0 else -1
    return _anchored(selector, last, path, index, {})


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


def _compound_has_fixed_depth(compound: CompoundSelector) -> bool:
    return all(
        pseudo.name == "not"
        or all(len(arg.compounds) == 1 and arg.fixed_depth for arg in pseudo.arguments)
        for pseudo in compound.pseudo_classes
    )


def _compound_extra(compound: CompoundSelector, path: Sequence[PathElement], index: int) -> int:
    """-1 if ``compound`` does not match ``path[index]``, else the extra depth it anchors."""
    element = path[index]
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
                if match_depth(arg, path, index) >= 0:
                    return -1
            continue
        best = -1
        for arg in pseudo.arguments:
            depth = match_depth(arg, path, index)
            if depth > best:
                best = depth
        if best < 0:
            return -1
        extra += best - 1
    return extra


def _anchored(
    selector: ComplexSelector,
    j: int,
    path: Sequence[PathElement],
    index: int,
    memo: dict[int, int],
) -> int:
    """Depth of ``compounds[:j + 1]`` matched with ``compounds[j]`` on ``path[index]``."""
    if j == 0:
        extra = _compound_extra(selector.compounds[0], path, index)
        return extra + 1 if extra >= 0 else -1
    key = (j << 32) | index
    known = memo.get(key)
    if known is not None:
        return known
    extra = _compound_extra(selector.compounds[j], path, index)
    rest = -1
    if extra < 0:
        pass
    elif selector.child[j - 1]:
        if index > 0:
            rest = _anchored(selector, j - 1, path, index - 1, memo)
    else:
        for k in range(index - 1, -1, -1):
            depth = _anchored(selector, j - 1, path, k, memo)
            if depth > rest:
                rest = depth
                if selector.fixed_depth:
                    break
    result = -1 if rest < 0 else extra + 1 + rest
    memo[key] = result
    return result


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

    def error(self, reason: str, pos: int | None = None) -> DefinitionError:
        at = self.pos if pos is None else pos
        return DefinitionError(f"selector {self.text!r}: {reason} (at position {at})")

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
            self.pos += 1
            arguments = self.selector_list(nested=True)
            self.pos += 1
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

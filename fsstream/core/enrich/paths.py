"""Raw selector paths: the target element of an event and its ancestors.

A raw selector is compound selectors joined by ``>``, root first; each is a tag, then
``#id``, ``.class`` and ``[attr]``/``[attr=value]``/``[attr="value"]`` parts, with ids,
class tokens and attribute values percent-encoded (``.w-1%2F2`` is the class
``w-1/2``). Anything else is not a path, and matches no element definition.

Raw selectors come from event data, so they are read by a scanner that takes time
linear in their length whatever they hold, and paths beyond ``MAX_PATH_CHARS``
characters or ``MAX_PATH_ELEMENTS`` elements are not read at all (``PathTooLong``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote

MAX_PATH_CHARS = 65_536
"""The longest raw selector read; a DOM path is a few hundred characters."""
MAX_PATH_ELEMENTS = 1_024
"""The deepest path read; browsers stop nesting parsed HTML at 512 elements."""


class PathElement(NamedTuple):
    """One element of a raw selector path, with its tokens decoded."""

    tag: str
    id: str | None
    classes: frozenset[str]
    attributes: Mapping[str, str]


class PathTooLong(ValueError):
    """A raw selector longer or deeper than a path is read."""


PathPart = tuple[str, str, str | None]
"""One part of a compound as written, in path order: ``("#", id, None)``,
``(".", class, None)`` or ``("[", name, value)``, tokens and values decoded, the
attribute name as written and the value None for a bare ``[attr]``."""

PathCompound = tuple[str, list[PathPart]]
"""One compound of a raw selector as written: its tag (maybe empty) and its parts."""


def read_path(
    raw_selector: str,
    *,
    max_chars: int = MAX_PATH_CHARS,
    max_elements: int = MAX_PATH_ELEMENTS,
) -> list[PathCompound] | None:
    """The compounds of a raw selector as written, root first; None if it is not a
    selector path. The one reading of the format, for matching and for export alike.
    Raises PathTooLong past the bounds."""
    if len(raw_selector) > max_chars:
        raise PathTooLong(f"raw selector of {len(raw_selector)} characters (limit {max_chars})")
    return _Scanner(raw_selector).compounds(max_elements)


def parse_path(
    raw_selector: str,
    *,
    max_chars: int = MAX_PATH_CHARS,
    max_elements: int = MAX_PATH_ELEMENTS,
) -> tuple[PathElement, ...] | None:
    """The elements of a raw selector, root first; None if it is not a selector path.

    A bare ``[attr]`` is an attribute with an empty value. An element's ``class`` and
    ``id`` attributes are derived from its tokens unless the path lists them, so
    ``[class~=btn]`` works as in a document. Raises PathTooLong past the bounds.
    """
    compounds = read_path(raw_selector, max_chars=max_chars, max_elements=max_elements)
    if compounds is None:
        return None
    return tuple(_element(tag, parts) for tag, parts in compounds)


def _element(tag: str, parts: list[PathPart]) -> PathElement:
    element_id: str | None = None
    classes: list[str] = []
    attributes: dict[str, str] = {}
    for sigil, name, value in parts:
        if sigil == "#":
            element_id = name
        elif sigil == ".":
            classes.append(name)
        else:
            attributes[name.strip().lower()] = value or ""
    if classes and "class" not in attributes:
        attributes["class"] = " ".join(classes)
    if element_id is not None and "id" not in attributes:
        attributes["id"] = element_id
    return PathElement(tag.lower(), element_id, frozenset(classes), attributes)


def decode_token(token: str) -> str:
    """A token with its percent escapes decoded."""
    return unquote(token) if "%" in token else token


_SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
_TOKEN_STOP = frozenset("#.[>" + _SPACES)
_STOP_MARKS = str.maketrans({"\0": "\1", **{c: "\0" for c in _TOKEN_STOP}})
_NAME_STOP = frozenset("]\"'=")
_QUOTES = "\"'"


def _is_token_stop(c: str) -> bool:
    """Whether ``c`` ends a tag or token: ``#.[>`` or a space (``str.isspace``)."""
    return c in _TOKEN_STOP or c.isspace()


def _unquote(value: str) -> str:
    """A value that starts with a quote, without its first and last characters and
    with each backslash escape (not of a newline) replaced by its character."""
    content = value[1:-1]
    if "\\" not in content:
        return content
    out: list[str] = []
    i = 0
    n = len(content)
    while i < n:
        c = content[i]
        if c == "\\" and i + 1 < n and content[i + 1] != "\n":
            out.append(content[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


class _Scanner:
    """One pass over a raw selector, left to right.

    Grammar, per compound: spaces, a tag (no ``#.[>`` or space), then ``#``/``.``
    tokens and ``[name]``, ``[name=value]`` or ``[name="value"]`` parts, spaces, and
    ``>`` or the end. An unquoted value runs to the first ``]``; a quoted one (``"`` or
    ``'``, backslash escapes, no escaped newline) must be followed by ``]``.

    A value that starts with a quote and holds a ``]`` can end at either bracket;
    the quoted reading is taken when the rest of the compound can still be read after
    it. That question is answered by a table filled right to left (``_fill``), each
    position once, so the whole scan stays linear; it is only built for the rare
    selector that needs it.
    """

    __slots__ = ("_close", "_ok", "n", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self._ok: list[bool] = []
        self._close: dict[str, list[int]] = {}

    def compounds(self, max_elements: int) -> list[PathCompound] | None:
        text = self.text
        n = self.n
        marks = text.translate(_STOP_MARKS)
        compounds: list[PathCompound] = []
        pos = 0
        while True:
            while pos < n and text[pos].isspace():
                pos += 1
            start = pos
            pos = marks.find("\0", pos)
            if pos < 0:
                pos = n
            tag = text[start:pos]
            parts: list[PathPart] = []
            while pos < n:
                c = text[pos]
                if c == "#" or c == ".":
                    end = marks.find("\0", pos + 1)
                    if end < 0:
                        end = n
                    if end == pos + 1:
                        return None
                    parts.append((c, decode_token(text[pos + 1 : end]), None))
                elif c == "[":
                    attribute = self._attribute(pos)
                    if attribute is None:
                        return None
                    name, value, end = attribute
                    parts.append(("[", name, value))
                else:
                    break
                pos = end
            while pos < n and text[pos].isspace():
                pos += 1
            if pos < n and text[pos] != ">":
                return None
            if not tag and not parts:
                return None
            compounds.append((tag, parts))
            if pos == n:
                return compounds
            if len(compounds) >= max_elements:
                raise PathTooLong(f"raw selector deeper than {max_elements} elements")
            pos += 1

    def _attribute(self, pos: int) -> tuple[str, str | None, int] | None:
        """(name, decoded value, end) of the attribute part at ``pos``, the value None
        for a bare ``[attr]``; None if there is no attribute part there."""
        text = self.text
        n = self.n
        stop = pos + 1
        while stop < n and text[stop] not in _NAME_STOP:
            stop += 1
        if stop == pos + 1 or stop == n:
            return None
        name = text[pos + 1 : stop]
        c = text[stop]
        if c == "]":
            return name, None, stop + 1
        if c != "=":
            return None
        start = stop + 1
        bracket = text.find("]", start)
        if start < n and text[start] in _QUOTES:
            close = self._close_quote(start)
            if close >= 0 and close + 1 < n and text[close + 1] == "]":
                end = close + 2
                if end == bracket + 1 or self._ok_at(end):
                    return name, decode_token(_unquote(text[start : end - 1])), end
        if bracket < 0:
            return None
        value = text[start:bracket]
        if value[:1] in _QUOTES:
            value = _unquote(value)
        return name, decode_token(value), bracket + 1

    def _close_quote(self, start: int) -> int:
        """Where the quoted string opened at ``start`` closes; -1 if it does not."""
        if self._ok:
            return self._close[self.text[start]][start + 1]
        text = self.text
        n = self.n
        quote = text[start]
        i = start + 1
        while i < n:
            c = text[i]
            if c == quote:
                return i
            if c == "\\":
                if i + 1 >= n or text[i + 1] == "\n":
                    return -1
                i += 2
            else:
                i += 1
        return -1

    def _ok_at(self, pos: int) -> bool:
        """Whether the rest of a compound can be read from ``pos`` on, up to ``>`` or
        the end (in the parts of the compound, after a token or an attribute)."""
        if not self._ok:
            self._fill()
        return self._ok[pos]

    def _fill(self) -> None:
        """Every right-to-left table the compound question needs, in one pass."""
        text = self.text
        n = self.n
        ok = [False] * (n + 2)
        nxt = [n] * (n + 2)
        name = [n] * (n + 2)
        rbracket = [n] * (n + 2)
        nonspace = [n] * (n + 2)
        close = {q: [-1] * (n + 2) for q in _QUOTES}
        ok[n] = True
        for p in range(n - 1, -1, -1):
            c = text[p]
            nxt[p] = p if _is_token_stop(c) else nxt[p + 1]
            name[p] = p if c in _NAME_STOP else name[p + 1]
            rbracket[p] = p if c == "]" else rbracket[p + 1]
            nonspace[p] = nonspace[p + 1] if c.isspace() else p
            for quote, table in close.items():
                if c == quote:
                    table[p] = p
                elif c == "\\":
                    escaped_ok = p + 1 < n and text[p + 1] != "\n"
                    table[p] = table[p + 2] if escaped_ok else -1
                else:
                    table[p] = table[p + 1]
            if c == "#" or c == ".":
                end = nxt[p + 1]
                ok[p] = end > p + 1 and ok[end]
            elif c == "[":
                stop = name[p + 1]
                result = False
                if stop > p + 1 and stop < n:
                    if text[stop] == "]":
                        result = ok[stop + 1]
                    elif text[stop] == "=":
                        start = stop + 1
                        if start < n and text[start] in _QUOTES:
                            shut = close[text[start]][start + 1]
                            if shut >= 0 and shut + 1 < n and text[shut + 1] == "]":
                                result = ok[shut + 2]
                        bracket = rbracket[start] if start < n else n
                        if not result and bracket < n:
                            result = ok[bracket + 1]
                ok[p] = result
            else:
                w = nonspace[p]
                ok[p] = w == n or text[w] == ">"
        self._ok = ok
        self._close = close

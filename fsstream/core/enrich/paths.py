"""Raw selector paths: the target element of an event and its ancestors.

A raw selector is compound selectors joined by ``>``, root first; each is a tag, then
``#id``, ``.class`` and ``[attr]``/``[attr=value]``/``[attr="value"]`` parts, with ids,
class tokens and attribute values percent-encoded (``.w-1%2F2`` is the class
``w-1/2``). Anything else is not a path, and matches no element definition.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote


class PathElement(NamedTuple):
    """One element of a raw selector path, with its tokens decoded."""

    tag: str
    id: str | None
    classes: frozenset[str]
    attributes: Mapping[str, str]


def parse_path(raw_selector: str) -> tuple[PathElement, ...] | None:
    """The elements of a raw selector, root first; None if it is not a selector path.

    A bare ``[attr]`` is an attribute with an empty value. An element's ``class`` and
    ``id`` attributes are derived from its tokens unless the path lists them, so
    ``[class~=btn]`` works as in a document.
    """
    elements: list[PathElement] = []
    pos = 0
    end = len(raw_selector)
    while True:
        match = _COMPOUND.match(raw_selector, pos)
        if match is None:
            return None
        tag, parts, separator = match.groups()
        if not tag and not parts:
            return None
        elements.append(_element(tag, parts))
        pos = match.end()
        if not separator:
            return tuple(elements) if pos == end else None


def decode_token(token: str) -> str:
    """A token with its percent escapes decoded."""
    return unquote(token) if "%" in token else token


_QUOTED = r""""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"""
_ATTRIBUTE = rf"""\[([^\]"'=]+)(?:=({_QUOTED}|[^\]]*))?\]"""
_BARE_ATTRIBUTE = rf"""\[[^\]"'=]+(?:=(?:{_QUOTED}|[^\]]*))?\]"""
_TOKEN = r"[#.][^#.\[\s>]+"
_COMPOUND = re.compile(rf"\s*([^#.\[\s>]*)((?:{_TOKEN}|{_BARE_ATTRIBUTE})*)\s*(>|\Z)")
_PART = re.compile(rf"([#.])([^#.\[\s>]+)|{_ATTRIBUTE}")
_ESCAPE = re.compile(r"\\(.)")


def _element(tag: str, parts: str) -> PathElement:
    element_id: str | None = None
    classes: list[str] = []
    attributes: dict[str, str] = {}
    if parts and "[" not in parts:
        for token in parts.replace("#", ".#").split(".")[1:]:
            if token[0] == "#":
                element_id = decode_token(token[1:])
            else:
                classes.append(decode_token(token))
    elif parts:
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
    return PathElement(tag.lower(), element_id, frozenset(classes), attributes)

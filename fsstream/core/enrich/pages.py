"""Page URL patterns and the URLs of events they match.

Grammar: ``[host]/path[?query][#fragment]``.

- A pattern starting with ``/`` matches the path on any host; otherwise it starts with
  a host whose labels may be ``*`` (exactly one label) or ``**`` (any number, even
  none). A leading ``http://`` or ``https://`` and a ``:port`` are ignored: pages are
  told apart by host and path. A bare host (``example.com``) is its root page.
- In the path, ``*`` is exactly one segment and ``**`` any number of segments,
  including none; a wildcard must be a whole segment. Empty segments and a trailing
  slash do not count, so ``/a//b/`` is ``/a/b``. Segments compare percent-decoded and
  case-sensitively.
- ``?k=v&k2`` requires each listed parameter: ``k=v`` with that value among the URL's
  values, ``k`` alone present with any value.
- ``#fragment`` requires the URL's hash path to match it (with ``*``/``**`` as in the
  path; a leading ``/`` is optional, and ``#`` alone means no hash path); a ``?`` in
  the fragment constrains the hash query the same way. Without ``#`` the hash is
  not looked at.

The normalized form (lower-case host, no port, no trailing slash, canonical percent
encoding, merged wildcard runs, sorted query constraints) identifies the URLs a
pattern matches; no two active pages may share it.

A pattern is at most ``MAX_PATTERN_CHARS`` characters. Matching never recurses: it
takes time at most the pattern's segments times the URL's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, unquote_plus, urlsplit

from fsstream.core.enrich.errors import DefinitionError, rule_text


class Wildcard(Enum):
    """A wildcard segment (or host label) of a page pattern."""

    ONE = "*"
    ANY = "**"


Segment = str | Wildcard
QueryConstraint = tuple[str, str | None]
PageRank = tuple[int, int, int, int, int]

MAX_PATTERN_CHARS = 4_096

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PORT = re.compile(r":\d*$")
_HOST_LABEL = re.compile(r"[\w*-]+")
_SEGMENT_SAFE = "!$&'()+,;=:@"
_QUERY_SAFE = "!$'()*,;:@/"


@dataclass(frozen=True, slots=True)
class UrlParts:
    """The parts of an event's URL that page patterns test, decoded."""

    host: tuple[str, ...] | None
    path: tuple[str, ...]
    query: Mapping[str, Sequence[str]]
    fragment: tuple[str, ...]
    fragment_query: Mapping[str, Sequence[str]]


@dataclass(frozen=True, slots=True)
class PagePattern:
    """A parsed, normalized page URL pattern."""

    text: str
    host: tuple[Segment, ...] | None
    path: tuple[Segment, ...]
    query: tuple[QueryConstraint, ...]
    fragment: tuple[Segment, ...] | None
    fragment_query: tuple[QueryConstraint, ...]
    normalized: str

    @property
    def rank(self) -> PageRank:
        """Sort key, most literal first: literal segments (path and fragment), fewer
        ``**``, fewer ``*``, more query/fragment constraints, more literal host labels."""
        segments = (*self.path, *(self.fragment or ()))
        wildcards = (*segments, *(self.host or ()))
        literal = sum(1 for s in segments if isinstance(s, str))
        constraints = len(self.query) + len(self.fragment_query)
        constraints += self.fragment is not None
        host_labels = sum(1 for s in self.host or () if isinstance(s, str))
        return (
            -literal,
            wildcards.count(Wildcard.ANY),
            wildcards.count(Wildcard.ONE),
            -constraints,
            -host_labels,
        )

    def matches(self, url: UrlParts) -> bool:
        if self.host is not None and (url.host is None or not _glob(self.host, url.host)):
            return False
        if not _glob(self.path, url.path):
            return False
        if self.query and not _query_holds(self.query, url.query):
            return False
        if self.fragment is not None:
            if not _glob(self.fragment, url.fragment):
                return False
            if self.fragment_query and not _query_holds(self.fragment_query, url.fragment_query):
                return False
        return True


def parse_page_pattern(text: str) -> PagePattern:
    """Parse and normalize a page pattern, refusing what the grammar does not allow."""
    text = rule_text(text, "url pattern", MAX_PATTERN_CHARS)
    if any(c.isspace() for c in text):
        raise DefinitionError(f"url pattern {text!r}: whitespace is not allowed")
    rest = _SCHEME.sub("", text, count=1)
    rest, hash_sign, fragment_text = rest.partition("#")
    rest, _, query_text = rest.partition("?")
    if rest.startswith("/"):
        host = None
        path_text = rest
    else:
        host_text, slash, path_text = rest.partition("/")
        host = _host_labels(text, host_text)
        path_text = slash + path_text
    path = _segments(text, path_text)
    query = _constraints(text, query_text)
    fragment: tuple[Segment, ...] | None = None
    fragment_query: tuple[QueryConstraint, ...] = ()
    if hash_sign:
        fragment_path, _, fragment_query_text = fragment_text.partition("?")
        fragment = _segments(text, fragment_path)
        fragment_query = _constraints(text, fragment_query_text)
    normalized = _normalized(host, path, query, fragment, fragment_query)
    return PagePattern(text, host, path, query, fragment, fragment_query, normalized)


def url_parts(url: Mapping[str, Any]) -> UrlParts | None:
    """The parts of an event's ``Url`` object: its structured fields where present,
    ``full_url`` parsed for the rest; None if it has neither."""
    host = url.get("host")
    path = url.get("path")
    query = url.get("query")
    hash_path = url.get("hash_path")
    hash_query = url.get("hash_query")
    if host is None or path is None or query is None or hash_path is None or hash_query is None:
        full_url = url.get("full_url")
        if isinstance(full_url, str):
            try:
                split = urlsplit(full_url)
                parsed_host = split.hostname
            except ValueError:
                return None
            fragment_path, _, fragment_query = split.fragment.partition("?")
            host = parsed_host if host is None else host
            path = split.path if path is None else path
            query = _parse_query(split.query) if query is None else query
            hash_path = fragment_path if hash_path is None else hash_path
            hash_query = _parse_query(fragment_query) if hash_query is None else hash_query
        elif host is None and path is None:
            return None
    return UrlParts(
        host=_url_host(host),
        path=_url_segments(path),
        query=_url_query(query),
        fragment=_url_segments(hash_path),
        fragment_query=_url_query(hash_query),
    )


def _glob(pattern: tuple[Segment, ...], items: tuple[str, ...]) -> bool:
    """Wildcard matching over segments: ONE is one item, ANY any run of items."""
    n_pattern = len(pattern)
    n_items = len(items)
    p = i = 0
    star = -1
    resume = 0
    while i < n_items:
        if p < n_pattern:
            segment = pattern[p]
            if segment is Wildcard.ANY:
                star = p
                resume = i
                p += 1
                continue
            if segment is Wildcard.ONE or segment == items[i]:
                p += 1
                i += 1
                continue
        if star < 0:
            return False
        p = star + 1
        resume += 1
        i = resume
    while p < n_pattern and pattern[p] is Wildcard.ANY:
        p += 1
    return p == n_pattern


def _query_holds(
    constraints: tuple[QueryConstraint, ...], query: Mapping[str, Sequence[str]]
) -> bool:
    for key, value in constraints:
        values = query.get(key)
        if values is None or (value is not None and value not in values):
            return False
    return True


def _wildcard(pattern: str, part: str, what: str) -> Segment:
    if part == "*":
        return Wildcard.ONE
    if part == "**":
        return Wildcard.ANY
    if "*" in part:
        raise DefinitionError(
            f"url pattern {pattern!r}: '*' and '**' must be a whole {what} (got {part!r})"
        )
    return part


def _host_labels(pattern: str, host_text: str) -> tuple[Segment, ...]:
    host_text = _PORT.sub("", host_text).rstrip(".")
    if not host_text:
        raise DefinitionError(f"url pattern {pattern!r}: expected '/' or a host at the start")
    labels: list[Segment] = []
    for label in host_text.split("."):
        if not label:
            raise DefinitionError(f"url pattern {pattern!r}: empty host label")
        if not _HOST_LABEL.fullmatch(label):
            raise DefinitionError(f"url pattern {pattern!r}: invalid host {host_text!r}")
        labels.append(_wildcard(pattern, label.lower(), "host label"))
    return tuple(labels)


def _segments(pattern: str, path_text: str) -> tuple[Segment, ...]:
    segments = [_wildcard(pattern, part, "path segment") for part in path_text.split("/") if part]
    return _merge_wildcard_runs(
        [unquote(s) if isinstance(s, str) and "%" in s else s for s in segments]
    )


def _merge_wildcard_runs(segments: list[Segment]) -> tuple[Segment, ...]:
    """``**/*/**`` and ``*/**`` match the same runs; keep one canonical spelling."""
    merged: list[Segment] = []
    ones = 0
    any_ = False
    for segment in [*segments, ""]:
        if segment is Wildcard.ONE:
            ones += 1
        elif segment is Wildcard.ANY:
            any_ = True
        else:
            merged.extend([Wildcard.ONE] * ones)
            if any_:
                merged.append(Wildcard.ANY)
            ones = 0
            any_ = False
            merged.append(segment)
    merged.pop()
    return tuple(merged)


def _constraints(pattern: str, query_text: str) -> tuple[QueryConstraint, ...]:
    constraints: set[QueryConstraint] = set()
    for part in query_text.split("&"):
        if not part:
            continue
        key, equals, value = part.partition("=")
        if not key:
            raise DefinitionError(f"url pattern {pattern!r}: query parameter without a name")
        constraints.add((unquote_plus(key), unquote_plus(value) if equals else None))
    return tuple(sorted(constraints, key=lambda c: (c[0], c[1] is not None, c[1] or "")))


def _normalized(
    host: tuple[Segment, ...] | None,
    path: tuple[Segment, ...],
    query: tuple[QueryConstraint, ...],
    fragment: tuple[Segment, ...] | None,
    fragment_query: tuple[QueryConstraint, ...],
) -> str:
    text = "" if host is None else ".".join(_spell(label, None) for label in host)
    text += "/" + "/".join(_spell(s, _SEGMENT_SAFE) for s in path)
    text += _spell_query(query)
    if fragment is not None:
        text += "#/" + "/".join(_spell(s, _SEGMENT_SAFE) for s in fragment)
        text += _spell_query(fragment_query)
    return text


def _spell(segment: Segment, safe: str | None) -> str:
    if isinstance(segment, Wildcard):
        return segment.value
    return segment if safe is None else quote(segment, safe=safe)


def _spell_query(constraints: tuple[QueryConstraint, ...]) -> str:
    if not constraints:
        return ""
    parts = [
        quote(key, safe=_QUERY_SAFE)
        + ("" if value is None else "=" + quote(value, safe=_QUERY_SAFE))
        for key, value in constraints
    ]
    return "?" + "&".join(parts)


def _parse_query(text: str) -> dict[str, list[str]]:
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(text, keep_blank_values=True):
        query.setdefault(key, []).append(value)
    return query


def _url_host(host: object) -> tuple[str, ...] | None:
    if not isinstance(host, str) or not host:
        return None
    host = _PORT.sub("", host.lower()).rstrip(".")
    return tuple(host.split(".")) if host else None


def _url_segments(path: object) -> tuple[str, ...]:
    if not isinstance(path, str):
        return ()
    return tuple(unquote(s) if "%" in s else s for s in path.split("/") if s)


def _url_query(query: object) -> Mapping[str, Sequence[str]]:
    if not isinstance(query, Mapping):
        return {}
    values: dict[str, Sequence[str]] = {}
    for key, entry in query.items():
        if isinstance(entry, Mapping):
            entry = entry.get("values")
        if isinstance(entry, list):
            values[str(key)] = [v if isinstance(v, str) else str(v) for v in entry]
        elif entry is None:
            values[str(key)] = [""]
        else:
            values[str(key)] = [str(entry)]
    return values

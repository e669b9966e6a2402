"""Every version of every definition, and a matcher for any moment of that history.

Each record on the definitions topic starts a version of its definition, valid from
the record's Kafka timestamp; archiving and deleting are versions too. An event is
matched with the versions active at its own timestamp, so enrichment is forward only:
a version never applies before its record's timestamp, and a later change never
alters what an earlier timestamp matches.

Versions take effect in the order they are applied: a record whose timestamp is older
than one already applied takes effect at the newest applied timestamp instead, so
history is only ever appended to.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from fsstream.core.enrich.definitions import (
    KINDS,
    Definition,
    parse_definition,
    parse_definition_key,
)
from fsstream.core.enrich.errors import DefinitionError
from fsstream.core.enrich.matcher import (
    ELEMENT_CACHE_SIZE,
    PAGE_CACHE_SIZE,
    ElementMatcher,
    EventMatcher,
    Matcher,
    PageMatcher,
)
from fsstream.core.enrich.pages import PagePattern

_BEGINNING = -(2**63)
_END = 2**63
_CACHED_WINDOWS = 16
_CACHED_PARTS = 16

_Signature = tuple[str, tuple[tuple[str, Definition], ...]]


@dataclass(frozen=True, slots=True)
class DefinitionVersion:
    """A definition as it stood from ``valid_from_ms`` on; None once deleted."""

    kind: str
    definition_id: str
    valid_from_ms: int
    definition: Definition | None

    @property
    def active(self) -> bool:
        return self.definition is not None and self.definition.active


def _valid_from(version: DefinitionVersion) -> int:
    return version.valid_from_ms


class Catalog:
    """The version history of all definitions, with matchers cached per version window.

    A version window is a span of timestamps between two consecutive versions (of any
    definition); every timestamp in it sees the same definitions, hence one matcher.
    The window asked for last is checked first, so the hot path's call per raw
    record costs two comparisons.
    """

    def __init__(
        self,
        *,
        element_cache_size: int = ELEMENT_CACHE_SIZE,
        page_cache_size: int = PAGE_CACHE_SIZE,
    ) -> None:
        self._element_cache_size = element_cache_size
        self._page_cache_size = page_cache_size
        self._histories: dict[tuple[str, str], list[DefinitionVersion]] = {}
        self._changes: list[int] = []
        self._active_pages: dict[str, str] = {}
        self._windows: OrderedDict[int, Matcher] = OrderedDict()
        self._parts: OrderedDict[_Signature, ElementMatcher | PageMatcher | EventMatcher] = (
            OrderedDict()
        )
        self._empty = Matcher.of(())
        self._hot_from = _END
        self._hot_until = _BEGINNING
        self._hot = self._empty

    @property
    def high_water_ms(self) -> int | None:
        """The newest version's timestamp; None while the catalog is empty."""
        return self._changes[-1] if self._changes else None

    def apply_record(self, key: str, value: Mapping[str, Any] | None, at_ms: int) -> None:
        """Apply a definitions-topic record: key ``"<kind>:<id>"``, null value deletes."""
        kind, definition_id = parse_definition_key(key)
        self.apply(kind, definition_id, value, at_ms)

    def apply(
        self,
        kind: str,
        definition_id: str,
        definition: Mapping[str, Any] | None,
        at_ms: int,
    ) -> None:
        """Start a new version of a definition at ``at_ms``; None deletes it.

        Raises DefinitionError, leaving the catalog unchanged, for an invalid
        definition and for an active page whose normalized pattern another active page
        already has.
        """
        if kind not in KINDS:
            raise DefinitionError(
                f"unknown definition kind {kind!r}; expected one of {', '.join(KINDS)}"
            )
        parsed = None if definition is None else parse_definition(definition)
        if parsed is not None and (parsed.kind, parsed.id) != (kind, definition_id):
            raise DefinitionError(
                f"record for {kind}:{definition_id} carries the definition "
                f"{parsed.kind}:{parsed.id}"
            )
        key = (kind, definition_id)
        history = self._histories.get(key)
        current = history[-1].definition if history else None
        if parsed == current:
            return
        new_pattern = _active_page_pattern(parsed)
        if new_pattern is not None:
            holder = self._active_pages.get(new_pattern)
            if holder is not None and holder != definition_id:
                raise DefinitionError(
                    f"page definition {definition_id!r}: url pattern {new_pattern!r} is "
                    f"already used by active page {holder!r}; only one active page may "
                    "match a URL pattern, so archive, delete or change that page first"
                )

        effective = at_ms if not self._changes else max(at_ms, self._changes[-1])
        version = DefinitionVersion(kind, definition_id, effective, parsed)
        if history is None:
            history = self._histories[key] = []
        if history and history[-1].valid_from_ms == effective:
            history[-1] = version
        else:
            history.append(version)

        old_pattern = _active_page_pattern(current)
        if old_pattern is not None and self._active_pages.get(old_pattern) == definition_id:
            del self._active_pages[old_pattern]
        if new_pattern is not None:
            self._active_pages[new_pattern] = definition_id

        if not self._changes or self._changes[-1] < effective:
            self._changes.append(effective)
        self._windows.pop(effective, None)
        if self._hot_until > effective:
            self._forget_hot()

    def matcher_at(self, ts_ms: int) -> Matcher:
        """The definitions active at ``ts_ms``, compiled for matching."""
        if self._hot_from <= ts_ms < self._hot_until:
            return self._hot
        changes = self._changes
        i = bisect_right(changes, ts_ms)
        start = changes[i - 1] if i else _BEGINNING
        until = changes[i] if i < len(changes) else _END
        matcher = self._windows.get(start)
        if matcher is None:
            matcher = self._build(start)
            self._windows[start] = matcher
            if len(self._windows) > _CACHED_WINDOWS:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(start)
        self._hot_from, self._hot_until, self._hot = start, until, matcher
        return matcher

    def definitions_at(self, ts_ms: int) -> list[Definition]:
        """The definitions active at ``ts_ms``, by kind and id."""
        active = [
            version.definition
            for version in self._versions_at(ts_ms)
            if version.active and version.definition is not None
        ]
        return sorted(active, key=lambda d: (d.kind, d.id))

    def current(self) -> list[Definition]:
        """The latest version of every definition not deleted, archived ones included."""
        latest = [h[-1].definition for h in self._histories.values() if h[-1].definition]
        return sorted((d for d in latest if d is not None), key=lambda d: (d.kind, d.id))

    def versions(self) -> list[DefinitionVersion]:
        """The whole history, oldest first."""
        every = [version for history in self._histories.values() for version in history]
        return sorted(every, key=lambda v: (v.valid_from_ms, v.kind, v.definition_id))

    def prune(self, before_ms: int) -> None:
        """Forget versions no timestamp from ``before_ms`` on can see.

        Afterwards only timestamps from ``before_ms`` on are answered as before.
        """
        for key, history in list(self._histories.items()):
            i = bisect_right(history, before_ms, key=_valid_from)
            keep = history[max(i - 1, 0) :]
            if keep and keep[0].valid_from_ms <= before_ms and keep[0].definition is None:
                keep = keep[1:]
            if keep:
                self._histories[key] = keep
            else:
                del self._histories[key]
        self._changes = sorted(
            {v.valid_from_ms for history in self._histories.values() for v in history}
        )
        self._windows.clear()
        self._forget_hot()

    def _forget_hot(self) -> None:
        self._hot_from, self._hot_until, self._hot = _END, _BEGINNING, self._empty

    def _versions_at(self, ts_ms: int) -> list[DefinitionVersion]:
        found = []
        for history in self._histories.values():
            i = bisect_right(history, ts_ms, key=_valid_from)
            if i:
                found.append(history[i - 1])
        return found

    def _build(self, ts_ms: int) -> Matcher:
        by_kind: dict[str, list[Definition]] = {kind: [] for kind in KINDS}
        for version in self._versions_at(ts_ms):
            if version.active and version.definition is not None:
                by_kind[version.kind].append(version.definition)
        return Matcher(
            cast(ElementMatcher, self._part("element", by_kind["element"])),
            cast(PageMatcher, self._part("page", by_kind["page"])),
            cast(EventMatcher, self._part("event", by_kind["event"])),
        )

    def _part(
        self, kind: str, definitions: list[Definition]
    ) -> ElementMatcher | PageMatcher | EventMatcher:
        """The matcher for one kind, shared by windows where that kind did not change,
        so its caches stay warm when only other kinds change."""
        definitions.sort(key=lambda d: d.id)
        signature: _Signature = (kind, tuple((d.id, d) for d in definitions))
        part = self._parts.get(signature)
        if part is not None:
            self._parts.move_to_end(signature)
            return part
        if kind == "element":
            part = ElementMatcher(definitions, self._element_cache_size)
        elif kind == "page":
            part = PageMatcher(definitions, self._page_cache_size)
        else:
            part = EventMatcher(definitions)
        self._parts[signature] = part
        if len(self._parts) > _CACHED_PARTS:
            self._parts.popitem(last=False)
        return part


def _active_page_pattern(definition: Definition | None) -> str | None:
    if definition is None or definition.kind != "page" or not definition.active:
        return None
    return cast(PagePattern, definition.compiled).normalized

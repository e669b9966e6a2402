"""The definitions active at one moment, compiled for matching, and the enrichment of
one event with them.

Real traffic repeats a small set of selectors and URLs, so element and page results
are remembered per raw selector and per URL in bounded LRU caches that live as long
as the definitions they were computed with.

Raw selectors are event data: one longer than ``MAX_PATH_CHARS`` characters or deeper
than ``MAX_PATH_ELEMENTS`` elements matches no element definition, and is counted in
``PATHS_TOO_LONG``; one longer than ``CACHED_SELECTOR_CHARS`` is matched every time
rather than remembered, so the caches' memory stays bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from fsstream.core.enrich.definitions import Definition
from fsstream.core.enrich.events import EventRule, PropertyPredicate
from fsstream.core.enrich.pages import PagePattern, url_parts
from fsstream.core.enrich.paths import (
    MAX_PATH_CHARS,
    MAX_PATH_ELEMENTS,
    PathTooLong,
    parse_path,
)
from fsstream.core.enrich.selectors import ComplexSelector, ElementSelector, PathMatch

ELEMENT_CACHE_SIZE = 8192
PAGE_CACHE_SIZE = 4096
CACHED_SELECTOR_CHARS = 4096

PAGE_DEFINITION_ID = "page_definition_id"
ELEMENT_DEFINITION_ID = "element_definition_id"
ADDITIONAL_ELEMENT_DEFINITION_IDS = "additional_element_definition_ids"
EVENT_DEFINITION_ID = "event_definition_id"
ADDITIONAL_EVENT_DEFINITION_IDS = "additional_event_definition_ids"

_MISS: Any = object()
_Result = TypeVar("_Result")


class _Recent(OrderedDict[str, _Result]):
    """Results for the last ``size`` keys looked up, the least recently used forgotten
    first."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def recall(self, key: str) -> _Result:
        """The result remembered for ``key``, now the most recent; ``_MISS`` if none."""
        hit = self.get(key, _MISS)
        if hit is not _MISS:
            self.move_to_end(key)
        return hit

    def remember(self, key: str, result: _Result) -> _Result:
        self[key] = result
        if len(self) > self.size:
            self.popitem(last=False)
        return result


class Tally:
    """A count kept by the core, for a worker's metrics to read."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


PATHS_TOO_LONG = Tally()
"""Raw selectors not matched because they are longer or deeper than a path is read."""

_Candidate = tuple[ComplexSelector, int]
_CompiledEvent = tuple[str, str | None, str | None, tuple[PropertyPredicate, ...]]


class ElementMatcher:
    """Active element definitions, ranked most specific first for each raw selector.

    Rank: the CSS specificity of the definition's best matching alternative, then the
    depth of that match (see ``match_depth``), then earlier ``created_time``, then
    smaller id. Selectors are indexed by the id, class or tag their target compound
    requires, so only plausible ones are tried against a path.
    """

    __slots__ = (
        "_by_class",
        "_by_id",
        "_by_tag",
        "_cache",
        "_ids",
        "_max_chars",
        "_max_elements",
        "_tie_breaks",
        "_universal",
    )

    def __init__(
        self,
        definitions: Sequence[Definition],
        cache_size: int = ELEMENT_CACHE_SIZE,
        *,
        max_path_chars: int = MAX_PATH_CHARS,
        max_path_elements: int = MAX_PATH_ELEMENTS,
    ) -> None:
        self._max_chars = max_path_chars
        self._max_elements = max_path_elements
        self._ids = [d.id for d in definitions]
        self._tie_breaks = [(d.created_time, d.id) for d in definitions]
        self._by_id: dict[str, list[_Candidate]] = {}
        self._by_class: dict[str, list[_Candidate]] = {}
        self._by_tag: dict[str, list[_Candidate]] = {}
        self._universal: list[_Candidate] = []
        for index, definition in enumerate(definitions):
            selector = cast(ElementSelector, definition.compiled)
            for alternative in selector.alternatives:
                target = alternative.compounds[-1]
                entry = (alternative, index)
                if target.ids:
                    self._by_id.setdefault(target.ids[0], []).append(entry)
                elif target.classes:
                    self._by_class.setdefault(target.classes[0], []).append(entry)
                elif target.tag is not None:
                    self._by_tag.setdefault(target.tag, []).append(entry)
                else:
                    self._universal.append(entry)
        self._cache: _Recent[tuple[str, ...]] = _Recent(cache_size)

    def __bool__(self) -> bool:
        """Whether any element definition is active."""
        return bool(self._ids)

    def match(self, raw_selector: str) -> tuple[str, ...]:
        """Ids of the element definitions matching the path, best first."""
        if not self._ids:
            return ()
        if len(raw_selector) > CACHED_SELECTOR_CHARS:
            return self._match(raw_selector)
        hit = self._cache.recall(raw_selector)
        if hit is _MISS:
            hit = self._cache.remember(raw_selector, self._match(raw_selector))
        return hit

    def _match(self, raw_selector: str) -> tuple[str, ...]:
        try:
            path = parse_path(
                raw_selector, max_chars=self._max_chars, max_elements=self._max_elements
            )
        except PathTooLong:
            PATHS_TOO_LONG.value += 1
            return ()
        if path is None:
            return ()
        index = len(path) - 1
        target = path[index]
        candidates = list(self._universal)
        if target.id is not None:
            candidates += self._by_id.get(target.id, ())
        for token in target.classes:
            candidates += self._by_class.get(token, ())
        candidates += self._by_tag.get(target.tag, ())
        best: dict[int, tuple[int, int, int, int]] = {}
        on_path = PathMatch(path, index)
        for alternative, definition in candidates:
            depth = on_path.depth(alternative)
            if depth < 0:
                continue
            score = (*alternative.specificity, depth)
            prior = best.get(definition)
            if prior is None or score > prior:
                best[definition] = score
        tie_breaks = self._tie_breaks

        def rank(definition: int) -> tuple[int, int, int, int, tuple[int, str]]:
            a, b, c, depth = best[definition]
            return (-a, -b, -c, -depth, tie_breaks[definition])

        return tuple(self._ids[d] for d in sorted(best, key=rank))


class PageMatcher:
    """Active page definitions, most literal first; a URL gets the first that matches."""

    __slots__ = ("_cache", "_patterns")

    def __init__(
        self, definitions: Sequence[Definition], cache_size: int = PAGE_CACHE_SIZE
    ) -> None:
        def rank(definition: Definition) -> tuple[tuple[int, ...], int, str]:
            return (
                cast(PagePattern, definition.compiled).rank,
                definition.created_time,
                definition.id,
            )

        self._patterns = tuple(
            (cast(PagePattern, d.compiled), d.id) for d in sorted(definitions, key=rank)
        )
        self._cache: _Recent[str | None] = _Recent(cache_size)

    def __bool__(self) -> bool:
        """Whether any page definition is active."""
        return bool(self._patterns)

    def match(self, url: Mapping[str, Any]) -> str | None:
        """The id of the most literal page matching an event's ``Url`` object, if any.

        Results are remembered by ``full_url``, whose structured fields describe it.
        """
        if not self._patterns:
            return None
        key = url.get("full_url")
        if not isinstance(key, str):
            return self._match(url)
        hit = self._cache.recall(key)
        if hit is _MISS:
            hit = self._cache.remember(key, self._match(url))
        return hit

    def _match(self, url: Mapping[str, Any]) -> str | None:
        parts = url_parts(url)
        if parts is None:
            return None
        for pattern, page_id in self._patterns:
            if pattern.matches(parts):
                return page_id
        return None


class EventMatcher:
    """Active event definitions by event type, most predicates first."""

    __slots__ = ("_by_type",)

    def __init__(self, definitions: Sequence[Definition]) -> None:
        def rank(definition: Definition) -> tuple[int, int, str]:
            rule = cast(EventRule, definition.compiled)
            return (-rule.predicate_count, definition.created_time, definition.id)

        by_type: dict[str, list[_CompiledEvent]] = {}
        for definition in sorted(definitions, key=rank):
            rule = cast(EventRule, definition.compiled)
            by_type.setdefault(rule.event_type, []).append(
                (
                    definition.id,
                    rule.element_definition_id,
                    rule.page_definition_id,
                    rule.properties,
                )
            )
        self._by_type = {t: tuple(rules) for t, rules in by_type.items()}

    def __bool__(self) -> bool:
        """Whether any event definition is active."""
        return bool(self._by_type)

    def match(
        self,
        event_type: str,
        event_properties: Mapping[str, Any],
        element_ids: Sequence[str],
        page_id: str | None,
    ) -> list[str]:
        """Ids of the event definitions matching the event, best first."""
        rules = self._by_type.get(event_type)
        if not rules:
            return []
        matched = []
        for definition_id, element_id, required_page_id, predicates in rules:
            if element_id is not None and element_id not in element_ids:
                continue
            if required_page_id is not None and required_page_id != page_id:
                continue
            for predicate in predicates:
                if not predicate.holds(event_properties):
                    break
            else:
                matched.append(definition_id)
        return matched


@dataclass(frozen=True, slots=True)
class Matcher:
    """The definitions active at one moment, compiled for matching."""

    elements: ElementMatcher
    pages: PageMatcher
    events: EventMatcher

    @classmethod
    def of(cls, definitions: Sequence[Definition]) -> Matcher:
        """A matcher for these definitions, all taken as active."""
        by_kind: dict[str, list[Definition]] = {"element": [], "page": [], "event": []}
        for definition in definitions:
            by_kind[definition.kind].append(definition)
        return cls(
            ElementMatcher(by_kind["element"]),
            PageMatcher(by_kind["page"]),
            EventMatcher(by_kind["event"]),
        )


def enrich(
    event_type: str,
    event_properties: dict[str, Any],
    source_properties: dict[str, Any],
    matcher: Matcher,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the ids of the matching definitions into the event, in place, and return
    its two property objects.

    Per kind: where definitions of the kind are active, the computed ids replace those
    the event carried (so enriching twice changes nothing); where none are, the ids the
    source set are kept, since fsstream has nothing better, and event definitions that
    require an element or a page see them. An ``additional_*`` list stands beside its
    most specific id, as in Data Direct (``[]`` when one definition matched), never
    alone. Page and element come first because event definitions may require them.
    """
    if matcher.pages:
        url = source_properties.get("url")
        page_id = matcher.pages.match(url) if isinstance(url, dict) else None
        if page_id is None:
            source_properties.pop(PAGE_DEFINITION_ID, None)
        else:
            source_properties[PAGE_DEFINITION_ID] = page_id
    else:
        kept_page = source_properties.get(PAGE_DEFINITION_ID)
        page_id = kept_page if isinstance(kept_page, str) else None

    element_ids: Sequence[str] = ()
    target = event_properties.get("target")
    if isinstance(target, dict):
        if matcher.elements:
            raw_selector = target.get("raw_selector")
            if isinstance(raw_selector, str):
                element_ids = matcher.elements.match(raw_selector)
            _set_ranked(
                target, ELEMENT_DEFINITION_ID, ADDITIONAL_ELEMENT_DEFINITION_IDS, element_ids
            )
        else:
            element_ids = _ranked(target, ELEMENT_DEFINITION_ID, ADDITIONAL_ELEMENT_DEFINITION_IDS)

    if matcher.events:
        event_ids = matcher.events.match(event_type, event_properties, element_ids, page_id)
        _set_ranked(
            event_properties, EVENT_DEFINITION_ID, ADDITIONAL_EVENT_DEFINITION_IDS, event_ids
        )
    return event_properties, source_properties


def _set_ranked(
    properties: dict[str, Any], best_key: str, additional_key: str, ids: Sequence[str]
) -> None:
    """Write ranked ids as the most specific one and a fresh list of the others."""
    if ids:
        properties[best_key] = ids[0]
        properties[additional_key] = list(ids[1:])
    else:
        properties.pop(best_key, None)
        properties.pop(additional_key, None)


def _ranked(properties: Mapping[str, Any], best_key: str, additional_key: str) -> tuple[str, ...]:
    """The ranked ids an event already carries (the source's), best first."""
    best = properties.get(best_key)
    if not isinstance(best, str):
        return ()
    additional = properties.get(additional_key)
    if not isinstance(additional, list):
        return (best,)
    return (best, *(i for i in additional if isinstance(i, str)))

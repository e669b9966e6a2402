"""Enrichment of events with the ids of the element, page and event definitions they
match, forward only: each event sees the definition versions active at its timestamp.

Typical use: feed every definitions-topic record to ``Catalog.apply_record`` with its
Kafka timestamp, then for each raw record take ``catalog.matcher_at(record_ts_ms)``
and call ``enrich`` on each of its events.
"""

from fsstream.core.enrich.catalog import Catalog, DefinitionVersion
from fsstream.core.enrich.definitions import (
    ACTIVE,
    ARCHIVED,
    KINDS,
    Definition,
    parse_definition,
    parse_definition_key,
)
from fsstream.core.enrich.errors import DefinitionError
from fsstream.core.enrich.matcher import (
    ADDITIONAL_ELEMENT_DEFINITION_IDS,
    ADDITIONAL_EVENT_DEFINITION_IDS,
    ELEMENT_DEFINITION_ID,
    EVENT_DEFINITION_ID,
    PAGE_DEFINITION_ID,
    Matcher,
    enrich,
)

__all__ = [
    "ACTIVE",
    "ADDITIONAL_ELEMENT_DEFINITION_IDS",
    "ADDITIONAL_EVENT_DEFINITION_IDS",
    "ARCHIVED",
    "ELEMENT_DEFINITION_ID",
    "EVENT_DEFINITION_ID",
    "KINDS",
    "PAGE_DEFINITION_ID",
    "Catalog",
    "Definition",
    "DefinitionError",
    "DefinitionVersion",
    "Matcher",
    "enrich",
    "parse_definition",
    "parse_definition_key",
]

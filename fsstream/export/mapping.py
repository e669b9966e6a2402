"""Warehouse rows as Data Export events: the flat objects of the legacy bundles.

Pure functions, so every rule below can be checked one event at a time. A Data Export
event is one flat JSON object; what the base event model nests in ``event_properties``
and ``source_properties`` becomes top-level fields named as Data Export names them.

Rules where the Data Export reference leaves room:

- A field whose source value is absent is omitted, never null; ``""`` stays ``""``.
  Ids are JSON integers.
- ``EventType`` renames the event types Data Export knows under other names
  (``form_abandon`` → ``abandon``, ``mouse_thrash`` → ``thrash``, ``identify`` →
  ``uservar``, ``element_seen`` → ``seen``); every other type keeps its event-model name,
  so no event is dropped or disguised.
- The user fields (``UserAppKey``, ``UserEmail``, ``UserDisplayName``, custom user
  variables) come from the device's profile: its identify events merged in event order,
  where an identify for a different user id starts a new profile. ``IndvId`` is the
  device id while the device is anonymous, as Data Export does, and a stable 53-bit
  number derived from the user id once identified, so every device of one user shares
  it and JavaScript consumers read it exactly.
- Custom user variables are the identify ``user_properties``, named as provided, nested
  objects flattened with ``.``; a variable named like a standard field is left out
  rather than overwrite it.
- The behaviour modifiers are numbers on the event types they describe (0 when the
  heuristic did not fire) and absent elsewhere: ``EventModFrustrated`` (running rage
  click count), ``EventModDead`` and ``EventModError`` (0/1) on clicks,
  ``EventModSuspicious`` (1 SQL injection, 2 cross-site scripting) on changes and
  navigations.
- ``EventTargetSelectorTok`` is the raw selector in Data Export's token form: one
  space-separated token per tag, ``#id``, ``.class`` and ``=attr=value``, with every
  character other than ASCII letters and digits percent-encoded (``.my%2Dclass``). The
  raw selector is read as enrichment reads it (``fsstream.core.enrich.paths``), its own
  escapes decoded first; one that is not a selector path has no token form, and the
  field is omitted.
- The page of an event is its view. ``PageDuration`` and ``PageActiveDuration`` are
  whole-page figures supplied by the bundle builder, as are the ``PageNum*`` running
  totals; ``PageBrowser`` is ``Mobile App`` and ``PageDevice`` ``Mobile`` for events of
  the mobile SDK, which has no user agent.
- ``EventStart`` is the event time truncated to milliseconds, so an event never moves
  across a bundle boundary.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from fsstream.core.enrich.paths import PathTooLong, read_path
from fsstream.core.timefmt import format_event_time, parse_rfc3339_us

FIELDS = (
    "IndvId",
    "UserId",
    "SessionId",
    "PageId",
    "UserAppKey",
    "UserEmail",
    "UserDisplayName",
    "EventStart",
    "EventType",
    "EventCustomName",
    "EventTargetText",
    "EventTargetSelectorTok",
    "EventModFrustrated",
    "EventModDead",
    "EventModError",
    "EventModSuspicious",
    "PageUrl",
    "PageRefererUrl",
    "PageIp",
    "PageLatLong",
    "PageAgent",
    "PageBrowser",
    "PageDevice",
    "PageOperatingSystem",
    "PageDuration",
    "PageActiveDuration",
    "PageNumInfos",
    "PageNumWarnings",
    "PageNumErrors",
    "LoadDomContentTime",
    "LoadEventTime",
    "LoadFirstPaintTime",
)
"""The standard fields, in the order every exported object lists them."""

EVENT_TYPES = {
    "form_abandon": "abandon",
    "mouse_thrash": "thrash",
    "identify": "uservar",
    "element_seen": "seen",
}
"""Event-model types that Data Export names differently; the others keep their name."""

SUSPICIOUS_KINDS = {"sql_injection": 1, "xss": 2}

CONSOLE_EVENT_TYPES = frozenset({"console_message", "exception"})
"""Event types that move a page's console totals."""

_STANDARD = frozenset(FIELDS)
_INDIVIDUAL_BITS = (1 << 53) - 1


@dataclass(frozen=True, slots=True)
class UserProfile:
    """What a device's identify events have said about its user so far.

    ``fields`` and ``variable_fields`` are the profile as exported, worked out once
    rather than for every event of the device.
    """

    user_id: str | None = None
    email: str | None = None
    display_name: str | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    individual: int | None = field(init=False, repr=False, compare=False)
    fields: tuple[tuple[str, Any], ...] = field(init=False, repr=False, compare=False)
    variable_fields: tuple[tuple[str, Any], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        named = (
            ("UserAppKey", self.user_id),
            ("UserEmail", self.email),
            ("UserDisplayName", self.display_name),
        )
        individual = individual_id(self.user_id) if self.user_id else None
        object.__setattr__(self, "individual", individual)
        object.__setattr__(self, "fields", tuple((k, v) for k, v in named if v is not None))
        object.__setattr__(
            self, "variable_fields", tuple(sorted(self.variables.items(), key=lambda kv: kv[0]))
        )

    def identified(self, properties: Mapping[str, Any]) -> UserProfile:
        """The profile after one more identify event with these ``event_properties``.

        Fields the event leaves out keep their value; ``null`` user variables are unset.
        """
        user_id = _text(properties.get("user_id")) or None
        base = self if user_id is None or user_id == self.user_id else UserProfile()
        variables = dict(base.variables)
        user_properties = properties.get("user_properties")
        if isinstance(user_properties, Mapping):
            for name, value in _flatten(user_properties):
                if value is None:
                    variables.pop(name, None)
                elif name not in _STANDARD:
                    variables[name] = value
        return UserProfile(
            user_id=user_id or base.user_id,
            email=_text(properties.get("user_email")) or base.email,
            display_name=_text(properties.get("user_display_name")) or base.display_name,
            variables=variables,
        )


@dataclass(frozen=True, slots=True)
class PageTotals:
    """Figures of a whole page (view), the same on each of its events."""

    duration_ms: int
    active_duration_ms: int


@dataclass(frozen=True, slots=True)
class ConsoleTotals:
    """A page's console messages and errors up to and including an event."""

    infos: int = 0
    warnings: int = 0
    errors: int = 0

    def after(self, event_type: str | None, event_properties: str) -> ConsoleTotals:
        """The totals once an event of this type and these properties has happened."""
        if event_type not in CONSOLE_EVENT_TYPES:
            return self
        properties = parse_properties(event_properties)
        if event_type == "exception":
            count = _count(properties.get("exception_count"))
            return ConsoleTotals(self.infos, self.warnings, self.errors + max(count or 1, 1))
        level = _text(properties.get("console_message_level")) or "error"
        if level in ("log", "info", "debug"):
            return ConsoleTotals(self.infos + 1, self.warnings, self.errors)
        if level in ("warn", "warning"):
            return ConsoleTotals(self.infos, self.warnings + 1, self.errors)
        return ConsoleTotals(self.infos, self.warnings, self.errors + 1)


@lru_cache(maxsize=65_536)
def individual_id(user_app_key: str) -> int:
    """The IndvId shared by every device identified as ``user_app_key``."""
    digest = hashlib.sha256(b"fsstream individual\0" + user_app_key.encode()).digest()
    return int.from_bytes(digest[:8], "big") & _INDIVIDUAL_BITS or 1


def parse_properties(text: str | None) -> dict[str, Any]:
    """A properties column as an object; anything that is not a JSON object is empty."""
    if not text:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def event_start(event_time: str) -> str:
    """``EventStart``: the event time in UTC, truncated to milliseconds."""
    if len(event_time) == 27 and event_time.endswith("Z") and event_time[19] == ".":
        return event_time[:23] + "Z"
    us = parse_rfc3339_us(event_time)
    return format_event_time(us - us % 1000)[:23] + "Z"


def export_event(
    row: Mapping[str, Any],
    *,
    profile: UserProfile | None = None,
    page: PageTotals | None = None,
    console: ConsoleTotals | None = None,
) -> dict[str, Any]:
    """The Data Export object of one live warehouse row.

    ``profile`` is the device's user as of the bundle's end, ``page`` the totals of the
    row's view and ``console`` its view's console totals up to and including the row.
    """
    event_type = row["event_type"]
    device_id = row["device_id"]
    out: dict[str, Any] = {
        "IndvId": device_id
        if profile is None or profile.individual is None
        else profile.individual,
        "UserId": device_id,
    }
    if row.get("session_id") is not None:
        out["SessionId"] = row["session_id"]
    if row.get("view_id") is not None:
        out["PageId"] = row["view_id"]
    if profile is not None:
        out.update(profile.fields)
    out["EventStart"] = event_start(row["event_time"])
    out["EventType"] = EVENT_TYPES.get(event_type, event_type)
    event_fields, load_fields = _event_fields(event_type, row.get("event_properties"))
    out.update(event_fields)
    out.update(page_source_fields(row.get("source_type"), row.get("source_properties")))
    if page is not None:
        out["PageDuration"] = page.duration_ms
        out["PageActiveDuration"] = page.active_duration_ms
    if console is not None:
        out["PageNumInfos"] = console.infos
        out["PageNumWarnings"] = console.warnings
        out["PageNumErrors"] = console.errors
    out.update(load_fields)
    if profile is not None:
        out.update(profile.variable_fields)
    return out


Fields = tuple[tuple[str, Any], ...]


@lru_cache(maxsize=65_536)
def _event_fields(event_type: str, event_properties: str | None) -> tuple[Fields, Fields]:
    """The fields an event's properties give: the ``Event*`` ones and the ``Load*`` ones.

    Cached: clicks on one element, loads and custom events often repeat their properties.
    """
    properties = parse_properties(event_properties)
    fields: list[tuple[str, Any]] = []

    def add(name: str, value: Any) -> None:
        if value is not None:
            fields.append((name, value))

    if event_type == "custom":
        add("EventCustomName", _text(properties.get("event_name")))
    target = properties.get("target")
    if isinstance(target, Mapping):
        add("EventTargetText", _text(target.get("text")))
        selector = _text(target.get("raw_selector"))
        if selector:
            add("EventTargetSelectorTok", selector_tokens(selector))
    if event_type == "click":
        add("EventModFrustrated", max(_count(properties.get("fs_rage_count")) or 0, 0))
        add("EventModDead", 1 if (_count(properties.get("fs_dead_count")) or 0) > 0 else 0)
        add("EventModError", 1 if properties.get("fs_error_kind") else 0)
    elif event_type in ("change", "navigate"):
        add("EventModSuspicious", _suspicious(properties.get("fs_suspicious_kind")))
    event_fields = tuple(fields)
    fields.clear()
    if event_type == "load":
        add("LoadDomContentTime", _count(properties.get("dom_content_time_millis")))
        add("LoadEventTime", _count(properties.get("load_time_millis")))
        add("LoadFirstPaintTime", _count(properties.get("first_paint_time_millis")))
    return event_fields, tuple(fields)


@lru_cache(maxsize=16_384)
def page_source_fields(
    source_type: str | None, source_properties: str | None
) -> tuple[tuple[str, Any], ...]:
    """The ``Page*`` fields an event's source gives, in field order.

    Cached: every event of a view usually carries the same source properties.
    """
    source = parse_properties(source_properties)
    fields: list[tuple[str, Any]] = []

    def add(name: str, value: Any) -> None:
        if value is not None:
            fields.append((name, value))

    add("PageUrl", _text(_member(source, "url", "full_url")))
    add("PageRefererUrl", _text(_member(source, "initial_referrer", "full_url")))
    add("PageIp", _text(_member(source, "location", "ip_address")))
    add("PageLatLong", _text(_member(source, "location", "lat_long")))
    agent = source.get("user_agent")
    agent = agent if isinstance(agent, Mapping) else {}
    mobile = source_type == "mobile_app"
    add("PageAgent", _text(agent.get("raw_user_agent")))
    add("PageBrowser", _text(agent.get("browser")) or ("Mobile App" if mobile else None))
    add("PageDevice", _text(agent.get("device")) or ("Mobile" if mobile else None))
    add(
        "PageOperatingSystem",
        _text(agent.get("operating_system"))
        or _text(_member(source, "device", "operating_system")),
    )
    return tuple(fields)


@lru_cache(maxsize=16_384)
def selector_tokens(raw_selector: str) -> str | None:
    """A raw selector in Data Export's ``EventTargetSelectorTok`` form; None when it is
    not a selector path, as the core reads paths, or is too long or deep to read.

    ``body > div#app > button.btn-primary[type=submit]`` becomes
    ``body div #app button .btn%2Dprimary =type=submit``.
    """
    try:
        compounds = read_path(raw_selector)
    except PathTooLong:
        return None
    if compounds is None:
        return None
    tokens: list[str] = []
    for tag, parts in compounds:
        if tag:
            tokens.append(_encode(tag))
        for sigil, name, value in parts:
            if sigil != "[":
                tokens.append(sigil + _encode(name))
            elif value is None:
                tokens.append("=" + _encode(name.strip()))
            else:
                tokens.append(f"={_encode(name.strip())}={_encode(value)}")
    return " ".join(tokens)


_NOT_ALPHANUMERIC = re.compile(r"[^A-Za-z0-9]")


def _encode(text: str) -> str:
    return _NOT_ALPHANUMERIC.sub(
        lambda match: "".join(f"%{byte:02X}" for byte in match.group().encode()), text
    )


def _flatten(properties: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    pairs: list[tuple[str, Any]] = []
    for name, value in properties.items():
        if isinstance(value, Mapping):
            pairs.extend(_flatten(value, f"{prefix}{name}."))
        else:
            pairs.append((f"{prefix}{name}", value))
    return pairs


def _suspicious(kinds: Any) -> int:
    if isinstance(kinds, str):
        kinds = [kinds]
    if isinstance(kinds, list):
        for kind in kinds:
            if isinstance(kind, str) and kind in SUSPICIOUS_KINDS:
                return SUSPICIOUS_KINDS[kind]
    return 0


def _member(source: Mapping[str, Any], name: str, member: str) -> Any:
    value = source.get(name)
    return value.get(member) if isinstance(value, Mapping) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: Any) -> int | None:
    """An integral number, whether the JSON held it as an integer or a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value
    return round(value) if math.isfinite(value) else None

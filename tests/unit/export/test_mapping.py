"""Warehouse rows → Data Export events, one event type at a time."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from fsstream.export.mapping import (
    FIELDS,
    ConsoleTotals,
    PageTotals,
    UserProfile,
    event_start,
    export_event,
    individual_id,
    selector_tokens,
)

WEB_SOURCE = {
    "url": {"full_url": "https://shop.example.com/cart?x=1", "path": "/cart"},
    "user_agent": {
        "raw_user_agent": "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
        "browser": "Chrome",
        "operating_system": "Windows",
        "device": "Desktop",
    },
    "location": {"ip_address": "203.0.113.7", "lat_long": "37.7,-122.4", "country": "US"},
    "initial_referrer": {"full_url": "https://www.example.org/"},
}
MOBILE_SOURCE = {
    "app_screen_name": "cart",
    "device": {"manufacturer": "Apple", "model": "iPhone14,2", "operating_system": "iOS"},
    "location": {"ip_address": "198.51.100.4"},
}
SELECTOR = "body > div#app > main > form#checkout > button.btn.btn-primary[type=submit]"


def row(
    event_type: str,
    properties: dict[str, Any] | None = None,
    *,
    source: dict[str, Any] | None = None,
    source_type: str = "web",
    session_id: int | None = 222,
    view_id: int | None = 3,
) -> dict[str, Any]:
    return {
        "event_id": "e1",
        "event_time": "2024-01-01T10:20:30.123456Z",
        "processed_time": "2024-01-01T10:20:31.000000Z",
        "updated_time": None,
        "device_id": 111,
        "session_id": session_id,
        "view_id": view_id,
        "event_type": event_type,
        "event_properties": orjson.dumps(properties or {}).decode(),
        "source_type": source_type,
        "source_properties": orjson.dumps(WEB_SOURCE if source is None else source).decode(),
    }


def target(text: str = "Pay now", selector: str = SELECTOR) -> dict[str, Any]:
    return {"target": {"raw_selector": selector, "text": text, "masked": False}}


def test_a_plain_click_has_ids_time_target_page_and_zero_modifiers() -> None:
    event = export_event(row("click", target()))
    assert event == {
        "IndvId": 111,
        "UserId": 111,
        "SessionId": 222,
        "PageId": 3,
        "EventStart": "2024-01-01T10:20:30.123Z",
        "EventType": "click",
        "EventTargetText": "Pay now",
        "EventTargetSelectorTok": (
            "body div #app main form #checkout button .btn .btn%2Dprimary =type=submit"
        ),
        "EventModFrustrated": 0,
        "EventModDead": 0,
        "EventModError": 0,
        "PageUrl": "https://shop.example.com/cart?x=1",
        "PageRefererUrl": "https://www.example.org/",
        "PageIp": "203.0.113.7",
        "PageLatLong": "37.7,-122.4",
        "PageAgent": "Mozilla/5.0 (Windows NT 10.0) Chrome/120.0",
        "PageBrowser": "Chrome",
        "PageDevice": "Desktop",
        "PageOperatingSystem": "Windows",
    }
    assert list(event) == [name for name in FIELDS if name in event]
    assert all(isinstance(event[k], int) for k in ("IndvId", "UserId", "SessionId", "PageId"))


def test_a_rage_click_carries_its_running_count() -> None:
    event = export_event(row("click", {**target(), "fs_rage_count": 5}))
    assert (event["EventModFrustrated"], event["EventModDead"], event["EventModError"]) == (5, 0, 0)


def test_a_dead_click_is_one() -> None:
    event = export_event(row("click", {**target(), "fs_dead_count": 1}))
    assert (event["EventModFrustrated"], event["EventModDead"], event["EventModError"]) == (0, 1, 0)


def test_an_error_click_is_one_whatever_its_kind() -> None:
    for kind in ("unknown", "console", "exception"):
        event = export_event(row("click", {**target(), "fs_error_kind": kind}))
        assert (event["EventModDead"], event["EventModError"]) == (0, 1)


def test_a_change_has_the_new_text_and_no_click_modifiers() -> None:
    event = export_event(row("change", target(text="1339 Chestnut Street")))
    assert event["EventType"] == "change"
    assert event["EventTargetText"] == "1339 Chestnut Street"
    assert event["EventModSuspicious"] == 0
    assert "EventModFrustrated" not in event and "EventModDead" not in event


def test_suspicious_changes_are_one_for_sql_injection_and_two_for_xss() -> None:
    sql = export_event(row("change", {**target(), "fs_suspicious_kind": ["sql_injection"]}))
    xss = export_event(row("change", {**target(), "fs_suspicious_kind": ["xss"]}))
    assert (sql["EventModSuspicious"], xss["EventModSuspicious"]) == (1, 2)


def test_a_navigate_has_its_url_and_suspicious_flag() -> None:
    event = export_event(row("navigate", {"navigate_reason": "navigate"}))
    assert event["EventType"] == "navigate"
    assert event["PageUrl"] == "https://shop.example.com/cart?x=1"
    assert event["EventModSuspicious"] == 0
    xss = export_event(row("navigate", {"fs_suspicious_kind": ["xss", "sql_injection"]}))
    assert xss["EventModSuspicious"] == 2
    assert "EventTargetText" not in event


def test_a_custom_event_has_its_name() -> None:
    event = export_event(
        row("custom", {"event_name": "Order Completed", "event_properties": {"amount": 5}})
    )
    assert event["EventType"] == "custom"
    assert event["EventCustomName"] == "Order Completed"
    assert "EventModSuspicious" not in event


def test_a_load_has_its_timings() -> None:
    event = export_event(
        row(
            "load",
            {
                "dom_content_time_millis": 640,
                "load_time_millis": 1775,
                "first_paint_time_millis": 512.4,
                "largest_paint_time_millis": 900,
            },
        )
    )
    assert event["EventType"] == "load"
    assert (event["LoadDomContentTime"], event["LoadEventTime"], event["LoadFirstPaintTime"]) == (
        640,
        1775,
        512,
    )
    assert "EventModFrustrated" not in event


def test_abandon_thrash_identify_and_seen_take_their_data_export_names() -> None:
    renamed = {
        "form_abandon": "abandon",
        "mouse_thrash": "thrash",
        "identify": "uservar",
        "element_seen": "seen",
    }
    for event_type, name in renamed.items():
        assert export_event(row(event_type, target()))["EventType"] == name
    assert export_event(row("form_abandon", target(text="")))["EventTargetText"] == ""


def test_other_event_types_keep_their_name() -> None:
    for event_type in ("exception", "console_message", "request", "copy", "background"):
        assert export_event(row(event_type))["EventType"] == event_type


def test_the_profile_gives_user_fields_an_individual_id_and_custom_vars() -> None:
    profile = UserProfile().identified(
        {
            "user_id": "user-42",
            "user_email": "ada@example.com",
            "user_display_name": "Ada",
            "user_properties": {"plan_str": "pro", "seats_int": 12, "company": {"name": "Acme"}},
        }
    )
    event = export_event(row("click", target()), profile=profile)
    assert event["UserAppKey"] == "user-42"
    assert event["UserEmail"] == "ada@example.com"
    assert event["UserDisplayName"] == "Ada"
    assert event["IndvId"] == individual_id("user-42") != 111
    assert event["UserId"] == 111
    assert (event["plan_str"], event["seats_int"], event["company.name"]) == ("pro", 12, "Acme")
    # Custom variables come last, by name, after every standard field.
    assert list(event)[-3:] == ["company.name", "plan_str", "seats_int"]


def test_every_device_of_one_user_shares_the_individual_id() -> None:
    first = individual_id("user-42")
    assert first == individual_id("user-42")
    assert first != individual_id("user-43")
    assert 0 < first < 2**53


def test_identify_events_merge_and_a_new_user_starts_a_new_profile() -> None:
    profile = UserProfile().identified(
        {"user_id": "u1", "user_email": "u1@example.com", "user_properties": {"a": 1, "b": 2}}
    )
    # setUserVars-style: no user id, only some variables, one unset.
    profile = profile.identified({"user_properties": {"b": None, "c": 3}})
    assert profile.user_id == "u1" and profile.email == "u1@example.com"
    assert dict(profile.variables) == {"a": 1, "c": 3}
    other = profile.identified({"user_id": "u2", "user_display_name": "Two"})
    assert (other.user_id, other.email, other.display_name) == ("u2", None, "Two")
    assert dict(other.variables) == {}


def test_a_custom_var_never_overwrites_a_standard_field() -> None:
    profile = UserProfile().identified(
        {"user_id": "u1", "user_properties": {"EventType": "oops", "PageUrl": "x", "ok": True}}
    )
    event = export_event(row("click", target()), profile=profile)
    assert event["EventType"] == "click"
    assert event["PageUrl"] == "https://shop.example.com/cart?x=1"
    assert event["ok"] is True


def test_an_anonymous_device_has_no_user_fields() -> None:
    event = export_event(row("click", target()), profile=UserProfile())
    assert event["IndvId"] == event["UserId"] == 111
    assert not {"UserAppKey", "UserEmail", "UserDisplayName"} & set(event)


def test_page_totals_and_console_counts_are_added_when_given() -> None:
    event = export_event(
        row("click", target()),
        page=PageTotals(duration_ms=51_439, active_duration_ms=36_692),
        console=ConsoleTotals(infos=1, warnings=3, errors=2),
    )
    assert (event["PageDuration"], event["PageActiveDuration"]) == (51_439, 36_692)
    assert (event["PageNumInfos"], event["PageNumWarnings"], event["PageNumErrors"]) == (1, 3, 2)


def test_console_totals_count_errors_and_exceptions() -> None:
    totals = ConsoleTotals()
    totals = totals.after("console_message", '{"console_message_level": "error"}')
    totals = totals.after("exception", '{"exception_count": 3, "message": "boom"}')
    totals = totals.after("console_message", '{"console_message_level": "warn"}')
    totals = totals.after("console_message", '{"console_message_level": "info"}')
    totals = totals.after("click", "{}")
    assert totals == ConsoleTotals(infos=1, warnings=1, errors=4)


def test_mobile_events_have_app_browser_device_and_os() -> None:
    event = export_event(row("click", target(), source=MOBILE_SOURCE, source_type="mobile_app"))
    assert event["PageBrowser"] == "Mobile App"
    assert event["PageDevice"] == "Mobile"
    assert event["PageOperatingSystem"] == "iOS"
    assert event["PageIp"] == "198.51.100.4"
    assert "PageUrl" not in event and "PageAgent" not in event


def test_an_event_without_session_or_view_has_no_page_ids() -> None:
    event = export_event(row("custom", {"event_name": "Server"}, session_id=None, view_id=None))
    assert "SessionId" not in event and "PageId" not in event
    assert event["UserId"] == 111


def test_absent_values_are_omitted_never_null() -> None:
    event = export_event(row("click", {}, source={}))
    assert None not in event.values()
    assert "EventTargetText" not in event and "PageUrl" not in event


def test_event_start_truncates_to_milliseconds_in_utc() -> None:
    assert event_start("2024-01-01T23:59:59.999999Z") == "2024-01-01T23:59:59.999Z"
    assert event_start("2024-01-01T10:20:30.5+02:00") == "2024-01-01T08:20:30.500Z"


def test_selector_tokens_encode_everything_but_letters_and_digits() -> None:
    assert selector_tokens("html.no-js > body > a.cta-go[href='#/market']") == (
        "html .no%2Djs body a .cta%2Dgo =href=%23%2Fmarket"
    )
    # The raw selector's own escapes are decoded first, so they are not encoded twice.
    assert selector_tokens("div.w-1%2F2 > input[disabled]") == "div .w%2D1%2F2 input =disabled"
    assert selector_tokens("UIWindow > UIButton#pay") == "UIWindow UIButton #pay"


# Realistic raw selectors and their token form, as the export has always written them.
SELECTOR_TOKENS = [
    (
        "body > div#app > main > div.product-grid > div.card > button.add-to-cart",
        "body div #app main div .product%2Dgrid div .card button .add%2Dto%2Dcart",
    ),
    (
        "html > body > div#root > ul.nav > li.nav-item.active > a[href='/pricing'][data-track]",
        "html body div #root ul .nav li .nav%2Ditem .active a =href=%2Fpricing =data%2Dtrack",
    ),
    (
        'body > div.modal[aria-hidden="false"] > button[title="Close \\"x\\""]',
        "body div .modal =aria%2Dhidden=false button =title=Close%20%22x%22",
    ),
    (
        "html > body > div.sm%3Aflex.w-1%2F2 > span#caf%C3%A9",
        "html body div .sm%3Aflex .w%2D1%2F2 span #caf%C3%A9",
    ),
    (
        "UIApplication > UIWindow > UITabBar > UIButton#checkout_button",
        "UIApplication UIWindow UITabBar UIButton #checkout%5Fbutton",
    ),
    ("my-widget > svg > path[d=M0%200h24v24H0z]", "my%2Dwidget svg path =d=M0%200h24v24H0z"),
    ("body>div>[role=dialog]>button", "body div =role=dialog button"),
    ("div > input[value=]", "div input =value="),
]


@pytest.mark.parametrize(("raw", "tokens"), SELECTOR_TOKENS)
def test_realistic_selectors_keep_their_token_form(raw: str, tokens: str) -> None:
    assert selector_tokens(raw) == tokens


@pytest.mark.parametrize("raw", ["div span", "ul > li + li", "body > div.", "a[b", "a > > b"])
def test_a_raw_selector_that_is_not_a_path_has_no_token_form(raw: str) -> None:
    assert selector_tokens(raw) is None
    assert "EventTargetSelectorTok" not in export_event(row("click", target(selector=raw)))


def test_a_hostile_selector_is_tokenised_in_linear_time_and_a_huge_one_not_at_all() -> None:
    hostile = "a" + '[b=""]' * 8_000 + "!"
    started = time.perf_counter()
    assert selector_tokens(hostile) is None
    assert selector_tokens(hostile[:-1]) is not None
    assert time.perf_counter() - started < 1.0
    assert selector_tokens(" > ".join(["div"] * 2_000)) is None

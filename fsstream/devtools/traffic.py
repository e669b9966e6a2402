"""Synthetic capture traffic in the base event model, for the demo, the benchmark and tests.

Deterministic for a seed. Sessions from web and mobile sources produce views with
navigates, loads, clicks (rage, dead and error flags), changes (some suspicious),
custom events and identifies. Each view's events are ingested in batches shortly
after they happen; a fraction arrives late, after the reorder grace.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fsstream.core.timefmt import format_event_time

PAGES = [
    ("/", "Home"),
    ("/products", "Products"),
    ("/products/shoes", "Shoes"),
    ("/products/shoes/42", "Shoe"),
    ("/cart", "Cart"),
    ("/checkout", "Checkout"),
    ("/account/settings", "Settings"),
    ("/search", "Search"),
    ("/blog/2024/launch", "Blog"),
]
SELECTORS = [
    "body > div#app > header > nav > a.logo",
    "body > div#app > main > div.product-grid > div.card > button.add-to-cart",
    "body > div#app > main > form#checkout > button.btn.btn-primary[type=submit]",
    "body > div#app > main > form#checkout > input#email",
    "body > div#app > main > div.search > input.search-box",
    "body > div#app > footer > a.help",
    "body > div#app > main > div.cart > button.remove",
]
BROWSERS = [
    ("Chrome", "Windows", "Desktop"),
    ("Safari", "OS X", "Desktop"),
    ("Firefox", "Linux", "Desktop"),
    ("Safari", "iOS", "Mobile"),
    ("Chrome", "Android", "Mobile"),
]
CUSTOM_EVENTS = ["Order Completed", "Product Viewed", "Signed Up", "Coupon Applied"]


@dataclass(frozen=True, slots=True)
class TrafficEvent:
    """A generated event and when it is ingested; ``late`` marks a deliberately late arrival."""

    ingested_time: int
    event: dict[str, Any]
    late: bool


def _source(rng: random.Random, web: bool, path: str) -> tuple[str, dict[str, Any]]:
    if web:
        browser, os_name, device = rng.choice(BROWSERS)
        return "web", {
            "url": {
                "full_url": f"https://shop.example.com{path}",
                "host": "shop.example.com",
                "path": path,
                "query": {},
                "hash_path": "",
                "hash_query": {},
            },
            "user_agent": {
                "browser": browser,
                "operating_system": os_name,
                "device": device,
                "raw_user_agent": f"Mozilla/5.0 ({os_name}) {browser}",
            },
            "location": {
                "ip_address": f"203.0.113.{rng.randrange(1, 255)}",
                "country": "US",
                "lat_long": "37.7,-122.4",
            },
            "initial_referrer": {
                "full_url": "https://www.example.org/",
                "host": "www.example.org",
                "path": "/",
            },
            "entrypoint": "web client",
            "origin": "dom",
            "integration": "fs",
        }
    screen = path.strip("/") or "home"
    return "mobile_app", {
        # The mobile SDK reports the screen as a URL and the app as the user agent.
        "url": {
            "full_url": f"app://com.example.shop/{screen}",
            "host": "com.example.shop",
            "path": path,
            "query": {},
            "hash_path": "",
            "hash_query": {},
        },
        "user_agent": {
            "browser": "Mobile App",
            "operating_system": "iOS",
            "device": "Mobile",
            "raw_user_agent": "Shop/5.2.1 (com.example.shop; iPhone14,2; iOS 17.4)",
        },
        "app_screen_name": screen,
        "app_name": "Shop",
        "app_package_name": "com.example.shop",
        "app_version": "5.2.1",
        "device": {
            "manufacturer": "Apple",
            "model": "iPhone14,2",
            "operating_system": "iOS",
            "os_version": "17.4",
            "screen_height": 844,
            "screen_width": 390,
        },
        "location": {"ip_address": f"198.51.100.{rng.randrange(1, 255)}", "country": "US"},
    }


def _event_properties(rng: random.Random, event_type: str, user: int) -> dict[str, Any]:
    if event_type == "click":
        props: dict[str, Any] = {
            "target": {
                "raw_selector": rng.choice(SELECTORS),
                "text": "Add to cart",
                "masked": False,
            }
        }
        roll = rng.random()
        if roll < 0.05:
            props["fs_rage_count"] = rng.randrange(3, 8)
        elif roll < 0.10:
            props["fs_dead_count"] = 1
        elif roll < 0.13:
            props["fs_error_kind"] = rng.choice(["unknown", "console", "exception"])
        return props
    if event_type == "change":
        props = {"target": {"raw_selector": SELECTORS[3], "text": "x", "masked": True}}
        if rng.random() < 0.05:
            props["fs_suspicious_kind"] = [rng.choice(["sql_injection", "xss"])]
        return props
    if event_type == "navigate":
        return {"navigate_reason": rng.choice(["navigate", "navigate", "reload", "back_forward"])}
    if event_type == "load":
        return {
            "dom_content_time_millis": rng.randrange(100, 2000),
            "load_time_millis": rng.randrange(500, 5000),
            "first_paint_time_millis": rng.randrange(50, 1500),
        }
    if event_type == "custom":
        return {
            "event_name": rng.choice(CUSTOM_EVENTS),
            "event_properties": {"amount": rng.randrange(1, 500), "currency": "USD"},
        }
    if event_type == "identify":
        return {
            "user_id": f"user-{user}",
            "user_email": f"user{user}@example.com",
            "user_display_name": f"User {user}",
            "user_properties": {"plan": "pro"},
        }
    return {}


def generate(
    *,
    seed: int,
    sessions: int,
    start_ms: int,
    duration_ms: int,
    late_fraction: float = 0.02,
    late_delay_ms: tuple[int, int] = (10_000, 120_000),
    batch_events: int = 20,
    batch_window_ms: tuple[int, int] = (500, 3_000),
    idle_bursts: int = 0,
    view_events: tuple[int, int] = (3, 30),
) -> Iterator[TrafficEvent]:
    """Traffic of ``sessions`` sessions starting within ``duration_ms`` after ``start_ms``.

    A view's events are ingested in batches of at most ``batch_events``, each batch
    closing ``batch_window_ms`` after it opened. ``idle_bursts`` views get a burst of
    events from their past, ingested ten minutes after the view went quiet.
    Yields events in no particular order; sort by ``ingested_time`` to produce them.
    """
    rng = random.Random(seed)
    bursts = set(rng.sample(range(sessions), min(idle_bursts, sessions)))
    for number in range(sessions):
        device_id = 1_000_000 + rng.randrange(sessions * 4)
        session_id = 10_000_000 + number
        web = rng.random() < 0.75
        moment = start_ms + rng.randrange(max(duration_ms, 1))
        for view_id in range(1, rng.randrange(2, 6)):
            path, _title = rng.choice(PAGES)
            source_type, source_properties = _source(rng, web, path)
            types = ["navigate", "load"] if web else ["navigate"]
            if view_id == 1 and rng.random() < 0.6:
                types.append("identify")
            types += rng.choices(
                ["click", "click", "click", "change", "custom"], k=rng.randrange(*view_events)
            )
            view_start = moment
            batch_ingested = moment + rng.randrange(*batch_window_ms)
            in_batch = 0
            for event_type in types:
                moment += rng.randrange(50, 4_000)
                if in_batch >= batch_events or moment >= batch_ingested:
                    batch_ingested = moment + rng.randrange(*batch_window_ms)
                    in_batch = 0
                in_batch += 1
                late = rng.random() < late_fraction
                ingested = batch_ingested + (rng.randrange(*late_delay_ms) if late else 0)
                event = {
                    "device_id": device_id,
                    "session_id": session_id,
                    "view_id": view_id,
                    "event_time": format_event_time(moment * 1000),
                    "event_type": event_type,
                    "event_properties": _event_properties(rng, event_type, device_id),
                    "source_type": source_type,
                    "source_properties": source_properties,
                }
                yield TrafficEvent(ingested, event, late)
            if number in bursts and view_id == 1:
                burst_ingested = moment + 600_000
                for _ in range(rng.randrange(10, 20)):
                    event_type = rng.choice(["click", "change", "custom"])
                    yield TrafficEvent(
                        burst_ingested,
                        {
                            "device_id": device_id,
                            "session_id": session_id,
                            "view_id": view_id,
                            "event_time": format_event_time(
                                rng.randrange(view_start, moment) * 1000
                            ),
                            "event_type": event_type,
                            "event_properties": _event_properties(rng, event_type, device_id),
                            "source_type": source_type,
                            "source_properties": source_properties,
                        },
                        True,
                    )

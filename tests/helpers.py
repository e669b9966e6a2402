"""Helpers shared by tests."""

from __future__ import annotations

import os

from fsstream.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child ``fsstream`` process use ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSSTREAM_")}
    for key, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"FSSTREAM_{key.upper()}"] = str(value)
    return env

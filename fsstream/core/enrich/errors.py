"""The one error a definition can raise when it is loaded."""

from __future__ import annotations

from typing import Any


class DefinitionError(ValueError):
    """A definition that cannot be loaded; the message names it and says why."""


def rule_text(text: Any, what: str, limit: int) -> str:
    """``text``, the ``what`` of a rule (``selector``, ``url pattern``), refused unless it
    is a non-empty string of at most ``limit`` characters."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(f"{what} must be a non-empty string")
    if len(text) > limit:
        raise DefinitionError(
            f"{what} of {len(text)} characters is longer than the {limit} allowed"
        )
    return text

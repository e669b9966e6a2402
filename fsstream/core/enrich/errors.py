"""The one error a definition can raise when it is loaded."""

from __future__ import annotations


class DefinitionError(ValueError):
    """A definition that cannot be loaded; the message names it and says why."""

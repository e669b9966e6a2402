"""The view key, shared by the core and the I/O around it."""

from __future__ import annotations


def view_key(device_id: int, session_id: int | None, view_id: int | None) -> str:
    """``"<device_id>:<session_id>:<view_id>"``, with empty parts when absent."""
    return (
        f"{device_id}:{'' if session_id is None else session_id}:"
        f"{'' if view_id is None else view_id}"
    )

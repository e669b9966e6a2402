"""How deeply a parsed JSON value nests, found without recursion (input controls depth)."""

from __future__ import annotations

from collections.abc import Iterable


def json_depth(value: object, stop_past: int | None = None) -> int:
    """Levels of arrays and objects in ``value`` (a scalar is 0, ``{}`` is 1).

    With ``stop_past``, the walk ends as soon as the depth passes it.
    """
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > deepest:
            deepest = depth
            if stop_past is not None and deepest > stop_past:
                break
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest

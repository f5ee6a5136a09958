"""Pure helpers for the task graph of a job (no ORM)."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def find_cycle(edges: Mapping[K, Iterable[K]]) -> list[K] | None:
    """Return one cycle as a path [a, b, ..., a] in the graph node -> parents, or None.

    Iterative depth-first search, so a 10,000-task chain does not hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour: dict[K, int] = {}
    for start in edges:
        if colour.get(start, white) != white:
            continue
        stack: list[tuple[K, list[K]]] = [(start, list(edges.get(start, ())))]
        path = [start]
        colour[start] = grey
        while stack:
            node, pending = stack[-1]
            if not pending:
                colour[node] = black
                stack.pop()
                path.pop()
                continue
            nxt = pending.pop()
            state = colour.get(nxt, white)
            if state == grey:
                return [*path[path.index(nxt) :], nxt]
            if state == white:
                colour[nxt] = grey
                path.append(nxt)
                stack.append((nxt, list(edges.get(nxt, ()))))
    return None

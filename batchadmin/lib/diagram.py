"""Layout of a job's task diagram: boxes in columns by dependency depth, curved arrows (no ORM).

The page draws the result as inline SVG; this module only does the geometry.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

NODE_W = 120
NODE_H = 56  # three lines: key, description, status
GAP_X = 92  # room for a join and an arrow's label ("Ended or error" on two lines)
GAP_Y = 16
MARGIN = 8
# A task with several conditions has a join at its left side that says All or Any; its
# arrows end there.
JOIN_W = 26
LABEL_GAP = 3  # between two labels stacked in one gap
# Columns centre on the tallest one up to this many boxes (about the height of the page's
# diagram panel): a job with one column of 80 boxes would otherwise draw its first task 2,000
# px down, below an empty panel.
CENTRE_ROWS = 12


@dataclass(frozen=True)
class Box(Generic[K]):
    id: K
    x: float
    y: float
    layer: int


@dataclass(frozen=True)
class Arrow(Generic[K]):
    parent: K
    child: K
    kind: str
    path: str  # SVG path data
    label_x: float
    label_y: float


@dataclass(frozen=True)
class Join(Generic[K]):
    """Where the arrows of a task with several conditions meet, left of its box."""

    child: K
    x: float
    y: float


@dataclass(frozen=True)
class Layout(Generic[K]):
    width: float
    height: float
    boxes: dict[K, Box[K]]
    arrows: list[Arrow[K]]
    joins: dict[K, Join[K]]


def depths(nodes: Sequence[K], parents: dict[K, list[K]]) -> dict[K, int]:
    """Longest path from a node without parents: 0 for roots, 1 + the deepest parent otherwise.

    Kahn's algorithm, so a long chain needs no recursion. Nodes on a cycle (the forms refuse
    cycles, but the diagram must still draw) go one column after the rest.
    """
    known = set(nodes)
    children: dict[K, list[K]] = {n: [] for n in nodes}
    waiting = dict.fromkeys(nodes, 0)
    for child in nodes:
        for parent in parents.get(child, ()):
            if parent in known:
                children[parent].append(child)
                waiting[child] += 1
    depth = dict.fromkeys(nodes, 0)
    ready = [n for n in nodes if waiting[n] == 0]
    done: set[K] = set()
    while ready:
        node = ready.pop()
        done.add(node)
        for child in children[node]:
            depth[child] = max(depth[child], depth[node] + 1)
            waiting[child] -= 1
            if waiting[child] == 0:
                ready.append(child)
    if len(done) < len(nodes):
        last = max((depth[n] for n in done), default=-1) + 1
        for n in nodes:
            if n not in done:
                depth[n] = last
    return depth


def layout(
    nodes: Sequence[K],
    edges: Sequence[tuple[K, K, str]],
    *,
    label_height: Callable[[str], float] = lambda kind: 12,
) -> Layout[K]:
    """Place ``nodes`` (in their display order) and route ``edges`` (parent, child, kind).

    1. Column = dependency depth, so every arrow points right.
    2. Inside a column, order by the mean row of a node's parents (barycentre), which removes
       most crossings of a typical job; ties keep the display order.
    3. Each column is centred vertically on the tallest one, or on the first CENTRE_ROWS rows
       when that is taller, so the start of a big job is in sight.
    4. Arrows are cubic curves from the parent's right side to the child's left side, or to
       its join when it has several parents.
    5. Labels (``label_height(kind)`` pixels tall) sit in the gap before the child, where no
       box is, on their curve; labels that would meet there are moved apart, top to bottom,
       so no two overlap, and the drawing grows to hold the last one.
    """
    parents: dict[K, list[K]] = {}
    for parent, child, _ in edges:
        parents.setdefault(child, []).append(parent)
    depth = depths(nodes, parents)
    columns: list[list[K]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for node in nodes:
        columns[depth[node]].append(node)

    row: dict[K, float] = {}
    order = {n: i for i, n in enumerate(nodes)}
    for column in columns:
        if row:

            def centre(n: K) -> tuple[float, int]:
                rows = [row[p] for p in parents.get(n, ()) if p in row]
                return (sum(rows) / len(rows) if rows else float("inf"), order[n])

            column.sort(key=centre)
        for i, node in enumerate(column):
            row[node] = i

    tallest = max((len(c) for c in columns), default=0)
    centre_on = min(tallest, CENTRE_ROWS)
    boxes: dict[K, Box[K]] = {}
    for layer, column in enumerate(columns):
        offset = max(centre_on - len(column), 0) * (NODE_H + GAP_Y) / 2
        for i, node in enumerate(column):
            boxes[node] = Box(
                id=node,
                x=MARGIN + layer * (NODE_W + GAP_X),
                y=MARGIN + offset + i * (NODE_H + GAP_Y),
                layer=layer,
            )

    joins = {
        child: Join(child=child, x=boxes[child].x - JOIN_W, y=boxes[child].y + NODE_H / 2)
        for child, ps in parents.items()
        if child in boxes and len([p for p in ps if p in boxes]) > 1
    }
    arrows = []
    for parent, child, kind in edges:
        if parent not in boxes or child not in boxes:
            continue
        a, b = boxes[parent], boxes[child]
        x1, y1 = a.x + NODE_W, a.y + NODE_H / 2
        # Stop short: the arrow head ends at the border (of the box, or of its join).
        x2, y2 = (joins[child].x if child in joins else b.x) - 2, b.y + NODE_H / 2
        bend = max((x2 - x1) / 2, 30)
        c1, c2 = (x1 + bend, y1), (x2 - bend, y2)
        free = GAP_X - (JOIN_W if child in joins else 0)
        lx, ly = _point_at_x((x1, y1), c1, c2, (x2, y2), x2 - free / 2)
        arrows.append(
            Arrow(
                parent=parent,
                child=child,
                kind=kind,
                path=f"M{x1:g},{y1:g} C{c1[0]:g},{c1[1]:g} {c2[0]:g},{c2[1]:g} {x2:g},{y2:g}",
                label_x=round(lx, 1),
                label_y=round(ly, 1),
            )
        )
    arrows, bottom = _apart(arrows, [boxes[a.child].layer for a in arrows], label_height)
    width = MARGIN * 2 + len(columns) * NODE_W + max(len(columns) - 1, 0) * GAP_X
    height = MARGIN * 2 + tallest * NODE_H + max(tallest - 1, 0) * GAP_Y
    return Layout(
        width=width,
        height=max(height, bottom + MARGIN),
        boxes=boxes,
        arrows=arrows,
        joins=joins,
    )


def _apart(
    arrows: list[Arrow[K]], gaps: list[int], label_height: Callable[[str], float]
) -> tuple[list[Arrow[K]], float]:
    """Move labels that share a gap (``gaps[i]``: the column arrow i ends in) apart, top to
    bottom, each at least as low as its curve puts it, or lower if the one above needs the
    room; also the lowest label's bottom."""
    by_gap: dict[int, list[int]] = defaultdict(list)
    for i, gap in enumerate(gaps):
        by_gap[gap].append(i)
    moved = list(arrows)
    bottom = 0.0
    for members in by_gap.values():
        members.sort(key=lambda i: (arrows[i].label_y, i))
        floor = float("-inf")
        for i in members:
            half = label_height(arrows[i].kind) / 2
            y = max(arrows[i].label_y, floor + half)
            moved[i] = replace(arrows[i], label_y=round(y, 1))
            floor = y + half + LABEL_GAP
            bottom = max(bottom, y + half)
    return moved, bottom


Point = tuple[float, float]


def _bezier(p0: Point, p1: Point, p2: Point, p3: Point, t: float) -> Point:
    u = 1 - t
    return (
        u**3 * p0[0] + 3 * u * u * t * p1[0] + 3 * u * t * t * p2[0] + t**3 * p3[0],
        u**3 * p0[1] + 3 * u * u * t * p1[1] + 3 * u * t * t * p2[1] + t**3 * p3[1],
    )


def _point_at_x(p0: Point, p1: Point, p2: Point, p3: Point, x: float) -> Point:
    """The curve's point whose x is ``x`` (x grows with t on these curves): bisection."""
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if _bezier(p0, p1, p2, p3, mid)[0] < x:
            lo = mid
        else:
            hi = mid
    return _bezier(p0, p1, p2, p3, (lo + hi) / 2)

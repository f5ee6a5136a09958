"""Layout of a job's task diagram: boxes in columns by dependency depth, curved arrows (no ORM).

The page draws the result as inline SVG; this module only does the geometry.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

NODE_W = 104
NODE_H = 46
GAP_X = 84  # room for an arrow's label ("Ended or error")
GAP_Y = 16
MARGIN = 8
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
class Layout(Generic[K]):
    width: float
    height: float
    boxes: dict[K, Box[K]]
    arrows: list[Arrow[K]]


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


def layout(nodes: Sequence[K], edges: Sequence[tuple[K, K, str]]) -> Layout[K]:
    """Place ``nodes`` (in their display order) and route ``edges`` (parent, child, kind).

    1. Column = dependency depth, so every arrow points right.
    2. Inside a column, order by the mean row of a node's parents (barycentre), which removes
       most crossings of a typical job; ties keep the display order.
    3. Each column is centred vertically on the tallest one, or on the first CENTRE_ROWS rows
       when that is taller, so the start of a big job is in sight.
    4. Arrows are cubic curves from the parent's right side to the child's left side; the
       label sits in the gap before the child, where labels of arrows that share a parent
       don't meet.
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

    arrows = []
    for parent, child, kind in edges:
        if parent not in boxes or child not in boxes:
            continue
        a, b = boxes[parent], boxes[child]
        x1, y1 = a.x + NODE_W, a.y + NODE_H / 2
        x2, y2 = b.x - 2, b.y + NODE_H / 2  # stop short: the arrow head ends at the border
        bend = max((x2 - x1) / 2, 30)
        c1, c2 = (x1 + bend, y1), (x2 - bend, y2)
        lx, ly = _point_at_x((x1, y1), c1, c2, (x2, y2), x2 - GAP_X / 2)
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
    width = MARGIN * 2 + len(columns) * NODE_W + max(len(columns) - 1, 0) * GAP_X
    height = MARGIN * 2 + tallest * NODE_H + max(tallest - 1, 0) * GAP_Y
    return Layout(width=width, height=height, boxes=boxes, arrows=arrows)


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

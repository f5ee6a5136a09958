"""What the batch job page shows of a job's tasks: the grid's rows and the diagram.

Three queries for any number of tasks (tasks, conditions, unserved groups); everything else is
looked up in memory.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from django.http import Http404

from batchadmin.jobs.models import BatchJob, BatchTask, BatchTaskCondition
from batchadmin.lib import diagram
from batchadmin.processes import registry
from batchadmin.servers.models import BatchGroup

Expected = BatchTaskCondition.ExpectedStatus


@dataclass(frozen=True)
class Condition:
    parent_pk: int
    parent_key: str
    expected: str

    @property
    def expected_label(self) -> str:
        return str(Expected(self.expected).label)


@dataclass
class TaskRow:
    task: BatchTask
    conditions: list[Condition] = field(default_factory=list)
    unserved_group: bool = False  # no enabled batch server serves the task's group

    @property
    def process(self) -> registry.BatchProcess | None:
        try:
            return registry.get(self.task.process)
        except registry.UnknownProcess:
            return None


@dataclass(frozen=True)
class Node:
    row: TaskRow
    x: float
    y: float


@dataclass(frozen=True)
class Arrow:
    path: str
    kind: str
    label: str
    label_x: float
    label_y: float
    title: str

    @property
    def label_lines(self) -> list[str]:
        # "Ended or error" is wider than the gap between two columns: two short lines.
        return textwrap.wrap(self.label, 9)

    @property
    def label_dy(self) -> int:
        """Baseline offset of the first line, so the lines centre on the arrow."""
        return 4 - 6 * (len(self.label_lines) - 1)


@dataclass(frozen=True)
class Diagram:
    width: float
    height: float
    node_w: int
    node_h: int
    nodes: list[Node]
    arrows: list[Arrow]

    @property
    def status_x(self) -> int:
        return self.node_w - 8

    @property
    def min_width(self) -> int:
        """The page may shrink the drawing to fit its column, but not below this: it scrolls."""
        return int(self.width * 0.85)


def rows(job: BatchJob) -> list[TaskRow]:
    tasks = list(job.tasks.select_related("company", "group").order_by("position", "pk"))
    by_pk = {t.pk: TaskRow(t) for t in tasks}
    conditions = (
        BatchTaskCondition.objects.filter(task__job=job)
        .order_by("pk")
        .values_list("task_id", "depends_on_id", "expected_status")
    )
    for child, parent, expected in conditions:
        if child in by_pk and parent in by_pk:
            by_pk[child].conditions.append(Condition(parent, by_pk[parent].task.key, expected))
    unserved = set(BatchGroup.objects.exclude(servers__enabled=True).values_list("pk", flat=True))
    for row in by_pk.values():
        row.unserved_group = row.task.group_id in unserved
    return list(by_pk.values())


def row(job: BatchJob, task_pk: int) -> TaskRow:
    for r in rows(job):
        if r.task.pk == task_pk:
            return r
    raise Http404("No such task in this batch job.")


def build_diagram(task_rows: list[TaskRow]) -> Diagram:
    edges = [(c.parent_pk, r.task.pk, c.expected) for r in task_rows for c in r.conditions]
    placed = diagram.layout([r.task.pk for r in task_rows], edges)
    by_pk = {r.task.pk: r for r in task_rows}
    nodes = [Node(by_pk[pk], box.x, box.y) for pk, box in placed.boxes.items()]
    arrows = [
        Arrow(
            path=a.path,
            kind=a.kind,
            label=str(Expected(a.kind).label),
            label_x=a.label_x,
            label_y=a.label_y,
            title=f"{by_pk[a.child].task.key} runs when {by_pk[a.parent].task.key} is "
            f"{str(Expected(a.kind).label).lower()}",
        )
        for a in placed.arrows
    ]
    return Diagram(
        width=placed.width,
        height=placed.height,
        node_w=diagram.NODE_W,
        node_h=diagram.NODE_H,
        nodes=nodes,
        arrows=arrows,
    )

"""What the batch job page shows of a job's tasks: the grid's rows and the diagram.

A fixed number of queries for any number of tasks: tasks, conditions, and what the
explanations need (explain.load_world: servers, replicas, waiting tasks; beat's tick when the
job is overdue); one broker round trip per batch group with queued tasks. Everything else is
looked up in memory.
"""

from __future__ import annotations

import datetime as dt
import textwrap
from collections import Counter
from dataclasses import dataclass, field

from django.http import Http404
from django.utils.timezone import now

from batchadmin.jobs import explain
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, BatchTaskCondition
from batchadmin.lib import diagram
from batchadmin.processes import registry
from batchadmin.servers.coverage import Served

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
    why: list[explain.Reason] = field(default_factory=list)  # why it is not running yet

    @property
    def group_warning(self) -> bool:
        """The group warning of the line, unless the explanation already says it."""
        return self.unserved_group and not any(r.code == "no_server" for r in self.why)

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


@dataclass
class Grid:
    rows: list[TaskRow]
    job_why: list[explain.Reason]  # why the job has not started (Withhold, Waiting)


def load(job: BatchJob, *, at: dt.datetime | None = None) -> Grid:
    at = at or now()
    tasks = list(job.tasks.select_related("company", "group").order_by("position", "pk"))
    by_pk = {t.pk: TaskRow(t) for t in tasks}
    parents: dict[int, list[explain.Condition]] = {t.pk: [] for t in tasks}
    conditions = (
        BatchTaskCondition.objects.filter(task__job=job)
        .order_by("pk")
        .values_list("task_id", "depends_on_id", "expected_status")
    )
    for child, parent, expected in conditions:
        if child in by_pk and parent in by_pk:
            by_pk[child].conditions.append(Condition(parent, by_pk[parent].task.key, expected))
            parents[child].append(explain.Condition(by_pk[parent].task, expected))
    overdue = job.status == BatchStatus.WAITING and job.scheduled_start <= at - explain.DUE_GRACE
    world = explain.load_world(
        [t.group for t in tasks],
        at=at,
        # Only queued tasks need their queue's length.
        queue_groups=[t.group for t in tasks if t.status == BatchStatus.READY and t.dispatched_at],
        beat=overdue,
    )
    for row in by_pk.values():
        group = world.group(row.task.group_id)
        row.unserved_group = group is not None and group.served == Served.NO_SERVER
        row.why = explain.explain_task(explain.TaskView(row.task, job, parents[row.task.pk]), world)
    open_groups = {t.group_id for t in tasks if t.is_open()}
    return Grid(list(by_pk.values()), explain.explain_job(job, world, open_groups))


@dataclass(frozen=True)
class StatusCount:
    status: str
    label: str
    count: int


def status_counts(task_rows: list[TaskRow]) -> list[StatusCount]:
    """How many tasks are in each status, in the order of the statuses: the big job's summary."""
    counts = Counter(r.task.status for r in task_rows)
    return [StatusCount(s.value, str(s.label), counts[s]) for s in BatchStatus if counts[s]]


def rows(job: BatchJob) -> list[TaskRow]:
    return load(job).rows


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

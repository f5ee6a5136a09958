"""What the batch job page shows of a job's tasks: the grid's rows and the diagram.

A fixed number of queries for any number of tasks, and work in proportion to the lines shown,
not to the job: one aggregate of the whole job (tasks per group and status: the count, the
summary and the groups to explain), the shown lines with their conditions and the parents
those name, the groups, and what the explanations need (explain.load_world: servers, replicas,
waiting tasks; beat's tick when the job is overdue); one broker round trip per batch group with
queued tasks. A job of 1,000 tasks builds the 50 lines a page shows, not 1,000 (bench/pages.py).
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.db.models import Count, OuterRef, Subquery
from django.http import Http404
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.timezone import now

from batchadmin.engine import explain
from batchadmin.engine.world import load_world
from batchadmin.jobs.models import (
    OPEN_TASK_STATUSES,
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
)
from batchadmin.lib import clock, diagram
from batchadmin.processes import registry
from batchadmin.servers.coverage import Served
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
    why: list[explain.Reason] = field(default_factory=list)  # why it is not running yet

    @property
    def group_warning(self) -> bool:
        """The group warning of the line, unless the explanation already says it."""
        return self.unserved_group and not any(r.code == "no_server" for r in self.why)

    @property
    def parameters_short(self) -> str:
        """The parameters in one short line, "lines=3, message=Ledger locked" (cut to
        PARAMETERS_SHORT characters; the editor shows them all)."""
        text = ", ".join(f"{k}={_short_value(v)}" for k, v in self.task.parameters.items())
        return text if len(text) <= PARAMETERS_SHORT else text[: PARAMETERS_SHORT - 1] + "…"

    @property
    def when_spec(self) -> str:
        """Milliseconds on the last start and end when the attempt was short."""
        return clock.precision(self.task.started_at, self.task.ended_at)

    @property
    def end_spec(self) -> str:
        """The last end without its date when it is the start's date (in the user's zone)."""
        return clock.end_precision(self.task.started_at, self.task.ended_at)

    @property
    def log_url(self) -> str:
        """The log of the task's last attempt ("" before its first)."""
        attempt = getattr(self.task, "last_attempt_pk", None)
        run = getattr(self.task, "last_run_pk", None)
        if not attempt or not run:
            return ""
        return reverse("jobs:log", args=[self.task.job_id, run]) + f"?task_run={attempt}"

    @cached_property  # the line asks three times
    def process(self) -> registry.BatchProcess | None:
        try:
            return registry.get(self.task.process)
        except registry.UnknownProcess:
            return None


PARAMETERS_SHORT = 60


def _short_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 24 else text[:23] + "…"


# Glyph widths of the diagram's font (system-ui, 12 px bold and regular), on the generous
# side: text longer than its box is cut here with an ellipsis, and the box clips it as well.
KEY_CHAR_PX = 7.8
DESC_CHAR_PX = 7.0
TEXT_W = diagram.NODE_W - 14


def fit(text: str, char_px: float, width: float = TEXT_W) -> str:
    """``text`` cut to about ``width`` pixels, with an ellipsis when cut."""
    room = int(width // char_px)
    return text if len(text) <= room else text[: max(room - 1, 1)].rstrip() + "…"


@dataclass(frozen=True)
class ExternalParent:
    """A task of another batch job that a task of this job waits for: the hook for drawing
    cross-job triggers. Whoever knows the triggers hands them to build_diagram; each is drawn
    as a dashed box left of the task it starts, with its arrow, linked to the other job."""

    key: str  # unique in the drawing, e.g. "job-12-post"
    label: str  # "Job 12 · post"
    description: str
    status: str
    status_label: str
    url: str
    child_pk: int
    expected: str  # BatchTaskCondition.ExpectedStatus value


@dataclass(frozen=True)
class Node:
    x: float
    y: float
    row: TaskRow | None = None
    external: ExternalParent | None = None

    @property
    def key(self) -> str:
        return self.row.task.key if self.row else self.external.label if self.external else ""

    @property
    def description(self) -> str:
        if self.row:
            return self.row.task.description
        return self.external.description if self.external else ""

    @property
    def key_text(self) -> str:
        return fit(self.key, KEY_CHAR_PX)

    @property
    def desc_text(self) -> str:
        return fit(self.description, DESC_CHAR_PX)

    @property
    def status(self) -> str:
        return self.row.task.status if self.row else self.external.status if self.external else ""

    @property
    def status_label(self) -> str:
        if self.row:
            return str(self.row.task.get_status_display())
        return self.external.status_label if self.external else ""

    @property
    def href(self) -> str:
        return (
            f"#task-{self.row.task.pk}" if self.row else self.external.url if self.external else ""
        )


@dataclass(frozen=True)
class Join:
    """The All or Any where the arrows of a task with several conditions meet."""

    x: float
    y: float
    kind: str  # "all" or "any"
    title: str

    @property
    def label(self) -> str:
        return "All" if self.kind == BatchTask.ConditionType.ALL else "Any"


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
        return _label_lines(self.kind)

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
    joins: list[Join] = field(default_factory=list)
    join_w: int = diagram.JOIN_W

    @property
    def join_mid(self) -> float:
        return self.join_w / 2

    @property
    def min_width(self) -> int:
        """The page may shrink the drawing to fit its column, but not below this: it scrolls."""
        return int(self.width * 0.85)


@dataclass(frozen=True)
class StatusCount:
    status: str
    label: str
    count: int


@dataclass
class Grid:
    rows: list[TaskRow]  # the lines asked for, in the grid's order
    job_why: list[explain.Reason]  # why the job has not started (Withhold, Waiting)
    total: int  # tasks of the job, shown or not
    counts: list[StatusCount]  # tasks per status, in the order of the statuses: the summary
    next_pk: int | None = None  # the first line after the window, when there is one


def load(
    job: BatchJob,
    *,
    at: dt.datetime | None = None,
    offset: int = 0,
    limit: int | None = None,
    pks: Iterable[int] | None = None,
    all_up_to: int = 0,
) -> Grid:
    """The lines ``offset`` to ``offset + limit`` of the grid (every line when ``limit`` is
    None, or when the job has at most ``all_up_to`` tasks: the page draws all of them), or
    only the lines of ``pks``; explained, with the summary of the whole job."""
    at = at or now()
    # The whole job in one aggregate: its size, the summary, and which groups it uses.
    per_group = (
        BatchTask.objects.filter(job=job)
        .values_list("group_id", "status")
        .order_by()
        .annotate(n=Count("pk"))
    )
    by_status: Counter[str] = Counter()
    group_ids: set[int] = set()
    open_groups: set[int] = set()
    for group_id, status, n in per_group:
        by_status[status] += n
        group_ids.add(group_id)
        if status in OPEN_TASK_STATUSES:
            open_groups.add(group_id)
    counts = [StatusCount(s.value, str(s.label), by_status[s]) for s in BatchStatus if by_status[s]]
    total = sum(by_status.values())
    if total <= all_up_to:
        offset, limit = 0, None

    # The last attempt of each line, for its log link: two index lookups per line shown
    # (taskrun_task_last_idx), in the same query.
    last = BatchTaskRun.objects.filter(task=OuterRef("pk"), started_at__isnull=False).order_by(
        "-pk"
    )
    lines = (
        job.tasks.select_related("company", "group", "server")
        .annotate(
            last_attempt_pk=Subquery(last.values("pk")[:1]),
            last_run_pk=Subquery(last.values("job_run_id")[:1]),
        )
        .order_by("position", "pk")
    )
    if pks is not None:
        lines = lines.filter(pk__in=list(pks))
    # One line more than asked: the first of the next page, for "Load more".
    tasks = list(lines[offset : None if limit is None else offset + limit + 1])
    next_pk = tasks.pop().pk if limit is not None and len(tasks) > limit else None
    by_pk = {t.pk: TaskRow(t) for t in tasks}

    # The shown lines' conditions, and the parents they name (shown or not): key and status.
    conditions = list(
        BatchTaskCondition.objects.filter(task__in=list(by_pk))
        .order_by("pk")
        .values_list("task_id", "depends_on_id", "expected_status")
    )
    parents = {pk: row.task for pk, row in by_pk.items()}
    missing = {parent for _, parent, _ in conditions} - parents.keys()
    if missing:
        parent_fields = ("pk", "job_id", "key", "description", "status")
        parents.update((t.pk, t) for t in job.tasks.filter(pk__in=missing).only(*parent_fields))
    views: dict[int, list[explain.Condition]] = {pk: [] for pk in by_pk}
    for child, parent, expected in conditions:
        if parent in parents:
            task = parents[parent]
            by_pk[child].conditions.append(Condition(parent, task.key, expected))
            views[child].append(explain.Condition(task, expected))

    groups = {t.group_id: t.group for t in tasks}
    if unseen := group_ids - groups.keys():
        groups.update((g.pk, g) for g in BatchGroup.objects.filter(pk__in=unseen))
    overdue = job.status == BatchStatus.WAITING and job.scheduled_start <= at - explain.DUE_GRACE
    world = load_world(
        groups.values(),
        at=at,
        # Only queued tasks need their queue's length.
        queue_groups=[t.group for t in tasks if t.status == BatchStatus.READY and t.dispatched_at],
        beat=overdue,
    )
    for row in by_pk.values():
        group = world.group(row.task.group_id)
        row.unserved_group = group is not None and group.served == Served.NO_SERVER
        row.why = explain.explain_task(explain.TaskView(row.task, job, views[row.task.pk]), world)
    return Grid(
        list(by_pk.values()),
        explain.explain_job(job, world, open_groups),
        total=total,
        counts=counts,
        next_pk=next_pk,
    )


def row(job: BatchJob, task_pk: int) -> TaskRow:
    """One line of the grid: a line just saved, put back by Esc, or refused its delete."""
    rows = load(job, pks=[task_pk]).rows
    if not rows:
        raise Http404("No such task in this batch job.")
    return rows[0]


def _label_lines(kind: str) -> list[str]:
    # "Ended or error" is wider than the gap between two columns: two short lines.
    return textwrap.wrap(str(Expected(kind).label), 9)


def trigger_parents(job: BatchJob, task_rows: list[TaskRow]) -> list[ExternalParent]:
    """The job this one runs after (its trigger), as one box before each task the run starts
    with (those without conditions); [] for a job that follows none."""
    if job.after_job_id is None:
        return []
    parent = BatchJob.objects.filter(pk=job.after_job_id).only("description", "status").first()
    if parent is None:
        return []
    return [
        ExternalParent(
            key=f"job-{parent.pk}",
            label=f"Job {parent.pk}",
            description=parent.description,
            status=parent.status,
            status_label=str(parent.get_status_display()),
            url=reverse("jobs:detail", args=[parent.pk]),
            child_pk=row.task.pk,
            expected=job.after_status,
        )
        for row in task_rows
        if not row.conditions
    ]


def build_diagram(task_rows: list[TaskRow], external: Iterable[ExternalParent] = ()) -> Diagram:
    """The drawing of ``task_rows``, and of the other jobs (``external``) that start some of
    them: the job this one runs after (trigger_parents)."""
    outside = list(external)
    # One box per other job's task, however many tasks of this job it starts.
    keys: list[int | str] = [*dict.fromkeys(x.key for x in outside)]
    keys += [r.task.pk for r in task_rows]
    edges: list[tuple[int | str, int | str, str]] = [
        (x.key, x.child_pk, x.expected) for x in outside
    ] + [(c.parent_pk, r.task.pk, c.expected) for r in task_rows for c in r.conditions]
    placed = diagram.layout(keys, edges, label_height=lambda kind: 12 * len(_label_lines(kind)))
    by_key: dict[int | str, Node] = {}
    rows = {r.task.pk: r for r in task_rows}
    others = {x.key: x for x in outside}
    for key, box in placed.boxes.items():
        if isinstance(key, int):
            by_key[key] = Node(box.x, box.y, row=rows[key])
        else:
            by_key[key] = Node(box.x, box.y, external=others[key])
    arrows = [
        Arrow(
            path=a.path,
            kind=a.kind,
            label=str(Expected(a.kind).label),
            label_x=a.label_x,
            label_y=a.label_y,
            title=f"{by_key[a.child].key} runs when {by_key[a.parent].key} is "
            f"{str(Expected(a.kind).label).lower()}",
        )
        for a in placed.arrows
    ]
    joins = []
    for child, join in placed.joins.items():
        if not isinstance(child, int):
            continue
        row = rows[child]
        kind = row.task.condition_type
        every = "every one of its conditions holds" if kind == "all" else "one condition holds"
        joins.append(Join(join.x, join.y, kind, f"{row.task.key} runs when {every}"))
    return Diagram(
        width=placed.width,
        height=placed.height,
        node_w=diagram.NODE_W,
        node_h=diagram.NODE_H,
        nodes=list(by_key.values()),
        arrows=arrows,
        joins=joins,
    )

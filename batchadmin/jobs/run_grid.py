"""Runs over time and a Gantt of one run, on the job page (issue 12.4).

The grid is Airflow's: one column per run (oldest left), one cell per task, coloured by the
status of the task's last attempt in that run, each a link to that attempt's log. The Gantt
draws one run's attempts on a time axis, a row per task: the wait (ready -> start: a busy
group, a limit, a retry's backoff) pale, the attempt itself in its status's colour.

Both are a fixed number of queries whatever the job's size: the runs, the tasks shown, and the
attempts of those (capped: RUNS_SHOWN x TASKS_SHOWN cells, GANTT_ATTEMPTS bars).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from django.utils.timezone import localtime, now

from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchJobRun,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
)
from batchadmin.lib import clock, durations

RUNS_SHOWN = 25
TASKS_SHOWN = 100
GANTT_ATTEMPTS = 500
TICKS = 5


@dataclass(frozen=True)
class Cell:
    attempt_pk: int
    run_pk: int
    status: str
    label: str
    attempts: int  # of the task in this run (retries included)
    kept: bool  # not run again in this run: its earlier result kept (attempt 0)
    title: str


@dataclass
class GridRow:
    task: BatchTask
    cells: list[Cell | None]


@dataclass(frozen=True)
class Column:
    run: BatchJobRun
    number: int  # the run's number in the job (1 = its first)
    bar_px: int  # the duration bar over the column, relative to the longest run shown
    title: str


@dataclass
class RunGrid:
    columns: list[Column]
    rows: list[GridRow]
    more_tasks: bool  # the job has more tasks than the grid shows


def _title(status_label: str, start: dt.datetime | None, end: dt.datetime | None) -> str:
    took = durations.short(end - start) if start and end else ""
    return f"{status_label}{f' · {took}' if took else ''}"


def load_grid(job: BatchJob, *, runs: int = RUNS_SHOWN, tasks: int = TASKS_SHOWN) -> RunGrid:
    """The last ``runs`` runs of ``job`` by its first ``tasks`` tasks."""
    recent = list(
        BatchJobRun.objects.filter(job=job)
        .order_by("-started_at", "-pk")
        .only("pk", "job_id", "status", "started_at", "ended_at", "trigger")[:runs]
    )
    recent.reverse()  # oldest left, as time runs
    total = BatchJobRun.objects.filter(job=job).count() if len(recent) == runs else len(recent)
    lines = list(
        BatchTask.objects.filter(job=job)
        .order_by("position", "pk")
        .only("pk", "job_id", "key", "description", "position")[: tasks + 1]
    )
    more = len(lines) > tasks
    lines = lines[:tasks]
    found: dict[tuple[int, int], Cell] = {}
    counts: dict[tuple[int, int], int] = {}
    if recent and lines:
        rows = (
            BatchTaskRun.objects.filter(job_run__in=recent, task__in=lines)
            .order_by("job_run_id", "task_id", "attempt", "pk")
            .values_list(
                "pk", "job_run_id", "task_id", "attempt", "status", "started_at", "ended_at"
            )
        )
        labels = dict(BatchStatus.choices)
        for pk, run_id, task_id, attempt, status, start, end in rows:
            key = (run_id, task_id)
            counts[key] = counts.get(key, 0) + (1 if attempt else 0)
            found[key] = Cell(  # the last attempt wins
                pk,
                run_id,
                status,
                str(labels[status]),
                counts[key],
                attempt == 0,
                _title(str(labels[status]), start, end),
            )
    at = now()
    longest = max(
        (((r.ended_at or at) - r.started_at).total_seconds() for r in recent), default=0.0
    )
    columns = []
    for i, run in enumerate(recent):
        seconds = ((run.ended_at or at) - run.started_at).total_seconds()
        columns.append(
            Column(
                run=run,
                number=total - len(recent) + i + 1,
                bar_px=4 + int(32 * seconds / longest) if longest > 0 else 4,
                title=f"Run {total - len(recent) + i + 1}: "
                f"{clock.format_when(localtime(run.started_at), 's')} · "
                f"{_title(str(run.get_status_display()), run.started_at, run.ended_at)}",
            )
        )
    grid_rows = [GridRow(task, [found.get((c.run.pk, task.pk)) for c in columns]) for task in lines]
    return RunGrid(columns, grid_rows, more)


# --- Gantt -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    attempt: BatchTaskRun
    left: float  # % of the axis
    width: float
    wait_left: float
    wait_width: float  # 0 when the wait is unknown or nothing
    title: str

    @property
    def wait(self) -> str:
        a = self.attempt
        return durations.short(a.started_at - a.ready_at) if a.ready_at and a.started_at else ""

    @property
    def took(self) -> str:
        a = self.attempt
        return durations.short((a.ended_at or now()) - a.started_at) if a.started_at else ""


@dataclass
class GanttRow:
    task: BatchTask
    bars: list[Bar] = field(default_factory=list)

    @property
    def servers(self) -> str:
        names = []
        for bar in self.bars:
            name = str(bar.attempt.server or bar.attempt.hostname or "")
            if name and name not in names:
                names.append(name)
        return ", ".join(names)


def _local(when: dt.datetime | None, spec: str) -> str:
    """A time of the axis on the user's clock, in their zone, without the date."""
    return clock.format_when(localtime(when), f"{spec} time") if when else ""


@dataclass(frozen=True)
class Tick:
    left: float
    label: str


@dataclass
class Gantt:
    run: BatchJobRun
    rows: list[GanttRow]
    ticks: list[Tick]
    span: str  # the axis' length in words
    more: bool  # the run has more attempts than drawn


def load_gantt(run: BatchJobRun) -> Gantt:
    """``run``'s attempts on one time axis: from the first ready (or start) to the last end
    (or now, while it runs)."""
    attempts = list(
        BatchTaskRun.objects.filter(job_run=run)
        .exclude(started_at=None)  # kept rows: nothing ran
        .select_related("task", "server")
        .order_by("started_at", "pk")[: GANTT_ATTEMPTS + 1]
    )
    more = len(attempts) > GANTT_ATTEMPTS
    attempts = attempts[:GANTT_ATTEMPTS]
    at = now()
    begin = min(
        [run.started_at]
        + [t for a in attempts for t in (a.ready_at, a.started_at) if t is not None]
    )
    ends = [a.ended_at or at for a in attempts]
    if run.ended_at or run.status in RUNNING_STATUSES:
        ends.append(run.ended_at or at)
    end = max(ends, default=begin)
    seconds = max((end - begin).total_seconds(), 0.001)

    def pct(when: dt.datetime) -> float:
        return round(100 * (when - begin).total_seconds() / seconds, 3)

    rows: dict[int, GanttRow] = {}
    labels = dict(BatchStatus.choices)
    spec = clock.precision(begin, end)
    for a in sorted(attempts, key=lambda a: (a.task.position, a.task_id, a.attempt)):
        assert a.started_at is not None
        left = pct(a.started_at)
        width = max(pct(a.ended_at or at) - left, 0.4)  # a 5 ms attempt is still a visible bar
        ready = a.ready_at if a.ready_at and a.ready_at < a.started_at else a.started_at
        server = str(a.server or a.hostname or "no server")
        title = (
            f"{a.task.key} attempt {a.attempt}: {labels[a.status]} on {server}, "
            f"{_local(a.started_at, spec)}–{_local(a.ended_at, spec) or 'now'}"
        )
        bar = Bar(a, left, min(width, 100 - left), pct(ready), left - pct(ready), title)
        rows.setdefault(a.task_id, GanttRow(a.task)).bars.append(bar)
    ticks = [
        Tick(
            100 * i / (TICKS - 1),
            _local(begin + (end - begin) * i / (TICKS - 1), spec),
        )
        for i in range(TICKS)
    ]
    return Gantt(run, list(rows.values()), ticks, durations.short(end - begin), more)

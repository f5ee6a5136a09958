"""The batch monitoring workspace: the home page (issue 5, item 6).

What runs, what waits and why, what failed. The live part is one fragment that polls every
LIVE_SECONDS while the tab is visible, so it has to stay cheap: a fixed number of aggregate
queries (about twenty) whatever the size of the history, and at most one broker round trip per
batch group whose tasks it explains as queued.

Counts are of the whole system for everyone with a batch role (the servers page counts what a
Batch user may not open, too); the lists (stuck jobs and tasks, failures) show only jobs the
user may see.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Q, Subquery
from django.db.models.functions import Substr, Trunc
from django.http import HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.timezone import localtime, now
from django.views.decorators.http import require_GET

from batchadmin.alerts import deadlines
from batchadmin.alerts.outbox import first_line
from batchadmin.engine import explain
from batchadmin.engine.world import load_world
from batchadmin.jobs import access
from batchadmin.jobs.models import (
    OPEN_TASK_STATUSES,
    RUNNING_STATUSES,
    BatchJob,
    BatchJobRun,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
)
from batchadmin.lib import charts, clock
from batchadmin.lib.http import AuthedRequest
from batchadmin.servers.models import BatchGroup, BatchServer

S = BatchStatus
UTC = dt.UTC

LIVE_SECONDS = 5
FAILURES_SHOWN = 10
ERROR_HEAD_CHARS = 1_000  # of a failure's error read for its first line
STUCK_SHOWN = 10  # per list: due jobs, and lines of ready tasks
LATE_READ = 500  # runs with a deadline judged for the "late or at risk" tile
# Ready tasks read for the panel, oldest first; those of one job held back for the same
# reason share a line, so a job of 1,000 tasks in an unserved group takes one line.
STUCK_TASKS_READ = 200
# A Ready task is normal while threads are busy; this long, it is worth a look.
READY_LONG = dt.timedelta(minutes=2)
MINUTES = 60  # the "finished per minute" chart
HOURS = 24  # the "failures per hour" chart


def _require_role(request: AuthedRequest) -> None:
    if not (access.is_manager(request.user) or access.roles(request.user)):
        raise PermissionDenied("You have no batch role.")


@require_GET
def workspace(request: AuthedRequest) -> HttpResponse:
    """The page; an htmx request for #workspace-live gets only the live fragment."""
    _require_role(request)
    template = "workspace/workspace.html"
    if request.htmx and request.htmx.target == "workspace-live":
        template += "#workspace-live"
    return render(request, template, _context(request))


# --- What the page shows -------------------------------------------------------------------


@dataclass
class GroupRow:
    state: explain.GroupState
    waiting: int = 0  # Waiting tasks of executing jobs (conditions not met yet)
    ready: int = 0
    executing: int = 0  # Executing and Canceling

    @property
    def group(self) -> BatchGroup:
        return self.state.group


@dataclass
class Counts:
    executing_tasks: int = 0
    ready_tasks: int = 0
    waiting_tasks: int = 0
    running_jobs: int = 0
    waiting_jobs: int = 0
    due_jobs: int = 0
    failed_runs: int = 0  # job runs ended Error in the last 24 hours


@dataclass
class Failure:
    run: BatchJobRun
    url: str
    task_run: BatchTaskRun | None  # the last attempt that failed in the run
    error: str = ""


@dataclass
class StuckJob:
    job: BatchJob
    why: list[explain.Reason] = field(default_factory=list)


@dataclass
class StuckTasks:
    """Ready tasks of one job that wait for the same reasons, oldest first."""

    job: BatchJob
    why: list[explain.Reason]
    tasks: list[BatchTask] = field(default_factory=list)

    @property
    def first(self) -> BatchTask:
        return self.tasks[0]

    @property
    def keys_shown(self) -> list[str]:
        return [t.key for t in self.tasks[:KEYS_SHOWN]]

    @property
    def keys_more(self) -> int:
        return max(len(self.tasks) - KEYS_SHOWN, 0)


KEYS_SHOWN = 8


def _group_stuck(tasks: list[BatchTask], world: explain.World) -> list[StuckTasks]:
    lines: dict[tuple[int, tuple[str, ...]], StuckTasks] = {}
    for task in tasks:
        why = explain.explain_task(explain.TaskView(task, task.job), world)
        key = (task.job_id, tuple(r.text for r in why))
        lines.setdefault(key, StuckTasks(task.job, why)).tasks.append(task)
    return list(lines.values())


def _context(request: AuthedRequest) -> dict[str, Any]:
    at = now()
    user = request.user
    view_all = access.can_view_all(user)
    visible = access.visible_jobs(user)

    counts, by_group = _task_counts(at)
    due_jobs = list(
        visible.due(at - explain.DUE_GRACE)
        .select_related("active_period", "recurrence__paused_by")
        .order_by("scheduled_start", "pk")[: STUCK_SHOWN + 1]
    )
    ready = BatchTask.objects.filter(status=S.READY, ready_at__lte=at - READY_LONG)
    if not view_all:
        ready = ready.filter(job__in=visible)
    ready_tasks = list(
        ready.select_related("job", "group").order_by("ready_at", "pk")[: STUCK_TASKS_READ + 1]
    )
    job_groups: dict[int, set[int]] = defaultdict(set)
    if due_jobs:
        pairs = (
            BatchTask.objects.filter(job__in=due_jobs)
            .values_list("job_id", "group_id")
            .distinct()
            .order_by()
        )
        for job_id, group_id in pairs:
            job_groups[job_id].add(group_id)

    groups = sorted(BatchGroup.objects.all(), key=lambda g: (not g.is_default(), g.code.lower()))
    world = load_world(
        groups,
        at=at,
        queue_groups=[t.group for t in ready_tasks if t.dispatched_at],
        beat=bool(due_jobs),
    )
    group_rows = []
    for group in groups:
        row = GroupRow(world.groups[group.pk])
        for status, n in by_group.get(group.pk, {}).items():
            if status == S.WAITING:
                row.waiting = n
            elif status == S.READY:
                row.ready = n
            else:
                row.executing += n
        group_rows.append(row)

    stuck_jobs = [
        StuckJob(job, explain.explain_job(job, world, job_groups[job.pk]))
        for job in due_jobs[:STUCK_SHOWN]
    ]
    stuck_tasks = _group_stuck(ready_tasks[:STUCK_TASKS_READ], world)
    late = deadlines.watched(BatchJob.objects.all(), at, limit=LATE_READ)
    if not view_all:
        mine = set(visible.filter(pk__in=[w.job.pk for w in late]).values_list("pk", flat=True))
        late_shown = [w for w in late if w.job.pk in mine]
    else:
        late_shown = late
    per_minute, per_hour = _charts(at)
    has_run = bool(counts.running_jobs or BatchJobRun.objects.exists())
    # Before anything has run, say what will: someone's first job (demo data schedules some),
    # not "run demo_data" when it already has. Jobs without a creator are the system's own
    # (the history clean-up of jobs migration 0005).
    people_jobs = visible.filter(created_by__isnull=False)
    next_job = (
        None
        if has_run
        else people_jobs.filter(status=S.WAITING).order_by("scheduled_start", "pk").first()
    )
    return {
        "nav": "workspace",
        "at": at,
        "live_seconds": LIVE_SECONDS,
        "counts": counts,
        "groups": group_rows,
        "unserved": [r for r in group_rows if not r.state.ok],
        "has_servers": BatchServer.objects.exists(),
        # Not "no jobs": a fresh install has the history clean-up job (jobs migration 0005).
        "has_run": has_run,
        "next_job": next_job,
        "has_jobs": not has_run and (next_job is not None or people_jobs.exists()),
        "can_create": access.can_create(user),
        "view_all": view_all,
        "stuck_jobs": stuck_jobs,
        "more_stuck_jobs": len(due_jobs) > STUCK_SHOWN,
        "stuck_tasks": stuck_tasks[:STUCK_SHOWN],
        "more_stuck_tasks": len(ready_tasks) > STUCK_TASKS_READ or len(stuck_tasks) > STUCK_SHOWN,
        "ready_long_minutes": int(READY_LONG.total_seconds() // 60),
        "failures": _failures(visible, view_all),
        # Counted over every job, listed for those the user may see, late ones first.
        "late_count": sum(1 for w in late if w.late),
        "at_risk_count": sum(1 for w in late if not w.late),
        "late_jobs": sorted(late_shown, key=lambda w: (not w.late, w.judgement.due))[:STUCK_SHOWN],
        "per_minute": per_minute,
        "per_hour": per_hour,
        "heartbeat": int(settings.BATCH_HEARTBEAT_SECONDS),
    }


def _task_counts(at: dt.datetime) -> tuple[Counts, dict[int, dict[str, int]]]:
    """System-wide counts (3 queries): open tasks of running jobs by group and status, jobs,
    failed runs of the last 24 hours."""
    counts = Counts()
    by_group: dict[int, dict[str, int]] = defaultdict(dict)
    rows = (
        BatchTask.objects.filter(
            job__status__in=RUNNING_STATUSES,
            status__in=OPEN_TASK_STATUSES,
        )
        .values_list("group_id", "status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    for group_id, status, n in rows:
        by_group[group_id][status] = n
        if status == S.WAITING:
            counts.waiting_tasks += n
        elif status == S.READY:
            counts.ready_tasks += n
        else:
            counts.executing_tasks += n
    jobs = BatchJob.objects.filter(status__in=[S.WAITING, *RUNNING_STATUSES]).aggregate(
        running=Count("pk", filter=Q(status__in=RUNNING_STATUSES)),
        waiting=Count("pk", filter=Q(status=S.WAITING)),
        due=Count("pk", filter=Q(status=S.WAITING, scheduled_start__lte=at)),
    )
    counts.running_jobs = jobs["running"]
    counts.waiting_jobs = jobs["waiting"]
    counts.due_jobs = jobs["due"]
    counts.failed_runs = BatchJobRun.objects.filter(
        status=S.ERROR, ended_at__gte=at - dt.timedelta(hours=24)
    ).count()
    return counts, by_group


def _failures(visible: Any, view_all: bool) -> list[Failure]:
    """The last job runs that ended Error, each with its last failed attempt (2 queries)."""
    last_failed = BatchTaskRun.objects.filter(job_run=OuterRef("pk"), status=S.ERROR).order_by(
        "-ended_at", "-pk"
    )
    runs_qs = BatchJobRun.objects.filter(status=S.ERROR, ended_at__isnull=False)
    if not view_all:
        runs_qs = runs_qs.filter(job__in=visible)
    runs = list(
        runs_qs.select_related("job")
        .annotate(failed_id=Subquery(last_failed.values("pk")[:1]))
        .order_by("-ended_at", "-pk")[:FAILURES_SHOWN]
    )
    ids = [r.failed_id for r in runs if r.failed_id]
    attempts = {
        tr.pk: tr
        for tr in BatchTaskRun.objects.filter(pk__in=ids)
        .select_related("task")
        .only("pk", "attempt", "task__key", "task__description")
        # The first line is all the tile shows: not a whole (possibly huge) error.
        .annotate(error_head=Substr("error_message", 1, ERROR_HEAD_CHARS))
    }
    result = []
    for run in runs:
        attempt = attempts.get(run.failed_id)
        result.append(
            Failure(
                run,
                reverse("jobs:history-run", args=[run.job_id, run.pk]),
                attempt,
                first_line(attempt.error_head) if attempt else "",
            )
        )
    return result


def _charts(at: dt.datetime) -> tuple[charts.Chart, charts.Chart]:
    """Task attempts finished per minute (last hour) and failed per hour (last day).

    One aggregate query each over BatchTaskRun.ended_at (indexed). Buckets are cut in UTC, the
    same on PostgreSQL and SQLite and free of daylight saving jumps; labels are the viewer's
    local times.
    """
    minute0 = at.astimezone(UTC).replace(second=0, microsecond=0) - dt.timedelta(
        minutes=MINUTES - 1
    )
    minutes = [minute0 + dt.timedelta(minutes=i) for i in range(MINUTES)]
    finished = (
        BatchTaskRun.objects.filter(ended_at__gte=minute0)
        .annotate(bucket=Trunc("ended_at", "minute", tzinfo=UTC))
        .values_list("bucket", "status")
        .annotate(n=Count("pk"))
        .order_by()
    )
    per_status: dict[str, list[int]] = defaultdict(lambda: [0] * MINUTES)
    for bucket, status, n in finished:
        i = _index(bucket, minute0, dt.timedelta(minutes=1), MINUTES)
        if i is not None:
            per_status[status][i] += n
    minute_labels = [clock.format_when(localtime(m), "time") for m in minutes]
    per_minute = charts.Chart(
        id="chart-minutes",
        title=f"Task attempts finished per minute, last {MINUTES} minutes",
        description="Stacked bars: attempts that ended, failed and were canceled, per minute.",
        labels=minute_labels,
        series=[
            charts.Series("Ended", "ended", per_status[S.ENDED]),
            charts.Series("Failed", "error", per_status[S.ERROR]),
            charts.Series("Canceled", "canceled", per_status[S.CANCELED]),
        ],
        label_every=10,
        label_offset=next((i for i, m in enumerate(minutes) if m.minute % 10 == 0), 0),
        unit="attempts",
    )

    hour0 = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - dt.timedelta(
        hours=HOURS - 1
    )
    hours = [hour0 + dt.timedelta(hours=i) for i in range(HOURS)]
    failed = (
        BatchTaskRun.objects.filter(ended_at__gte=hour0, status=S.ERROR)
        .annotate(bucket=Trunc("ended_at", "hour", tzinfo=UTC))
        .values_list("bucket")
        .annotate(n=Count("pk"))
        .order_by()
    )
    per_hour_values = [0] * HOURS
    for bucket, n in failed:
        i = _index(bucket, hour0, dt.timedelta(hours=1), HOURS)
        if i is not None:
            per_hour_values[i] += n
    per_hour = charts.Chart(
        id="chart-hours",
        title=f"Failed task attempts per hour, last {HOURS} hours",
        description="Bars: attempts that ended in an error, retried ones included, per hour.",
        labels=[clock.format_when(localtime(h), "time") for h in hours],
        series=[charts.Series("Failed", "error", per_hour_values)],
        label_every=3,
        label_offset=next((i for i, h in enumerate(hours) if localtime(h).hour % 3 == 0), 0),
        unit="failed attempts",
    )
    return per_minute, per_hour


def _index(bucket: dt.datetime, start: dt.datetime, step: dt.timedelta, n: int) -> int | None:
    i = int((bucket - start) / step)
    return i if 0 <= i < n else None

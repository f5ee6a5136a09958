"""Beyond D365: alerts about jobs that are stuck, raised by the tick.

- Running long: a running job has run BATCH_STUCK_FACTOR (3) times the median duration of its
  last BATCH_STUCK_RUNS (10) runs that ended Ended, and at least BATCH_STUCK_MIN_MINUTES (10)
  more than that median. A job with fewer than BATCH_STUCK_MIN_RUNS (5) such runs in history
  is not judged (Save job to history = Never keeps none). The median, not the mean, so one
  slow month-end run does not raise the bar for every run after it.
- Cannot start: a task of a running job has been Ready for BATCH_UNSERVED_AFTER_SECONDS (60)
  while no enabled server has its batch group, or none of those is online. Servers that are
  online but outside their schedule windows do not count: the task starts when a window opens,
  as planned.

Each alert is raised once per run (the event key); both checks run at most every
BATCH_STUCK_CHECK_SECONDS and cost one or two queries when nothing is stuck. They go to alert
rules with "stuck" set (the per-job Alerts settings know only ended / error / canceled).
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from collections import defaultdict

from django.conf import settings
from django.db.models import Exists, F, OuterRef, Window
from django.db.models.functions import RowNumber

from batchadmin.alerts import outbox
from batchadmin.alerts.models import AlertEvent, AlertKind
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchJobRun,
    BatchStatus,
    BatchTask,
)
from batchadmin.lib import durations, every
from batchadmin.servers import coverage
from batchadmin.servers.models import BatchGroup

log = logging.getLogger(__name__)

LONG_RUNNING_CHECK = every.Every("BATCH_STUCK_CHECK_SECONDS", logger=log)
UNSERVED_CHECK = every.Every("BATCH_STUCK_CHECK_SECONDS", logger=log)
_JOB_FIELDS = (
    "pk",
    "description",
    "priority",
    "status",
    "critical",
    "scheduled_start",
    "started_at",
    "current_run_id",
)


def handle_long_running(at: dt.datetime) -> int:
    """Tick handler: ``check_long_running`` at most every BATCH_STUCK_CHECK_SECONDS."""
    return LONG_RUNNING_CHECK.run(at, check_long_running, "The check for long-running jobs")


def handle_unserved(at: dt.datetime) -> int:
    """Tick handler: ``check_unserved`` at most every BATCH_STUCK_CHECK_SECONDS."""
    return UNSERVED_CHECK.run(at, check_unserved, "The check for jobs that cannot start")


def check_long_running(at: dt.datetime) -> int:
    """Raise "Running long" for running jobs far past their usual duration; returns how many."""
    min_over = dt.timedelta(minutes=settings.BATCH_STUCK_MIN_MINUTES)
    alerted = AlertEvent.objects.filter(
        job_run=OuterRef("current_run"), kind=AlertKind.LONG_RUNNING
    )
    # Only jobs running longer than the minimum excess can qualify: most are filtered here.
    jobs = list(
        BatchJob.objects.filter(
            status__in=RUNNING_STATUSES,
            started_at__lte=at - min_over,
            current_run__isnull=False,
        )
        .exclude(Exists(alerted))
        .order_by("started_at")
        .only(*_JOB_FIELDS)[: settings.BATCH_TICK_LIMIT]
    )
    if not jobs:
        return 0
    past = usual_durations([job.pk for job in jobs])
    raised = 0
    for job in jobs:
        seconds = past.get(job.pk, [])
        if len(seconds) < settings.BATCH_STUCK_MIN_RUNS or job.started_at is None:
            continue
        usual = dt.timedelta(seconds=statistics.median(seconds))
        running = at - job.started_at
        if running < usual * settings.BATCH_STUCK_FACTOR or running - usual < min_over:
            continue
        reason = (
            f"running {durations.short(running)}, usually {durations.short(usual)} "
            f"(median of the last {len(seconds)} runs)"
        )
        event_id = outbox.record(
            job,
            AlertKind.LONG_RUNNING,
            key=f"run:{job.current_run_id}:{AlertKind.LONG_RUNNING.value}",
            run_id=job.current_run_id,
            details={
                "status": job.status,
                "started_at": job.started_at.isoformat(),
                "critical": job.critical,
                "reason": reason,
                "running_seconds": round(running.total_seconds()),
                "usual_seconds": round(usual.total_seconds()),
                "runs": len(seconds),
            },
            at=at,
        )
        if event_id is not None:
            log.warning("Batch job %s is stuck: %s", job.pk, reason)
            raised += 1
    return raised


def usual_durations(job_ids: list[int]) -> dict[int, list[float]]:
    """Job id -> seconds each of its last BATCH_STUCK_RUNS runs that ended Ended took.

    One query for all the jobs (a window function numbers each job's runs, newest first).
    """
    newest_first = Window(RowNumber(), partition_by=[F("job_id")], order_by=F("started_at").desc())
    rows = (
        BatchJobRun.objects.filter(
            job_id__in=job_ids, status=BatchStatus.ENDED, ended_at__isnull=False
        )
        .annotate(n=newest_first)
        .filter(n__lte=settings.BATCH_STUCK_RUNS)
        .values_list("job_id", "started_at", "ended_at")
    )
    result: dict[int, list[float]] = defaultdict(list)
    for job_id, started, ended in rows:
        if ended is not None:
            result[job_id].append((ended - started).total_seconds())
    return result


def check_unserved(at: dt.datetime) -> int:
    """Raise "Cannot start" for running jobs whose ready tasks no online server can take."""
    since = at - dt.timedelta(seconds=settings.BATCH_UNSERVED_AFTER_SECONDS)
    pairs = list(
        BatchTask.objects.filter(
            status=BatchStatus.READY, ready_at__lte=since, job__status=BatchStatus.EXECUTING
        )
        .order_by()
        .values_list("job_id", "group_id")
        .distinct()[: settings.BATCH_TICK_LIMIT]
    )
    if not pairs:
        return 0
    groups = {g.pk: g for g in BatchGroup.objects.filter(pk__in={gid for _, gid in pairs})}
    cover = coverage.coverage(list(groups.values()), coverage.servers_with_settings(), at=at)
    reasons = {gid: unserved_reason(groups[gid], c) for gid, c in cover.items()}
    by_job: dict[int, list[str]] = defaultdict(list)
    for job_id, group_id in sorted(pairs, key=lambda pair: (pair[0], groups[pair[1]].code)):
        if reasons.get(group_id):
            by_job[job_id].append(reasons[group_id])
    if not by_job:
        return 0  # the servers are busy, or outside their schedule: the tasks will run
    jobs = list(
        BatchJob.objects.filter(pk__in=list(by_job), status=BatchStatus.EXECUTING).only(
            *_JOB_FIELDS
        )
    )
    keys = {job.pk: unserved_key(job) for job in jobs}
    known = set(AlertEvent.objects.filter(key__in=keys.values()).values_list("key", flat=True))
    raised = 0
    for job in jobs:
        if keys[job.pk] in known:
            continue
        reason = "; ".join(by_job[job.pk])
        event_id = outbox.record(
            job,
            AlertKind.UNSERVED,
            key=keys[job.pk],
            run_id=job.current_run_id,
            details={
                "status": job.status,
                "scheduled_start": job.scheduled_start.isoformat(),
                "started_at": job.started_at.isoformat() if job.started_at else None,
                "critical": job.critical,
                "reason": reason,
            },
            at=at,
        )
        if event_id is not None:
            log.warning("Batch job %s cannot start: %s", job.pk, reason)
            raised += 1
    return raised


def unserved_key(job: BatchJob) -> str:
    # Per run, not per scheduled start: "Waiting" again after an Error keeps the start of the
    # run before, and that new run deserves its own alert.
    if job.current_run_id is not None:
        return f"run:{job.current_run_id}:{AlertKind.UNSERVED.value}"
    return f"due:{job.pk}:{job.scheduled_start.isoformat()}"


def unserved_reason(group: BatchGroup, cover: coverage.GroupCoverage) -> str:
    """Why no task of ``group`` can start, or "" when one can (or will, when a window opens)."""
    if cover.served == coverage.Served.NO_SERVER:
        return f"no enabled batch server has group {group.code}"
    if cover.served == coverage.Served.OFFLINE:
        names = ", ".join(server.name for server in cover.servers)
        return f"no online server serves group {group.code} (offline: {names})"
    return ""

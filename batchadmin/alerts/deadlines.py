"""Beyond D365: alerts when a run of a job with a deadline is at risk, and when it missed it.

The rules are lib/deadlines.py's; this module loads what they need and writes the events.

- A run is the job's current one (running) or the one it waits to start (Waiting): the
  deadline counts from its scheduled start, as the job holds it. Withheld jobs are not watched.
- The usual duration is the median of the job's last BATCH_STUCK_RUNS runs that ended Ended,
  judged only from BATCH_STUCK_MIN_RUNS of them (the "Running long" alert's measure).
- "Not started" means no task of the run has started: Waiting, or Executing with every task
  still waiting for a server (servers down, no online server for its group).
- Each kind is raised once per run (the event key names the job and the scheduled start, so a
  run that never started has one too); at risk is not raised for a run already missed.
- A run that ends after its deadline is "missed" in the transaction that settles it
  (``job_settled``), so a run that ends between two checks is caught too.

The check runs from the tick (alerts/receivers.py on engine/signals.ticked) at most every
BATCH_DEADLINE_CHECK_SECONDS; events go through the outbox like every other alert, so delivery
fans them out to popups, e-mail and whatever else it knows.
"""

from __future__ import annotations

import datetime as dt
import logging
import statistics
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import Q, QuerySet

from batchadmin.alerts import outbox
from batchadmin.alerts.models import AlertEvent, AlertKind
from batchadmin.alerts.stuck import usual_durations
from batchadmin.jobs.models import (
    HAS_DEADLINE,
    RUNNING_STATUSES,
    TRIGGER_ONLY,
    BatchJob,
    BatchStatus,
    BatchTaskRun,
)
from batchadmin.lib import clock, deadlines, every, recurrence

log = logging.getLogger(__name__)

CHECK = every.Every("BATCH_DEADLINE_CHECK_SECONDS", logger=log)
# A waiting job is watched from this long before its scheduled start: one whose usual
# duration already overruns its deadline is at risk before it starts.
LOOKAHEAD = dt.timedelta(days=1)
_KIND = {deadlines.State.AT_RISK: AlertKind.AT_RISK, deadlines.State.MISSED: AlertKind.MISSED}


@dataclass(frozen=True)
class Watched:
    """A run of a job with a deadline, and how it stands."""

    job: BatchJob
    scheduled: dt.datetime
    judgement: deadlines.Judgement

    @property
    def late(self) -> bool:
        return self.judgement.state == deadlines.State.MISSED


def key(job_id: int, scheduled: dt.datetime, kind: str) -> str:
    return f"deadline:{job_id}:{scheduled.astimezone(dt.UTC).isoformat()}:{kind}"


def watched(jobs: QuerySet[BatchJob], at: dt.datetime, *, limit: int) -> list[Watched]:
    """The waiting and running jobs of ``jobs`` that have a deadline, judged at ``at``; those
    at risk or late only. A fixed number of queries whatever their number (at most four)."""
    candidates = list(
        jobs.filter(
            HAS_DEADLINE,
            status__in=[BatchStatus.WAITING, BatchStatus.EXECUTING],
            scheduled_start__lte=at + LOOKAHEAD,
        )
        # A job that only runs after another one has no start to be late for while it waits.
        .exclude(Q(status=BatchStatus.WAITING) & TRIGGER_ONLY)
        .select_related("recurrence")
        .order_by("scheduled_start", "pk")[:limit]
    )
    if not candidates:
        return []
    past = usual_durations([job.pk for job in candidates])
    running_runs = [j.current_run_id for j in candidates if j.status == BatchStatus.EXECUTING]
    started_runs = set(
        BatchTaskRun.objects.filter(job_run_id__in=running_runs, started_at__isnull=False)
        .order_by()
        .values_list("job_run_id", flat=True)
        .distinct()
    )
    late_start = dt.timedelta(seconds=settings.BATCH_DEADLINE_LATE_START_SECONDS)
    result = []
    for job in candidates:
        due = job.deadline_due(job.scheduled_start)
        if due is None:
            continue
        seconds = past.get(job.pk, [])
        usual = (
            dt.timedelta(seconds=statistics.median(seconds))
            if len(seconds) >= settings.BATCH_STUCK_MIN_RUNS
            else None
        )
        started = job.started_at if job.current_run_id in started_runs else None
        judgement = deadlines.judge(
            due=due,
            scheduled=job.scheduled_start,
            started=started if job.status in RUNNING_STATUSES else None,
            usual=usual,
            at=at,
            late_start=late_start,
            tz=_zone(job),
        )
        if judgement.state != deadlines.State.ON_TRACK:
            result.append(Watched(job, job.scheduled_start, judgement))
    return result


def _zone(job: BatchJob) -> Any:
    try:
        return recurrence.zone(job.zone())
    except recurrence.RuleError:
        return recurrence.zone("UTC")


def handle_deadlines(at: dt.datetime) -> int:
    """Tick handler: ``check_deadlines`` at most every BATCH_DEADLINE_CHECK_SECONDS."""
    return CHECK.run(at, check_deadlines, "The check of deadlines")


def check_deadlines(at: dt.datetime) -> int:
    """Raise "Deadline at risk" and "Deadline missed" once per run each; returns how many.

    1. Judge the waiting and running jobs that have a deadline (``watched``).
    2. Leave out those whose event of that kind exists (one query for all of them).
    3. Write the others' events through the outbox; a race with another beat writes one.
    """
    found = watched(BatchJob.objects.all(), at, limit=settings.BATCH_TICK_LIMIT)
    if not found:
        return 0
    keys = {w.job.pk: key(w.job.pk, w.scheduled, _KIND[w.judgement.state]) for w in found}
    known = set(AlertEvent.objects.filter(key__in=keys.values()).values_list("key", flat=True))
    raised = 0
    for w in found:
        if keys[w.job.pk] in known:
            continue
        raised += _record(w.job, _KIND[w.judgement.state], w.scheduled, w.judgement, at=at)
    return raised


def job_settled(job: BatchJob, *, run_id: int | None, final: BatchStatus, at: dt.datetime) -> None:
    """In the settling transaction: a run that ends (Ended or Error) after its deadline missed
    it; the check may have said so already while it ran (the key keeps it to one)."""
    if final == BatchStatus.CANCELED:
        return  # someone stopped it: they know it did not make it
    due = job.deadline_due(job.scheduled_start)
    if due is None or at <= due:
        return
    judgement = deadlines.Judgement(
        deadlines.State.MISSED,
        due,
        f"ended {BatchStatus(final).label} at {_clock(at, job)}, after its deadline {_clock(due, job)}",
    )
    _record(job, AlertKind.MISSED, job.scheduled_start, judgement, at=at, run_id=run_id)


def _clock(t: dt.datetime, job: BatchJob) -> str:
    return clock.format_when(t.astimezone(_zone(job)), "time tz")


def _record(
    job: BatchJob,
    kind: AlertKind,
    scheduled: dt.datetime,
    judgement: deadlines.Judgement,
    *,
    at: dt.datetime,
    run_id: int | None = None,
) -> int:
    deadline = job.deadline()
    running = job.status in RUNNING_STATUSES
    if run_id is None and running:
        run_id = job.current_run_id  # a waiting job's current run is the one before
    event_id = outbox.record(
        job,
        kind,
        key=key(job.pk, scheduled, kind),
        run_id=run_id,
        details={
            "status": job.status,
            "scheduled_start": scheduled.isoformat(),
            "started_at": job.started_at.isoformat() if running and job.started_at else None,
            "deadline": judgement.due.isoformat(),
            "deadline_words": deadline.describe() if deadline else "",
            "critical": job.critical,
            "reason": judgement.reason,
        },
        at=at,
    )
    if event_id is None:
        return 0
    log.warning("Batch job %s: %s: %s", job.pk, kind.label, judgement.reason)
    return 1

"""Save job to history (D365's LogLevel) and the batch job history clean-up.

Which finished runs keep their history rows (``apply_save_policy``, in the settling
transaction), and deleting what is older than a limit (``clean_up``, run by the registered
batch process "history.cleanup" in batchadmin.processes.maintenance).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from django.db import models, transaction
from django.db.models import Count, F, Q

from batchadmin.alerts.models import AlertEvent, Notification
from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTaskRun,
    MissedOccurrence,
    SaveHistory,
    StatusChange,
)

# The registered batch process of the clean-up (batchadmin.processes.maintenance); a migration
# seeds a daily job that runs it (jobs 0005).
CLEANUP_PROCESS = "history.cleanup"
# Job runs looked at per clean-up transaction ...
RUNS_PER_CHUNK = 1_000
# ... fewer when their task attempts add up to more than this, so that one transaction (and
# the row locks it holds) stays short whatever the size of the jobs.
TASK_RUNS_PER_CHUNK = 10_000
# Status changes, missed occurrences and alert events per transaction.
ROWS_PER_CHUNK = 5_000
# Run statuses the clean-up's "Records to include" filter offers (a run in history has ended).
CLEANUP_STATUSES = (BatchStatus.ENDED, BatchStatus.ERROR, BatchStatus.CANCELED)


def keeps_history(policy: str, final: str) -> bool:
    if policy == SaveHistory.NEVER:
        return False
    if policy == SaveHistory.ERRORS:
        return final == BatchStatus.ERROR
    return True


def apply_save_policy(job: BatchJob, *, run_id: int | None, final: str) -> bool:
    """Drop the run's history (attempts, log lines) when the job's setting says not to keep it.

    Runs in the settling transaction, after the alert event took its snapshot. Returns True when
    history was dropped. The job's own row keeps its status, start and end either way, and its
    status changes stay (they lose the link to the run).
    """
    if run_id is None or keeps_history(job.save_history, final):
        return False
    BatchJobRun.objects.filter(pk=run_id).delete()
    # What follows in the same transaction (the recurrence's status row) must not point at it.
    job.current_run_id = None
    return True


def not_saved_note(job: BatchJob) -> str:
    """What the history pages say about runs this job does not keep ("" when it keeps all)."""
    if job.save_history == SaveHistory.NEVER:
        return "History is not saved for this job (Save job to history: Never)."
    if job.save_history == SaveHistory.ERRORS:
        return (
            "Only runs that end in Error are saved for this job (Save job to history: Errors only)."
        )
    return ""


# --- The batch job history clean-up ---------------------------------------------------------


@dataclass
class CleanupResult:
    before: dt.datetime
    runs: int = 0
    task_runs: int = 0
    log_lines: int = 0
    status_changes: int = 0
    missed: int = 0
    alert_events: int = 0
    canceled: bool = False
    deleted: dict[str, int] = field(default_factory=dict)  # model label -> rows, all cascades

    def describe(self) -> str:
        """ "Deleted 1,234 job runs (5,678 task attempts, 9,012 log lines) that ended before ..."."""
        text = (
            f"Deleted {_n(self.runs, 'job run')} ({_n(self.task_runs, 'task attempt')}, "
            f"{_n(self.log_lines, 'log line')}) that ended before {self.before.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC"
        )
        others = [
            _n(n, what)
            for n, what in (
                (self.status_changes, "status change"),
                (self.missed, "missed-occurrence record"),
                (self.alert_events, "processed alert event"),
            )
            if n
        ]
        if others:
            text += f", and {', '.join(others)} from before then"
        return text + "."


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def old_runs(
    *, before: dt.datetime, statuses: list[str] | None = None, description: str = ""
) -> models.QuerySet[BatchJobRun]:
    """Finished runs that ended before ``before``, filtered like D365's "Records to include"."""
    runs = BatchJobRun.objects.filter(ended_at__lt=before)
    if statuses:
        runs = runs.filter(status__in=statuses)
    if description:
        runs = runs.filter(job__description__icontains=description)
    # A run of a running job is its current one and has no end yet; should a clock step have
    # given it one, it still is not history to delete.
    return runs.exclude(Q(job__current_run=F("pk")) & Q(job__status__in=RUNNING_STATUSES))


def clean_up(
    *,
    before: dt.datetime,
    statuses: list[str] | None = None,
    description: str = "",
    other_records: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Callable[[int], None] = lambda percent: None,
) -> CleanupResult:
    """Delete the history that ended before ``before``, a chunk per transaction.

    1. Job runs (with their task attempts and log lines, which cascade) that match the filter,
       up to RUNS_PER_CHUNK runs or TASK_RUNS_PER_CHUNK attempts per transaction.
    2. With ``other_records``: status changes, missed-occurrence records and processed alert
       events (with their notifications) older than ``before``, of jobs matching
       ``description``; the status filter is about runs and does not apply to these.

    ``should_stop`` is asked between chunks; what was deleted up to then stays deleted.
    """
    result = CleanupResult(before=before)
    runs = old_runs(before=before, statuses=statuses, description=description)
    total = runs.count()
    last_pk = 0
    while True:
        if should_stop():
            result.canceled = True
            return result
        ids = list(
            runs.filter(pk__gt=last_pk).order_by("pk").values_list("pk", flat=True)[:RUNS_PER_CHUNK]
        )
        if not ids:
            break
        chunk = _within_budget(ids)
        last_pk = chunk[-1]
        with transaction.atomic():
            _, by_model = BatchJobRun.objects.filter(pk__in=chunk).delete()
        _count(result, by_model)
        if total:
            progress(min(99, result.runs * 100 // total))
    if other_records:
        jobs = Q(job__description__icontains=description) if description else Q()
        pending_mail = Notification.objects.filter(
            event=models.OuterRef("pk"),
            email__in=[Notification.Email.PENDING, Notification.Email.SENDING],
        )
        for queryset in (
            StatusChange.objects.filter(jobs, at__lt=before),
            MissedOccurrence.objects.filter(jobs, recorded_at__lt=before),
            # Processed: delivered (or given up). An e-mail still being retried keeps its event.
            AlertEvent.objects.filter(jobs, created__lt=before, processed_at__isnull=False).exclude(
                models.Exists(pending_mail)
            ),
        ):
            if not _delete_in_chunks(queryset, result, should_stop):
                result.canceled = True
                return result
    progress(100)
    return result


def clean_up_audit(*, before: dt.datetime, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Delete audit entries older than ``before``, ROWS_PER_CHUNK per transaction.

    The only way an audit entry is ever deleted: by the clean-up job, when the managers gave
    it an audit limit (its "Audit trail limit (days)"; empty keeps the trail for good).
    """
    result = CleanupResult(before=before)
    _delete_in_chunks(AuditEntry.objects.filter(at__lt=before), result, should_stop)
    return result.deleted.get(AuditEntry._meta.label, 0)


def _within_budget(ids: list[int]) -> list[int]:
    """The first of ``ids`` whose task attempts fit in TASK_RUNS_PER_CHUNK (at least one)."""
    counts = dict(
        BatchTaskRun.objects.filter(job_run_id__in=ids)
        .order_by()
        .values("job_run_id")
        .annotate(n=Count("pk"))
        .values_list("job_run_id", "n")
    )
    chunk: list[int] = []
    attempts = 0
    for pk in ids:
        attempts += counts.get(pk, 0)
        if chunk and attempts > TASK_RUNS_PER_CHUNK:
            break
        chunk.append(pk)
    return chunk


def _delete_in_chunks(
    queryset: models.QuerySet[models.Model],
    result: CleanupResult,
    should_stop: Callable[[], bool],
) -> bool:
    """Delete what ``queryset`` selects, ROWS_PER_CHUNK rows per transaction; False if stopped."""
    model = queryset.model
    while True:
        if should_stop():
            return False
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:ROWS_PER_CHUNK])
        if not ids:
            return True
        with transaction.atomic():
            _, by_model = model._default_manager.filter(pk__in=ids).delete()
        _count(result, by_model)


_COUNTED = {
    BatchJobRun._meta.label: "runs",
    BatchTaskRun._meta.label: "task_runs",
    BatchLogEntry._meta.label: "log_lines",
    StatusChange._meta.label: "status_changes",
    MissedOccurrence._meta.label: "missed",
    AlertEvent._meta.label: "alert_events",
}


def _count(result: CleanupResult, by_model: dict[str, int]) -> None:
    for label, n in by_model.items():
        result.deleted[label] = result.deleted.get(label, 0) + n
        if label in _COUNTED:
            setattr(result, _COUNTED[label], getattr(result, _COUNTED[label]) + n)

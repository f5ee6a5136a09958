"""Writing alert events: called inside the transaction of the status change that caused them.

Only the row is written here (a few milliseconds, once per job run); who hears about it and how
is decided later by ``alerts.delivery`` in a Celery task, so a slow mail server or a long list
of subscribers never holds the job lock or fails the job.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.db import connection, transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Substr
from django.utils.timezone import now

from batchadmin.alerts.models import AlertEvent, AlertKind, AlertRule, BatchJobAlert, JobWebhook
from batchadmin.engine import sql
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.servers.models import BatchGroup

log = logging.getLogger(__name__)

# The queue of the delivery task; every batch server consumes it (settings.BATCH_SERVICE_QUEUES).
ALERT_QUEUE = "batchadmin.alerts"
DELIVER_TASK = "batchadmin.deliver_alerts"
# Failing tasks listed in one message; the rest is summed up as "and N more".
FAILED_TASKS_SHOWN = 10

_KIND_OF_STATUS = {
    BatchStatus.ENDED: AlertKind.ENDED,
    BatchStatus.ERROR: AlertKind.ERROR,
    BatchStatus.CANCELED: AlertKind.CANCELED,
}


def first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def failing_tasks(job_id: int, run_id: int | None) -> tuple[list[dict[str, str]], int]:
    """The job's tasks in Error with the first line of their last error, and how many in all.

    Two queries whatever the number of failures: this runs under the job lock.
    """
    failed = BatchTask.objects.filter(job_id=job_id, status=BatchStatus.ERROR)
    last_error = (
        BatchTaskRun.objects.filter(task_id=OuterRef("pk"), job_run_id=run_id)
        .exclude(error_message="")
        .order_by("-attempt")
        # Its first line is what the alert shows: not a whole (possibly huge) error.
        .values(head=Substr("error_message", 1, 1_000))[:1]
    )
    shown = (
        failed.order_by("position", "pk")
        .annotate(error=Subquery(last_error))
        .values_list("key", "description", "error")[:FAILED_TASKS_SHOWN]
    )
    return [
        {"key": key, "description": description, "error": first_line(error or "")}
        for key, description, error in shown
    ], failed.count()


def priorities(job: BatchJob) -> list[int]:
    """The scheduling priorities the job's tasks run with, for alert rules by priority: the
    job's own when it overrides its groups', else its tasks' groups' (one query)."""
    if job.priority_overridden:
        return [job.priority]
    groups = BatchGroup.objects.filter(tasks__job=job).order_by("default_priority")
    return list(groups.values_list("default_priority", flat=True).distinct())


def record(
    job: BatchJob,
    kind: AlertKind,
    *,
    key: str,
    run_id: int | None = None,
    details: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> int | None:
    """Write one event unless one with ``key`` exists; queue its delivery after commit.

    Returns the new event's id, or None when another writer got there first. INSERT ... ON
    CONFLICT DO NOTHING: the loser of a race gets no row and no error, and the transaction it
    runs in (a task finish holding the job lock) stays usable.
    """
    payload = {"description": job.description, "priority": job.priority, **(details or {})}
    field = AlertEvent._meta.get_field("details")
    with connection.cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            [
                job.pk,
                run_id,
                kind,
                key,
                field.get_db_prep_save(payload, connection),
                connection.ops.adapt_datetimefield_value(at or now()),
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    event_id: int = row[0]
    transaction.on_commit(lambda: send(event_id))
    return event_id


_INSERT_SQL = f"""
    INSERT INTO {AlertEvent._meta.db_table} (job_id, job_run_id, kind, key, details, created,
        attempts)
    VALUES (%s, %s, %s, %s, %s, %s, 0)
    ON CONFLICT (key) DO NOTHING
    RETURNING id
"""


def job_ended(
    job: BatchJob, *, run_id: int | None, final: BatchStatus, at: dt.datetime
) -> int | None:
    """The job run ``run_id`` ended ``final``: one event per run, however often this is called."""
    kind = _KIND_OF_STATUS[final]
    details: dict[str, Any] = {
        "status": str(final),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "ended_at": at.isoformat(),
        "critical": job.critical,
    }
    if final in (BatchStatus.ERROR, BatchStatus.CANCELED):
        details["failed_tasks"], details["failed_count"] = failing_tasks(job.pk, run_id)
    key = f"run:{run_id}:{kind}" if run_id else f"job:{job.pk}:{kind}:{at.isoformat()}"
    if sql.POSTGRESQL:
        return _job_ended_pg(job, kind, key=key, run_id=run_id, details=details, at=at)
    # As the run ran: the job or its groups may be edited before the alert is delivered.
    details["priorities"] = priorities(job)
    return record(job, kind, key=key, run_id=run_id, details=details, at=at)


def _job_ended_pg(
    job: BatchJob,
    kind: AlertKind,
    *,
    key: str,
    run_id: int | None,
    details: dict[str, Any],
    at: dt.datetime,
) -> int | None:
    """record() for the end of a run, in one prepared statement (_ENDED_SQL) that also takes
    the priorities and finds whether anyone listens; one runs per settled job, under its lock."""
    payload = {"description": job.description, "priority": job.priority, **details}
    if job.priority_overridden:
        payload["priorities"] = [job.priority]
    row = sql.fetchone(
        _ENDED_SQL[kind],
        {
            "job": job.pk,
            "run": run_id,
            "kind": kind,
            "key": key,
            "details": AlertEvent._meta.get_field("details").get_db_prep_save(payload, connection),
            "overridden": job.priority_overridden,
            # A critical job's Error goes to every batch job manager: delivery decides who.
            "listened": kind == AlertKind.ERROR and job.critical,
            "at": connection.ops.adapt_datetimefield_value(at),
        },
    )
    if row is None:
        return None
    event_id, pending = row
    if pending:
        transaction.on_commit(lambda: send(event_id))
    return int(event_id)


def _ended_sql(kind: AlertKind) -> str:
    """The end-of-run event, with the priorities its tasks ran with when the job does not
    override its groups' (priorities()'s rule), in one statement. Nobody who could hear about
    it (no per-job alert or webhook and no alert rule for its kind, no critical Error): it is
    written processed, as delivery would leave it, and no delivery is queued."""
    field = kind.value  # subscription_field(): an end's kind is its field
    groups = BatchGroup._meta.db_table
    tasks = BatchTask._meta.db_table
    return f"""
    INSERT INTO {AlertEvent._meta.db_table} (job_id, job_run_id, kind, key, details, created,
        attempts, processed_at)
    SELECT %(job)s, %(run)s, %(kind)s, %(key)s,
        CASE WHEN %(overridden)s THEN %(details)s ELSE %(details)s || jsonb_build_object(
            'priorities', COALESCE((
                SELECT jsonb_agg(p ORDER BY p) FROM (
                    SELECT DISTINCT g.default_priority AS p
                    FROM {tasks} t JOIN {groups} g ON g.id = t.group_id
                    WHERE t.job_id = %(job)s) d), '[]'::jsonb)) END,
        %(at)s, 0,
        CASE WHEN %(listened)s
            OR EXISTS (SELECT 1 FROM {BatchJobAlert._meta.db_table}
                       WHERE job_id = %(job)s AND {field})
            OR EXISTS (SELECT 1 FROM {JobWebhook._meta.db_table} WHERE job_id = %(job)s AND {field})
            OR EXISTS (SELECT 1 FROM {AlertRule._meta.db_table} WHERE {field})
        THEN NULL ELSE %(at)s END
    ON CONFLICT (key) DO NOTHING
    RETURNING id, processed_at IS NULL
"""


_ENDED_SQL = {kind: _ended_sql(kind) for kind in _KIND_OF_STATUS.values()}


def send(event_id: int) -> None:
    """Queue the delivery; a lost message is re-sent by the tick's sweep of pending events."""
    from batchadmin.celery import app

    try:
        app.send_task(DELIVER_TASK, args=[event_id], queue=ALERT_QUEUE)
    except Exception:  # broker down: the sweep sends it later
        log.exception("Could not queue delivery of alert event %s; the tick resends it", event_id)

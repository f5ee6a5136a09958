"""Copy batch job (D365 copy-batch-job.md): the job, its tasks with their parameters, their
conditions, its recurrence and its alerts (its users' and its webhooks), as a new job in
Withhold. Save job to history and Critical come along with the header.

A copy is a save like any other (issue 13): its processes must be ones the copier and the
copy's Run by may run, its time limits stay under a Batch user's ceiling, and a copy made by
someone who is not a manager carries neither Critical (a manager's choice) nor the alert
subscriptions of other users.
"""

from __future__ import annotations

import copy
import datetime as dt

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.forms.models import model_to_dict

from batchadmin.alerts.models import BatchJobAlert, JobWebhook
from batchadmin.jobs import access
from batchadmin.jobs.models import (
    BatchJob,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    Company,
)

# Recurrence fields that describe the schedule; the run counter starts again with the copy.
# A copy keeps the rule and its policies, not the state of the original's schedule: its runs,
# a pause (whose note is about the original) or a pending overlap.
RECURRENCE_SKIP = {
    "id",
    "job",
    "runs",
    "created",
    "modified",
    "paused_at",
    "paused_by",
    "pause_reason",
    "paused_until",
    "overlap_at",
    "overlap_canceled",
}


def copy_job(
    source: BatchJob,
    *,
    by: User,
    description: str,
    company: Company | None,
    scheduled_start: dt.datetime,
    run_as: User | None,
) -> BatchJob:
    """Create the copy and return it.

    Tasks that ran in the source job's company run in the copy's company (the typical use:
    the same job in another legal entity); tasks with a company of their own keep it. Raises
    ProcessNotAllowed, before anything is written, for a process the copy may not run.
    """
    tasks = list(source.tasks.order_by("position", "pk"))
    for who in {by, run_as or by}:
        access.check_processes(who, [t.process for t in tasks], where="Not copied: ")
    ceiling = access.time_limit_ceiling(run_as or by)
    manager = access.is_manager(by)
    alerts = BatchJobAlert.objects.filter(job=source).order_by("pk")
    if not manager:
        alerts = alerts.filter(user=by)
    with transaction.atomic():
        job = BatchJob.objects.create(
            description=description,
            status=BatchStatus.WITHHOLD,  # D365: the copy waits until someone sets it Waiting
            priority=source.priority,
            priority_overridden=source.priority_overridden,
            save_history=source.save_history,
            critical=source.critical and manager,
            scheduled_start=scheduled_start,
            company=company,
            active_period_id=source.active_period_id,
            deadline_time=source.deadline_time,
            deadline_minutes=source.deadline_minutes,
            # It follows the same job (no loop: nothing follows a new job yet).
            after_job_id=source.after_job_id,
            after_status=source.after_status,
            created_by=by,
            run_as=run_as,
        )
        copies = BatchTask.objects.bulk_create(
            BatchTask(
                job=job,
                key=t.key,
                description=t.description,
                company_id=(
                    company.pk if company and t.company_id == source.company_id else t.company_id
                ),
                process=t.process,
                parameters=copy.deepcopy(t.parameters),
                group_id=t.group_id,
                ignore_failure=t.ignore_failure,
                max_retries=t.max_retries,
                time_limit=_capped(t.time_limit, ceiling),
                condition_type=t.condition_type,
                position=t.position,
            )
            for t in tasks
        )
        new_pk = {old.pk: new.pk for old, new in zip(tasks, copies, strict=True)}
        BatchTaskCondition.objects.bulk_create(
            BatchTaskCondition(
                task_id=new_pk[c.task_id],
                depends_on_id=new_pk[c.depends_on_id],
                expected_status=c.expected_status,
            )
            for c in BatchTaskCondition.objects.filter(task__job=source).order_by("pk")
        )
        BatchJobAlert.objects.bulk_create(
            BatchJobAlert(
                job=job,
                user_id=a.user_id,
                ended=a.ended,
                error=a.error,
                canceled=a.canceled,
                popup=a.popup,
                email=a.email,
            )
            for a in alerts
        )
        JobWebhook.objects.bulk_create(
            JobWebhook(
                job=job, webhook_id=h.webhook_id, ended=h.ended, error=h.error, canceled=h.canceled
            )
            for h in JobWebhook.objects.filter(job=source).order_by("pk")
        )
        recurrence = source.get_recurrence()
        if recurrence is not None:
            fields = model_to_dict(recurrence, exclude=RECURRENCE_SKIP)
            BatchRecurrence.objects.create(job=job, **fields)
    return job


def _capped(limit: int | None, ceiling: int | None) -> int | None:
    """A task's time limit under the copy's ceiling (access.time_limit_ceiling)."""
    if ceiling is None or (limit or settings.BATCH_TASK_TIME_LIMIT_SECONDS) <= ceiling:
        return limit
    return ceiling

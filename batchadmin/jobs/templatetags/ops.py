"""Which operator actions a task line or a history row offers (ops_views.py; the views check
again on every POST). A simple tag over what the page loaded: no query per line."""

from __future__ import annotations

from typing import Any

from django import template

from batchadmin.engine import transitions
from batchadmin.jobs import access
from batchadmin.jobs.models import RUNNING_STATUSES, BatchJob, BatchStatus, BatchTask

register = template.Library()
S = BatchStatus


@register.simple_tag(takes_context=True)
def task_ops(context: dict[str, Any], job: BatchJob, task: BatchTask) -> dict[str, bool]:
    """Skip and Rerun from here for a task line, as skip_task and rerun_job would allow them
    (a recurring job's failed last run is read from its history by the dialog, not here)."""
    request = context.get("request")
    if request is None or not access.can_change(request.user, job):
        return {}
    finished = job.status in transitions.TERMINAL_JOB_STATUSES
    if job.status == S.EXECUTING:
        skip = task.status in transitions.SKIPPABLE_TASK_STATUSES
    elif finished:
        skip = task.status == S.ERROR
    else:
        skip = job.status in (S.WAITING, S.WITHHOLD) and task.status == S.WAITING
    return {"skip": skip, "rerun_from": finished}


@register.simple_tag(takes_context=True)
def attempt_ops(
    context: dict[str, Any], job: BatchJob, run_id: int, status: str, retried: bool
) -> dict[str, bool]:
    """Skip and Rerun from here on a task's last row in the job's latest run (its history)."""
    request = context.get("request")
    if retried or run_id != job.current_run_id or request is None:
        return {}
    if not access.can_change(request.user, job) or job.status == S.CANCELING:
        return {}
    return {
        "skip": status == S.ERROR,
        "rerun_from": job.status not in RUNNING_STATUSES,
    }


@register.simple_tag(takes_context=True)
def job_ops(context: dict[str, Any], job: BatchJob) -> dict[str, bool]:
    """Run now and Rerun in the job's Functions. Rerun needs a last run: a finished job's tasks
    hold it; a recurring job back to Waiting has it in its history (when that was saved)."""
    request = context.get("request")
    if request is None:
        return {}
    # Backfill (managers, recurring jobs) may be asked while a run goes on: it queues.
    backfill = access.is_manager(request.user) and job.get_recurrence() is not None
    if job.is_running() or not access.can_change(request.user, job):
        return {"backfill": backfill}
    finished = job.status in transitions.TERMINAL_JOB_STATUSES
    return {
        "run_now": True,
        "rerun": finished or job.current_run_id is not None,
        "backfill": backfill,
    }

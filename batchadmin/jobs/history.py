"""Save job to history (D365's LogLevel): which finished runs keep their history rows."""

from __future__ import annotations

from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, SaveHistory


def keeps_history(policy: str, final: str) -> bool:
    if policy == SaveHistory.NEVER:
        return False
    if policy == SaveHistory.ERRORS:
        return final == BatchStatus.ERROR
    return True


def apply_save_policy(job: BatchJob, *, run_id: int | None, final: str) -> bool:
    """Drop the run's history (attempts, log lines) when the job's setting says not to keep it.

    Runs in the settling transaction, after the alert event took its snapshot. Returns True when
    history was dropped. The job's own row keeps its status, start and end either way.
    """
    if run_id is None or keeps_history(job.save_history, final):
        return False
    BatchJobRun.objects.filter(pk=run_id).delete()
    # What follows in the same transaction (the recurrence's status row) must not point at it.
    job.current_run_id = None
    return True

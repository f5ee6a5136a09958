"""django.tasks' task_finished, sent when a Django task's job settles (engine/signals.py)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from batchadmin.djangotasks import compat
from batchadmin.djangotasks.models import EnqueuedTask
from batchadmin.jobs.models import BatchJob


def on_job_settled(sender: Any, *, job: BatchJob, **kwargs: Any) -> None:
    """One primary-key lookup per settled job; the signal goes out after the commit, so its
    receivers see the result as get_result() will and never hold the job's lock."""
    record = EnqueuedTask.objects.filter(pk=job.pk).first()
    if record is None:
        return

    def send() -> None:
        backend = compat.task_backends[record.backend]
        result = backend.get_result(str(job.pk))
        compat.task_finished.send(type(backend), task_result=result)

    transaction.on_commit(send)

"""django.tasks' task_finished, sent when a Django task's job settles (engine/signals.py)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from batchadmin.djangotasks import compat
from batchadmin.djangotasks.models import EnqueuedTask
from batchadmin.engine import sql
from batchadmin.jobs.models import BatchJob

# Every settled job asks, under its lock: a prepared primary-key lookup, not an ORM query
# whose compilation cost more than the lookup (most jobs are no Django task).
BACKEND_OF = (
    f"SELECT backend FROM {EnqueuedTask._meta.db_table} WHERE {EnqueuedTask._meta.pk.column} = %s"
)


def on_job_settled(sender: Any, *, job: BatchJob, **kwargs: Any) -> None:
    """One primary-key lookup per settled job; the signal goes out after the commit, so its
    receivers see the result as get_result() will and never hold the job's lock."""
    row = sql.fetchone(BACKEND_OF, [job.pk])
    if row is None:
        return
    (alias,) = row

    def send() -> None:
        backend = compat.task_backends[alias]
        result = backend.get_result(str(job.pk))
        compat.task_finished.send(type(backend), task_result=result)

    transaction.on_commit(send)

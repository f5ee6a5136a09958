"""batchadmin as a django.tasks backend: ``task.enqueue()`` makes a one-task batch job.

- The job runs the task function through the batch process ``django.task`` (process.py), in
  the batch group named by the task's queue, with the D365 priority its priority maps to,
  scheduled at ``run_after`` (or now). Enqueued inside a transaction, it exists and starts only
  once that transaction commits; roll back and there is no job.
- ``get_result(id)`` reads the job: its task's status, the return value, each failed
  attempt's error and traceback, and the workers (batch server replicas) that ran it.
- The backend's OPTIONS: MAX_RETRIES (0-5, D365's "maximum retries" of the task),
  TIME_LIMIT (seconds; the server default when left out) and RUN_AS (a username: the jobs run
  as that user, who must be allowed the ``django.task`` process, a manager; left out, the jobs
  are the system's). Use a second TASKS alias for tasks that need
  others.

See docs/django-tasks.md.
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils.module_loading import import_string
from django.utils.timezone import now

from batchadmin.djangotasks import compat
from batchadmin.djangotasks.models import EnqueuedTask
from batchadmin.engine import transitions
from batchadmin.jobs import access
from batchadmin.jobs.models import (
    MAX_RETRIES_LIMIT,
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    Priority,
)
from batchadmin.lib import numbers, tracing
from batchadmin.processes.registry import ProcessNotAllowed
from batchadmin.servers.models import BatchGroup

log = logging.getLogger(__name__)

PROCESS = "django.task"  # the batch process that runs enqueued functions (process.py)
TASK_KEY = "task"
S = BatchStatus
Status = compat.TaskResultStatus
# What a batch task's status says about the django.tasks result.
RESULT_STATUS = {
    S.WITHHOLD: Status.READY,
    S.WAITING: Status.READY,
    S.READY: Status.READY,  # also between a failed attempt and its retry
    S.EXECUTING: Status.RUNNING,
    S.CANCELING: Status.RUNNING,
    S.ENDED: Status.SUCCESSFUL,
    S.ERROR: Status.FAILED,
    S.CANCELED: Status.FAILED,
    S.NOT_RUN: Status.FAILED,  # the job was canceled before the task started
    # An operator skipped it: its body never ran, so there is no return value to give back.
    S.SKIPPED: Status.FAILED,
}


class BatchTaskFailed(Exception):  # noqa: N818  # a name for errors no exception raised
    """The exception class of an attempt the engine failed, not the function: its batch
    server was lost, it ran past its time limit, or it was aborted."""


def d365_priority(priority: int) -> Priority | None:
    """django.tasks' -100..100 as a D365 scheduling priority; None (the default, 0): the batch
    group's own, as a job that does not override it."""
    if priority == 0:
        return None
    if priority < 0:
        return Priority.LOW
    if priority < 50:
        return Priority.HIGH
    if priority < 100:
        return Priority.CRITICAL
    return Priority.RESERVED


class BatchadminBackend(compat.BaseTaskBackend):
    supports_defer = True
    supports_async_task = True  # Task.call() runs a coroutine function to its end
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        # Any batch group is a queue; enqueue() checks that it exists (not validate_task, which
        # runs when a module with @task is imported, before the database may be reached).
        super().__init__(alias, {"QUEUES": [], **params})
        options: dict[str, Any] = {k.upper(): v for k, v in self.options.items()}
        self.max_retries = int(options.get("MAX_RETRIES", 0))
        if not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise compat.InvalidTask(
                f"TASKS[{alias!r}] MAX_RETRIES must be 0 to {MAX_RETRIES_LIMIT} (D365's limit)."
            )
        time_limit = options.get("TIME_LIMIT")
        self.time_limit = int(time_limit) if time_limit is not None else None
        self.run_as = str(options.get("RUN_AS") or "")

    def _run_as(self) -> Any:
        """The RUN_AS user (None: the system), checked as a task saved by that user would be
        (issue 13): at enqueue, so a refusal is the caller's exception, not a job that fails
        later. django.task is for managers, so no Batch user's time-limit ceiling applies."""
        if not self.run_as:
            return None
        user = get_user_model().objects.filter(username=self.run_as, is_active=True).first()
        if user is None:
            raise compat.InvalidTask(
                f"TASKS[{self.alias!r}] RUN_AS {self.run_as!r} is not an active user."
            )
        try:
            access.check_processes(user, [PROCESS], where=f"TASKS[{self.alias!r}] RUN_AS: ")
        except ProcessNotAllowed as exc:
            raise compat.InvalidTask(str(exc)) from None
        return user

    def enqueue(
        self, task: compat.Task[Any, Any], args: Any, kwargs: Any
    ) -> compat.TaskResult[Any]:
        self.validate_task(task)
        group = BatchGroup.objects.filter(code=task.queue_name).first()
        if group is None:
            raise compat.InvalidTask(
                f"Queue {task.queue_name!r} is not a batch group; create it on the Batch groups "
                "page or use one that exists."
            )
        parameters = {
            "task": task.module_path,
            "args": compat.normalize_json(list(args)),
            "kwargs": compat.normalize_json(dict(kwargs)),
        }
        run_as = self._run_as()
        priority = d365_priority(task.priority)
        at = now()
        with transaction.atomic():
            job = BatchJob.objects.create(
                run_as=run_as,
                description=f"{task.name} (Django task)"[:200],
                status=S.WAITING,
                scheduled_start=task.run_after or at,
                priority=priority or Priority.NORMAL,
                priority_overridden=priority is not None,
            )
            BatchTask.objects.create(
                job=job,
                key=TASK_KEY,
                description=task.module_path[:200],
                process=PROCESS,
                parameters=parameters,
                group=group,
                max_retries=self.max_retries,
                time_limit=self.time_limit,
            )
            record = EnqueuedTask.objects.create(
                job=job,
                module_path=task.module_path,
                backend=self.alias,
                queue_name=task.queue_name,
                priority=task.priority,
                takes_context=task.takes_context,
                run_after=task.run_after,
                enqueued_at=at,
            )
        if task.run_after is None or task.run_after <= at:
            # Start it when the caller's transaction commits (at once without one), rather
            # than at the next tick; the tick would start it anyway if this does not.
            transaction.on_commit(lambda: _start(job.pk))
        result = self.result_of(record, task=task)
        transaction.on_commit(lambda: compat.task_enqueued.send(type(self), task_result=result))
        return result

    def get_result(self, result_id: str) -> compat.TaskResult[Any]:
        pk = numbers.whole(str(result_id))
        record = EnqueuedTask.objects.select_related("job").filter(pk=pk).first() if pk else None
        if record is None:
            raise compat.TaskResultDoesNotExist(result_id)
        return self.result_of(record)

    def result_of(
        self, record: EnqueuedTask, *, task: compat.Task[Any, Any] | None = None
    ) -> compat.TaskResult[Any]:
        """The result as the batch tables hold it now (three queries)."""
        if task is None:
            task = _task(record)
        row = BatchTask.objects.filter(job_id=record.pk).first()
        status = RESULT_STATUS.get(BatchStatus(row.status), Status.READY) if row else Status.READY
        attempts: list[BatchTaskRun] = []
        if row is not None and record.job.current_run_id is not None:
            attempts = list(
                BatchTaskRun.objects.filter(
                    task=row, job_run_id=record.job.current_run_id, attempt__gt=0
                ).order_by("attempt")
            )
        parameters = row.parameters if row is not None else {}
        errors = [
            compat.TaskError(
                exception_class_path=record.exception_classes.get(str(a.attempt))
                or f"{BatchTaskFailed.__module__}.{BatchTaskFailed.__qualname__}",
                traceback=a.traceback or a.error_message,
            )
            for a in attempts
            if a.error_message
        ]
        result: compat.TaskResult[Any] = compat.TaskResult(
            task=task,
            id=str(record.pk),
            status=status,
            enqueued_at=record.enqueued_at,
            started_at=attempts[0].started_at if attempts else None,
            finished_at=row.ended_at
            if row is not None and status in (Status.SUCCESSFUL, Status.FAILED)
            else None,
            last_attempted_at=attempts[-1].started_at if attempts else None,
            args=parameters.get("args", []),
            kwargs=parameters.get("kwargs", {}),
            backend=record.backend,
            errors=errors,
            worker_ids=[a.hostname for a in attempts],
        )
        if status == Status.SUCCESSFUL:
            object.__setattr__(result, "_return_value", record.return_value)
        return result


def _task(record: EnqueuedTask) -> compat.Task[Any, Any]:
    """The Task as it was enqueued: the function's task object with the enqueued options."""
    try:
        found = import_string(record.module_path)
    except ImportError:
        raise compat.TaskResultDoesNotExist(
            f"{record.pk}: its task {record.module_path} can no longer be imported"
        ) from None
    if not isinstance(found, compat.Task):
        raise compat.TaskResultDoesNotExist(f"{record.pk}: {record.module_path} is not a task")
    return found.using(
        priority=record.priority,
        queue_name=record.queue_name,
        run_after=record.run_after,
        backend=record.backend,
    )


def _start(job_id: int) -> None:
    try:
        # In a request's trace when enqueued by one (lib/tracing.py).
        with tracing.span("batchadmin.job.start", job_id=job_id):
            transitions.start_job(job_id=job_id)
    except Exception:
        log.exception("Could not start the job of Django task %s now; the tick will", job_id)

"""Running one claimed attempt of a task: the process context, log capture and lease renewal."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import traceback
from functools import cached_property
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import close_old_connections
from django.utils.timezone import now

from batchadmin.engine import counters, transitions
from batchadmin.jobs.models import (
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    Company,
)
from batchadmin.lib import db, tracing
from batchadmin.processes import registry

if TYPE_CHECKING:
    from django.contrib.auth.models import User

log = logging.getLogger(__name__)

LOG_FLUSH_LINES = 200
LOG_FLUSH_SECONDS = 1.0
CANCEL_CHECK_SECONDS = 0.5
PROGRESS_WRITE_SECONDS = 1.0
# Seconds between tries to settle a finished attempt while the database is away.
FINISH_RETRY_DELAYS = (1, 2, 4, 8)


class ProcessContext:
    """What a batch process gets as ``ctx`` (see registry.Context)."""

    def __init__(self, task_run: BatchTaskRun, task: BatchTask) -> None:
        self.task_run = task_run
        self.job_id = task.job_id
        self.task_id = task.pk
        self.task_key = task.key
        self.attempt = task_run.attempt
        self._task = task
        self.saw_cancel = False
        self.timed_out = False  # asked to stop by the time limit, not by a cancel
        self.time_limit: int | None = None
        self._pending: list[BatchLogEntry] = []
        self._last_flush = time.monotonic()
        self._last_cancel_check = 0.0
        self._last_progress = 0.0

    @cached_property
    def user(self) -> User | None:
        """The job's Run by user (its creator when Run by is empty)."""
        user_id = self._task.job.effective_run_as_id()
        return get_user_model().objects.filter(pk=user_id).first() if user_id else None

    @cached_property
    def occurrence(self) -> dt.datetime | None:
        """The recurrence occurrence this run stands for: a scheduled run's own, a backfill's
        missed one; None for a run of no occurrence (Run now, a trigger, a one-off job)."""
        return (
            BatchJobRun.objects.filter(pk=self.task_run.job_run_id)
            .values_list("occurrence", flat=True)
            .first()
        )

    @cached_property
    def company(self) -> Company | None:
        """The task's company accounts, else the job's."""
        company_id = self._task.company_id or self._task.job.company_id
        return Company.objects.filter(pk=company_id).first() if company_id else None

    # D365 Infolog: info(), warning(), error().
    def info(self, message: str) -> None:
        self._log(BatchLogEntry.Level.INFO, message)

    def warning(self, message: str) -> None:
        self._log(BatchLogEntry.Level.WARNING, message)

    def error(self, message: str) -> None:
        self._log(BatchLogEntry.Level.ERROR, message)

    def _log(self, level: int, message: str) -> None:
        self._pending.append(
            BatchLogEntry(task_run=self.task_run, level=level, message=str(message), created=now())
        )
        # Flush now and then so the history page shows lines while the task runs, without a
        # database round trip per line.
        if len(self._pending) >= LOG_FLUSH_LINES or (
            time.monotonic() - self._last_flush > LOG_FLUSH_SECONDS
        ):
            self.flush()

    def flush(self) -> None:
        if self._pending:
            try:
                BatchLogEntry.objects.bulk_create(self._pending)
            except db.BLIPS:
                # Keep the lines: the next flush, or the finish, writes them.
                db.after_blip(log, "write log lines")
            else:
                self._pending = []
        self._last_flush = time.monotonic()

    def take_pending(self) -> list[BatchLogEntry]:
        pending, self._pending = self._pending, []
        return pending

    def progress(self, percent: int) -> None:
        t = time.monotonic()
        if t - self._last_progress >= PROGRESS_WRITE_SECONDS or percent >= 100:
            self._last_progress = t
            try:
                BatchTask.objects.filter(pk=self.task_id).update(
                    progress=max(0, min(100, int(percent)))
                )
            except db.BLIPS:
                db.after_blip(log, "record progress")  # the next report carries it

    def cancel_requested(self) -> bool:
        """True once the process should stop (the job is being canceled or the task ran past
        its time limit); cheap to call in a tight loop."""
        if self.saw_cancel:
            return True
        t = time.monotonic()
        if t - self._last_cancel_check >= CANCEL_CHECK_SECONDS:
            self._last_cancel_check = t
            try:
                status, attempt, timed_out, self.time_limit = BatchTask.objects.values_list(
                    "status", "attempt", "timed_out", "time_limit"
                ).get(pk=self.task_id)
            except db.BLIPS:
                # A database restart is no reason to stop the process: ask again at the next
                # check. Should the database stay away, the lease runs out and decides.
                db.after_blip(log, "check for a cancel")
                return False
            # Canceling, past its time limit, or this attempt was given up (its lease ran out
            # and the task moved on, or it was aborted): either way this copy should stop.
            mine = attempt == self.attempt
            self.timed_out = mine and timed_out and status == BatchStatus.EXECUTING
            self.saw_cancel = not mine or timed_out or status != BatchStatus.EXECUTING
        return self.saw_cancel


def run_task(
    *, task_id: int, server_id: int | None, hostname: str, celery_task_id: str = ""
) -> bool:
    """Claim, run and settle one task. Returns False when the claim was lost (nothing ran).

    Nothing a process does escapes from here: its exceptions become the attempt's error, so a
    failing process never takes the worker down.
    """
    task_run = transitions.claim_task(
        task_id=task_id, server_id=server_id, hostname=hostname, celery_task_id=celery_task_id
    )
    if task_run is None:
        return False
    started = time.monotonic()
    finished = False
    LEASES.track(task_id)
    task = task_run.task
    # A child of the message's span (the job start, or the attempt that released this task):
    # the messages the finish sends for the tasks it releases continue the same trace.
    with tracing.span(
        "batchadmin.task.attempt",
        job_id=task.job_id,
        task_id=task_id,
        task_key=task.key,
        attempt=task_run.attempt,
        process=task.process,
        hostname=hostname,
    ) as current:
        try:
            outcome, lines = execute(task_run)
            if outcome.error:
                tracing.failed(current, outcome.error)
            # A database blip while settling should not cost the attempt its result: retry a
            # few times (the lease keeps being renewed meanwhile); if the database stays away
            # the lease runs out and the tick fails the attempt instead.
            finished = db.retry(
                lambda: transitions.finish_task(
                    task_id=task_id, attempt=task_run.attempt, outcome=outcome, log=lines
                ),
                delays=FINISH_RETRY_DELAYS,
                log=log,
                what=f"finishing task {task_id}",
            )
        finally:
            LEASES.untrack(task_id)
    if finished:  # False: a late result the tick already counted when the lease ran out
        counters.task_finished(
            task_id=task_id,
            status=counters.attempt_status(outcome),
            seconds=time.monotonic() - started,
        )
    return True


def execute(task_run: BatchTaskRun) -> tuple[transitions.Outcome, list[BatchLogEntry]]:
    task = task_run.task  # claim_task loaded it with its job, users and companies
    ctx = ProcessContext(task_run, task)
    try:
        process = registry.get(task.process)
        kwargs = process.kwargs_from(task.parameters)
    except (registry.UnknownProcess, registry.ParameterError) as exc:
        # Retrying cannot fix a missing process or bad stored parameters.
        message = f"{type(exc).__name__}: {exc}"
        ctx.error(message)
        return transitions.Outcome(error=message, retryable=False), ctx.take_pending()
    try:
        process.func(ctx, **kwargs)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        ctx.error(message)
        outcome = transitions.Outcome(
            error=message, traceback=traceback.format_exc(), canceled=ctx.saw_cancel
        )
    else:
        outcome = transitions.Outcome(canceled=ctx.saw_cancel)
    if ctx.timed_out:
        # It stopped because its time limit asked it to: that is an error, not a cancel, and
        # not retried (transitions.abort_task says why).
        message = transitions.time_limit_message(ctx.time_limit, "the process stopped when asked")
        ctx.error(message)
        outcome = transitions.Outcome(error=message, traceback=outcome.traceback, retryable=False)
    return outcome, ctx.take_pending()


class LeaseKeeper:
    """Renews the leases of the tasks running in this process from a daemon thread.

    It lives in the process that runs the task (the pool child), so when that process or its
    whole worker dies the renewals stop and the tick expires the lease.
    """

    def __init__(self) -> None:
        self._tasks: set[int] = set()
        self._lock = threading.Lock()
        self._pid = 0

    def track(self, task_id: int) -> None:
        with self._lock:
            self._tasks.add(task_id)
            if self._pid != os.getpid():  # first use in this (possibly forked) process
                self._pid = os.getpid()
                threading.Thread(target=self._loop, name="batch-lease", daemon=True).start()

    def untrack(self, task_id: int) -> None:
        with self._lock:
            self._tasks.discard(task_id)

    def _loop(self) -> None:
        interval = settings.BATCH_LEASE_SECONDS / 3
        while True:
            time.sleep(interval)
            with self._lock:
                ids = list(self._tasks)
            if not ids:
                continue
            try:
                close_old_connections()
                transitions.renew_leases(task_ids=ids)
            except Exception:
                log.exception("Could not renew task leases; retrying in %.1fs", interval)
                db.reset()


LEASES = LeaseKeeper()

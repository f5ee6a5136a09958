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
from batchadmin.jobs import access
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    Company,
)
from batchadmin.lib import db, durations, text, tracing
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
# An error longer than this is written to the log as its start and a pointer to the attempt's
# error message, and the traceback's last line points there too: a big error is stored once.
ERROR_LOG_CHARS = 1_000


class ProcessContext:
    """What a batch process gets as ``ctx`` (see registry.Context)."""

    def __init__(self, claim: transitions.Claim) -> None:
        self.task_run = claim  # the attempt: .pk (its BatchTaskRun), .job_run_id
        self.task_run_id = claim.pk
        self.job_id = claim.task.job_id
        self.task_id = claim.task.pk
        self.task_key = claim.task.key
        self.attempt = claim.attempt
        self._company_id = claim.task.company_id
        self._run_as_id = claim.task.run_as_id
        self._job_run_id = claim.job_run_id
        self.saw_cancel = False
        self.timed_out = False  # asked to stop by the time limit, not by a cancel
        self.time_limit: int | None = None
        self._pending: list[BatchLogEntry] = []
        self._lines = 0  # written by the process, against BATCH_LOG_LINES_PER_ATTEMPT
        self._cut = 0
        self._last_flush = time.monotonic()
        self._last_cancel_check = 0.0
        self._last_progress = 0.0

    # Loaded when a process asks: most never do, and the claim stays one statement.
    @cached_property
    def _job(self) -> BatchJob:
        return BatchJob.objects.only("company_id").get(pk=self.job_id)

    @cached_property
    def user(self) -> User | None:
        """The job's Run by user (its creator when Run by is empty), with its batch roles.

        Every attempt needs it for the role checks, so it comes from a per-process cache of a
        few seconds (BATCH_RUN_AS_CACHE_SECONDS): a role taken away stops new attempts that soon.
        """
        return RUN_AS.get(self._run_as_id)

    @cached_property
    def occurrence(self) -> dt.datetime | None:
        """The recurrence occurrence this run stands for: a scheduled run's own, a backfill's
        missed one; None for a run of no occurrence (Run now, a trigger, a one-off job)."""
        if self._job_run_id is None:
            return None
        return (
            BatchJobRun.objects.filter(pk=self._job_run_id)
            .values_list("occurrence", flat=True)
            .first()
        )

    @cached_property
    def company(self) -> Company | None:
        """The task's company accounts, else the job's."""
        company_id = self._company_id or self._job.company_id
        return Company.objects.filter(pk=company_id).first() if company_id else None

    # D365 Infolog: info(), warning(), error().
    def info(self, message: str) -> None:
        self._log(BatchLogEntry.Level.INFO, message)

    def warning(self, message: str) -> None:
        self._log(BatchLogEntry.Level.WARNING, message)

    def error(self, message: str) -> None:
        self._log(BatchLogEntry.Level.ERROR, message)

    def _log(self, level: int, message: str, *, always: bool = False) -> None:
        """One line, cleaned and cut to fit (lib/text.py); past the attempt's number of lines
        only counted. ``always``: the runner's own closing lines (the error, the "lines cut"
        note; short by construction), which are never cut."""
        limit = settings.BATCH_LOG_LINE_MAX_CHARS
        if always:
            limit = 0
        else:
            self._lines += 1
            if self._lines > settings.BATCH_LOG_LINES_PER_ATTEMPT:
                self._cut += 1
                return
        line = text.storable(str(message), limit)
        self._pending.append(
            BatchLogEntry(task_run_id=self.task_run_id, level=level, message=line, created=now())
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
        """The lines not written yet, for the finish to write; with the "N lines cut" note."""
        if self._cut:
            limit = settings.BATCH_LOG_LINES_PER_ATTEMPT
            self._log(
                BatchLogEntry.Level.WARNING,
                f"{self._cut:,} more log lines cut: an attempt keeps its first {limit:,} "
                "(BATCH_LOG_LINES_PER_ATTEMPT).",
                always=True,
            )
            self._cut = 0
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


def execute(task_run: transitions.Claim) -> tuple[transitions.Outcome, list[BatchLogEntry]]:
    task = task_run.task
    ctx = ProcessContext(task_run)
    try:
        process = registry.get(task.process)
        kwargs = process.kwargs_from(task.parameters)
        # Checked when the task was saved, and again here: the job's Run by, its role or the
        # process's rule may have changed since.
        access.check_processes(ctx.user, [process.name])
    except (registry.UnknownProcess, registry.ParameterError, registry.ProcessNotAllowed) as exc:
        # Retrying cannot fix a missing process, bad stored parameters or a refusal.
        message = f"{type(exc).__name__}: {exc}"
        ctx._log(BatchLogEntry.Level.ERROR, message, always=True)
        return transitions.Outcome(error=message, retryable=False), ctx.take_pending()
    except Exception as exc:
        # The check could not be made (the database went away): try again, as for a failure.
        message = f"Could not check who may run {task.process}: {type(exc).__name__}: {exc}"
        ctx.error(message)
        return transitions.Outcome(error=message), ctx.take_pending()
    try:
        _cap_time_limit(ctx, task_run)
        process.func(ctx, **kwargs)
    except Exception as exc:
        error, trace = _describe(exc)
        ctx._log(BatchLogEntry.Level.ERROR, _error_line(error), always=True)
        outcome = transitions.Outcome(error=error, traceback=trace, canceled=ctx.saw_cancel)
    else:
        outcome = transitions.Outcome(canceled=ctx.saw_cancel)
    if ctx.timed_out:
        # It stopped because its time limit asked it to: that is an error, not a cancel, and
        # not retried (transitions.abort_task says why).
        message = transitions.time_limit_message(ctx.time_limit, "the process stopped when asked")
        ctx._log(BatchLogEntry.Level.ERROR, message, always=True)
        outcome = transitions.Outcome(error=message, traceback=outcome.traceback, retryable=False)
    return outcome, ctx.take_pending()


def _describe(exc: Exception) -> tuple[str, str]:
    """The attempt's error message and traceback of ``exc``, fit to store (lib/text.py). The
    message is in the traceback's last line too; a long one is stored once, in the message, and
    the traceback says where it is."""
    try:
        said = str(exc)
    except Exception:  # an exception whose __str__ raises is still an error to record
        said = "(the exception's message could not be read)"
    trace = traceback.format_exc()
    if len(said) > ERROR_LOG_CHARS:
        before, found, after = trace.rpartition(said)
        if found:
            trace = f"{before}[the error message: {len(said):,} characters]{after}"
    error = text.storable(f"{type(exc).__name__}: {said}", settings.BATCH_ERROR_MAX_CHARS)
    return error, text.storable(trace, settings.BATCH_TRACEBACK_MAX_CHARS)


def _error_line(error: str) -> str:
    """The log's line for an error: the whole of a short one, the start of a long one."""
    if len(error) <= ERROR_LOG_CHARS:
        return error
    return f"{error[:ERROR_LOG_CHARS]} [...: the attempt's error message has all of it]"


def _cap_time_limit(ctx: ProcessContext, task_run: transitions.Claim) -> None:
    """Hold a task run as a Batch user to BATCH_USER_MAX_TIME_LIMIT, whatever it was saved with
    (before the ceiling existed, or by a manager before Run by changed).

    The claim set the deadline from the task's own limit; the ceiling is written as the task's
    limit, so the grid and every time-limit message say what was enforced.
    """
    ceiling = access.time_limit_ceiling(ctx.user)
    if ceiling is None:
        return
    stored = task_run.task.time_limit
    if (stored or settings.BATCH_TASK_TIME_LIMIT_SECONDS) <= ceiling:
        return
    BatchTask.objects.filter(
        pk=ctx.task_id, attempt=ctx.attempt, status=BatchStatus.EXECUTING
    ).update(time_limit=ceiling, deadline_at=task_run.started_at + dt.timedelta(seconds=ceiling))
    ctx.warning(
        f"Time limit lowered to {durations.whole(ceiling)}: the most a task run as a Batch user "
        "may have (BATCH_USER_MAX_TIME_LIMIT)."
    )


class RunAsCache:
    """The run-as users of recent attempts, with their batch roles, for a few seconds.

    A worker runs many attempts of few jobs; reading the user and their roles for each cost two
    queries an attempt. Saving a task checks roles exactly; at run time a change (a role taken
    away, a user deactivated) applies to attempts that start BATCH_RUN_AS_CACHE_SECONDS later.
    """

    def __init__(self) -> None:
        self._users: dict[int, tuple[float, User | None]] = {}
        self._lock = threading.Lock()

    def get(self, user_id: int | None) -> User | None:
        if user_id is None:
            return None  # a system job
        t = time.monotonic()
        with self._lock:
            hit = self._users.get(user_id)
        if hit is not None and t - hit[0] < settings.BATCH_RUN_AS_CACHE_SECONDS:
            return hit[1]
        user = get_user_model().objects.filter(pk=user_id).first()
        if user is not None:
            access.roles(user)  # read now, kept on the object
        with self._lock:
            if len(self._users) > 1000:
                self._users.clear()
            self._users[user_id] = (t, user)
        return user

    def clear(self) -> None:
        with self._lock:
            self._users.clear()


RUN_AS = RunAsCache()


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

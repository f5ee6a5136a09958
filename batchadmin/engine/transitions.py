"""The only module that writes ``status``: one function per D365 action.

Every write is a conditional UPDATE that names the status it expects to replace, so two workers,
two beats or a redelivered message racing for the same row end with one winner and the others
getting ``False``; a lost race is a normal result, not an exception. Everything that follows from
a task finishing (its dependents, the job's final status, history) happens in the same
transaction, under a lock on the job row, so concurrent finishes of one job are serialised and
the last one always sees the others.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils.timezone import now

from batchadmin.engine import conditions, dispatch, limits, priority, signals, sql
from batchadmin.jobs import history
from batchadmin.jobs.models import (
    MISSED_COUNT_LIMIT,
    OPEN_TASK_STATUSES,
    RUNNING_STATUSES,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    MissedOccurrence,
    StatusChange,
)
from batchadmin.lib import clock, durations, recurrence
from batchadmin.servers.models import NO_LIMIT, PAUSED, QUEUE_PREFIX, Priority

log = logging.getLogger(__name__)
S = BatchStatus
Expected = BatchTaskCondition.ExpectedStatus

# Every move the engine or a user may make, job and task alike (docs/architecture.md, section 2).
JOB_ALLOWED: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.WITHHOLD: frozenset({S.WAITING}),
    S.WAITING: frozenset({S.WITHHOLD, S.EXECUTING}),
    S.EXECUTING: frozenset({S.ENDED, S.ERROR, S.CANCELING}),
    S.CANCELING: frozenset({S.CANCELED}),
    S.ENDED: frozenset({S.WAITING, S.WITHHOLD}),
    S.ERROR: frozenset({S.WAITING, S.WITHHOLD}),
    S.CANCELED: frozenset({S.WAITING, S.WITHHOLD}),
    S.READY: frozenset(),
    S.NOT_RUN: frozenset(),
}
TASK_ALLOWED: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.WAITING: frozenset({S.READY, S.NOT_RUN}),
    S.READY: frozenset({S.EXECUTING, S.NOT_RUN}),
    S.EXECUTING: frozenset({S.ENDED, S.READY, S.ERROR, S.CANCELING}),
    S.CANCELING: frozenset({S.ENDED, S.ERROR, S.CANCELED}),
    S.ENDED: frozenset({S.WAITING}),
    S.ERROR: frozenset({S.WAITING}),
    S.NOT_RUN: frozenset({S.WAITING}),
    S.CANCELED: frozenset({S.WAITING}),
    S.WITHHOLD: frozenset(),
}
# The subset a person may choose in the Change status dialog; the rest are the engine's.
USER_MOVES: dict[BatchStatus, tuple[BatchStatus, ...]] = {
    S.WITHHOLD: (S.WAITING,),
    S.WAITING: (S.WITHHOLD,),
    S.EXECUTING: (S.CANCELING,),
    S.ENDED: (S.WAITING, S.WITHHOLD),
    S.ERROR: (S.WAITING, S.WITHHOLD),
    S.CANCELED: (S.WAITING, S.WITHHOLD),
}
TERMINAL_JOB_STATUSES = (S.ENDED, S.ERROR, S.CANCELED)
DECIDED_TASK_STATUSES = (S.ENDED, S.ERROR, S.NOT_RUN, S.CANCELED)
# Rerun "only failed": these tasks run again; Ended tasks keep their result.
RERUN_TASK_STATUSES = (S.ERROR, S.NOT_RUN, S.CANCELED)
_TINY = dt.timedelta(microseconds=1)
SERVER_LOST = "Batch server lost: the task's lease expired without a heartbeat from its worker."


class IllegalMove(ValueError):
    pass


class ChangeRefused(Exception):
    """The change can't be made now: the job is executing or canceling (D365 does not let its
    header or tasks change then), or what the change names was deleted meanwhile."""


def lock_editable_job(job_id: int) -> BatchJob:
    """Lock the job row for a change of its header or tasks; refuse while it runs.

    The caller holds a transaction. start_job updates the same row, so it waits for this
    change to commit, and a change that comes second sees Executing and stops here.
    """
    job = BatchJob.objects.select_for_update().get(pk=job_id)
    if job.status in RUNNING_STATUSES:
        raise ChangeRefused(
            f"The job is {job.get_status_display()}: it can't be changed until it ends. "
            "Nothing was saved."
        )
    return job


def backoff(retry: int) -> dt.timedelta:
    """Delay before retry number ``retry`` (1-based): doubling from the base, capped."""
    seconds = settings.BATCH_RETRY_BACKOFF_SECONDS * 2 ** (retry - 1)
    return dt.timedelta(seconds=min(seconds, settings.BATCH_RETRY_BACKOFF_MAX_SECONDS))


def _record(
    job_id: int,
    old: str,
    new: BatchStatus,
    *,
    run_id: int | None = None,
    by_id: int | None = None,
    reason: str = "",
    at: dt.datetime | None = None,
) -> None:
    StatusChange.objects.create(
        job_id=job_id,
        job_run_id=run_id,
        old_status=old,
        new_status=new,
        by_id=by_id,
        reason=reason,
        at=at or now(),
    )


# --- Change status (the user's moves) -----------------------------------------------------


def change_status(*, job_id: int, to: BatchStatus, by_id: int | None) -> bool:
    """The Change status dialog: Waiting, Withhold or Cancel (to=CANCELING).

    Raises IllegalMove when ``to`` is not offered from the job's current status; returns False
    when the job changed status between reading and writing (try again).
    """
    current = BatchJob.objects.values_list("status", flat=True).get(pk=job_id)
    allowed = USER_MOVES.get(BatchStatus(current), ())
    if to not in allowed:
        names = ", ".join(str(s.label) for s in allowed) or "nothing"
        raise IllegalMove(
            f"A job in status {BatchStatus(current).label} can't be changed to {to.label}; "
            f"allowed: {names}."
        )
    if to == S.CANCELING:
        return cancel_job(job_id=job_id, by_id=by_id)
    if to == S.WAITING:
        return release_job(job_id=job_id, by_id=by_id)
    return hold_job(job_id=job_id, by_id=by_id)


def hold_job(*, job_id: int, by_id: int | None) -> bool:
    """Withhold: take the job off the waiting list ("equivalent to stop")."""
    return _set_idle_status(job_id=job_id, to=S.WITHHOLD, by_id=by_id)


def release_job(*, job_id: int, by_id: int | None) -> bool:
    """Waiting: the scheduler starts the job once its scheduled start has passed."""
    return _set_idle_status(job_id=job_id, to=S.WAITING, by_id=by_id)


def _set_idle_status(*, job_id: int, to: BatchStatus, by_id: int | None) -> bool:
    with transaction.atomic():
        old = BatchJob.objects.values_list("status", flat=True).get(pk=job_id)
        if to not in JOB_ALLOWED[BatchStatus(old)]:
            return False
        n = BatchJob.objects.filter(pk=job_id, status=old).update(status=to)
        if n != 1:
            return False  # another request changed it first
        if old in TERMINAL_JOB_STATUSES:
            # Run again: every task starts from scratch (actual retries back to 0).
            _reset_tasks(job_id)
        _record(job_id, old, to, by_id=by_id)
        return True


def _reset_tasks(job_id: int, *, statuses: tuple[str, ...] | None = None) -> None:
    """Tasks start from scratch: Waiting, actual retries 0 (all of them, or those in ``statuses``)."""
    tasks = BatchTask.objects.filter(job_id=job_id)
    if statuses is not None:
        tasks = tasks.filter(status__in=statuses)
    tasks.update(
        status=S.WAITING,
        retries=0,
        attempt=0,
        server=None,
        hostname="",
        started_at=None,
        ended_at=None,
        ready_at=None,
        dispatched_at=None,
        lease_expires_at=None,
        progress=None,
    )


def cancel_job(*, job_id: int, by_id: int | None) -> bool:
    """Executing -> Canceling (D365 batch-abort.md).

    Unstarted tasks become Didn't run; running tasks become Canceling, which a process sees
    through ``ctx.cancel_requested()``. The job ends Canceled when the last running task stops.
    """
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job_id)
        n = BatchJob.objects.filter(pk=job_id, status=S.EXECUTING).update(
            status=S.CANCELING, canceled_by_id=by_id
        )
        if n != 1:
            return False
        at = now()
        BatchJobRun.objects.filter(job_id=job_id, pk=job.current_run_id or 0).update(
            canceled_by_id=by_id
        )
        BatchTask.objects.filter(job_id=job_id, status__in=[S.WAITING, S.READY]).update(
            status=S.NOT_RUN, ended_at=at, dispatched_at=None, ready_at=None
        )
        BatchTask.objects.filter(job_id=job_id, status=S.EXECUTING).update(
            status=S.CANCELING, deadline_at=at + _grace()
        )
        _record(
            job_id,
            S.EXECUTING,
            S.CANCELING,
            run_id=job.current_run_id,
            by_id=by_id,
            at=at,
        )
        _settle_job_if_done(job_id, at=at)
        return True


def _grace() -> dt.timedelta:
    return dt.timedelta(seconds=settings.BATCH_CANCEL_GRACE_SECONDS)


def time_limit_message(time_limit: int | None, how: str) -> str:
    seconds = time_limit or settings.BATCH_TASK_TIME_LIMIT_SECONDS
    return f"Time limit of {durations.whole(seconds)} exceeded; {how}."


def _grace_text() -> str:
    return durations.whole(_grace().total_seconds())


def stop_for_time_limit(*, task_id: int, attempt: int, at: dt.datetime | None = None) -> bool:
    """The attempt ran past its time limit: ask it to stop, as a cancel would.

    The task stays Executing (the job is not being canceled) with ``timed_out`` set, which the
    process sees through ``ctx.cancel_requested()``; it has the cancel grace period to stop
    before handle_overdue_tasks aborts it. Either way the attempt ends in Error.
    """
    at = at or now()
    with transaction.atomic():
        n = BatchTask.objects.filter(
            pk=task_id, attempt=attempt, status=S.EXECUTING, timed_out=False, deadline_at__lt=at
        ).update(timed_out=True, deadline_at=at + _grace())
        if n != 1:
            return False  # it finished, or was canceled, meanwhile
        run = BatchTaskRun.objects.filter(task_id=task_id, attempt=attempt, status=S.EXECUTING)
        run_id = run.values_list("pk", flat=True).order_by("-pk").first()
        if run_id is not None:
            time_limit = BatchTask.objects.values_list("time_limit", flat=True).get(pk=task_id)
            BatchLogEntry.objects.create(
                task_run_id=run_id,
                level=BatchLogEntry.Level.WARNING,
                message=time_limit_message(time_limit, "the process was asked to stop"),
                created=at,
            )
        return True


def abort_task(*, task_id: int, attempt: int, at: dt.datetime | None = None) -> bool:
    """D365 Abort: the attempt did not stop within the grace period after it was asked to.

    Its worker process is killed (Celery revoke with terminate) and the attempt is settled
    here: Canceled when the job is being canceled, Error after a time limit. A time-limit
    error is not retried: a process that hung once most likely hangs again, and each retry
    would hold a worker slot for another whole time limit. When the process ends by itself
    before this, finish_task's attempt and status guard makes the later of the two a no-op.
    """
    at = at or now()
    state = (
        BatchTask.objects.filter(
            pk=task_id,
            attempt=attempt,
            status__in=RUNNING_STATUSES,
            deadline_at__lt=at,
        )
        .values_list("status", "timed_out", "time_limit")
        .first()
    )
    if state is None:
        return False
    status, timed_out, time_limit = state
    if status == S.CANCELING:
        outcome = Outcome(
            error=f"Aborted after the {_grace_text()} grace period: the process did not stop "
            "when the job was canceled.",
            canceled=True,
        )
    elif timed_out:
        how = f"the process was aborted after the {_grace_text()} grace period"
        outcome = Outcome(error=time_limit_message(time_limit, how), retryable=False)
    else:
        return False  # not asked to stop yet: stop_for_time_limit comes first
    celery_id = (
        BatchTaskRun.objects.filter(task_id=task_id, attempt=attempt, status=S.EXECUTING)
        .order_by("-pk")
        .values_list("celery_task_id", flat=True)
        .first()
    )
    if celery_id:
        # Kill first, settle second: a process still running after its attempt was settled
        # would be an orphan holding a worker slot.
        dispatch.revoke(celery_id)
    else:
        log.warning("Task %s attempt %s: no Celery task id to abort", task_id, attempt)
    return finish_task(task_id=task_id, attempt=attempt, outcome=outcome, at=at)


def rerun_job(*, job_id: int, by_id: int | None, only_failed: bool) -> bool:
    """Batch job history > Rerun: a finished job (Ended, Error, Canceled) goes back to Waiting.

    Whole job: every task starts from scratch, as Change status to Waiting does.
    Only failed: tasks in Error, Didn't run or Canceled start again with actual retries at 0;
    Ended tasks keep their result and do not run again, and start_job releases the tasks that
    wait on them. Returns False when the job is not finished (any more), or when only_failed
    finds nothing to run again.
    """
    with transaction.atomic():
        old = BatchJob.objects.values_list("status", flat=True).get(pk=job_id)
        if old not in TERMINAL_JOB_STATUSES:
            return False
        again = BatchTask.objects.filter(job_id=job_id, status__in=RERUN_TASK_STATUSES)
        if only_failed and not again.exists():
            return False
        n = BatchJob.objects.filter(pk=job_id, status=old).update(status=S.WAITING)
        if n != 1:
            return False  # another request changed it first
        if only_failed:
            _reset_tasks(job_id, statuses=RERUN_TASK_STATUSES)
            reason = "Rerun of the tasks that failed or did not run"
        else:
            _reset_tasks(job_id)
            reason = "Rerun of the whole job"
        _record(job_id, old, S.WAITING, by_id=by_id, reason=reason)
        return True


# --- The engine's moves -------------------------------------------------------------------


def start_job(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """Waiting -> Executing once the scheduled start has passed: open a run, release roots.

    Not yet, and False, when the job must wait instead: a late recurring job that skips missed
    runs moves on to its next occurrence, and a job outside its active period waits for the
    period to open (its scheduled start moves there, so the tick does not look at it again).
    """
    at = at or now()
    with transaction.atomic():
        job = (
            BatchJob.objects.select_related("recurrence", "active_period").filter(pk=job_id).first()
        )
        if job is None or job.status != S.WAITING or job.scheduled_start > at:
            return False
        recurring = job.get_recurrence()
        scheduled: dt.datetime | None = job.scheduled_start
        if recurring is not None and recurring.missed == BatchRecurrence.Missed.SKIP:
            try:
                scheduled = _skip_missed(job, recurring, at=at)
            except recurrence.RuleError:
                log.exception("Batch job %s: invalid recurrence, starting it as scheduled", job_id)
        if scheduled is None:
            return False
        if job.active_period is not None and not job.active_period.is_open(at):
            _move_start(job, job.active_period.next_opening(at))
            return False
        n = (
            BatchJob.objects.due(at)
            .filter(pk=job_id, scheduled_start=job.scheduled_start)
            .update(
                status=S.EXECUTING,
                scheduled_start=scheduled,
                started_at=at,
                ended_at=None,
                canceled_by=None,
            )
        )
        if n != 1:
            return False  # not due, or another beat started it first
        run = BatchJobRun.objects.create(
            job=job,
            status=S.EXECUTING,
            scheduled_start=scheduled,
            started_at=at,
            run_by_id=job.effective_run_as_id(),
        )
        BatchJob.objects.filter(pk=job_id).update(current_run=run)
        if recurring is not None:
            BatchRecurrence.objects.filter(pk=recurring.pk).update(runs=F("runs") + 1)
        _record(job_id, S.WAITING, S.EXECUTING, run_id=run.pk, at=at)
        roots = BatchTask.objects.filter(job_id=job_id, status=S.WAITING, conditions__isnull=True)
        _make_ready(
            [
                (pk, code, priority.task_step(code, job.priority, job.priority_overridden))
                for pk, code in roots.values_list("pk", "group__code")
            ],
            at=at,
        )
        # A rerun of only the failed tasks (rerun_job) keeps Ended tasks Ended: their waiting
        # dependents are decided now, as if those parents had just finished.
        decided = BatchTask.objects.filter(job_id=job_id, status__in=DECIDED_TASK_STATUSES)
        _release_dependents(list(decided.values_list("pk", flat=True)), at=at)
        _settle_job_if_done(job_id, at=at)  # a job without tasks ends at once
        return True


def _skip_missed(
    job: BatchJob, recurring: BatchRecurrence, *, at: dt.datetime
) -> dt.datetime | None:
    """Missed-runs policy "skip": the occurrence to start for now, or None after skipping.

    1. No occurrence between the scheduled start and now (a date set by hand, a start moved
       to an active period's opening): start as scheduled.
    2. The latest occurrence passed less than the grace ago: start for it; the ones before it
       are recorded as missed.
    3. Otherwise record them all as missed and wait for the next occurrence; with none left,
       the recurrence is over and the job is withheld.
    """
    rule = recurring.rule()
    late = rule.span(job.scheduled_start, at, limit=MISSED_COUNT_LIMIT)
    if late is None:
        return job.scheduled_start
    grace = dt.timedelta(seconds=settings.BATCH_RECURRENCE_GRACE_SECONDS)
    if at - late.last <= grace:
        _record_missed(
            job,
            rule.span(job.scheduled_start, late.last - _TINY, limit=MISSED_COUNT_LIMIT),
            MissedOccurrence.Reason.LATE,
        )
        return late.last
    _record_missed(job, late, MissedOccurrence.Reason.LATE)
    following = recurring.next_occurrence(at)
    if following is None:
        n = BatchJob.objects.filter(pk=job.pk, status=S.WAITING).update(status=S.WITHHOLD)
        if n == 1:
            _record(
                job.pk,
                S.WAITING,
                S.WITHHOLD,
                reason="Recurrence over: its last run was missed.",
                at=at,
            )
        return None
    _move_start(job, following)
    return None


def _move_start(job: BatchJob, to: dt.datetime) -> None:
    # Conditional on what was read: a beat that started the job meanwhile wins.
    BatchJob.objects.filter(
        pk=job.pk, status=S.WAITING, scheduled_start=job.scheduled_start
    ).update(scheduled_start=to)


def _record_missed(job: BatchJob, span: recurrence.Span | None, reason: str) -> None:
    if span is not None:
        MissedOccurrence.objects.create(
            job=job,
            scheduled_start=span.first,
            last_scheduled_start=span.last,
            occurrences=span.count,
            reason=reason,
        )


def reschedule_job(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """The recurrence was saved: a job that is not running next starts at its first occurrence.

    "First" counts from now: occurrences before now are not runs that were missed. A running
    job takes the new recurrence when its run settles. False when nothing changed.
    """
    at = at or now()
    with transaction.atomic():
        job = BatchJob.objects.select_related("recurrence").get(pk=job_id)
        recurring = job.get_recurrence()
        if recurring is None or job.is_running():
            return False
        following = recurring.next_occurrence(at, inclusive=True)
        if following is None:
            return False
        n = BatchJob.objects.filter(pk=job_id, status=job.status).update(scheduled_start=following)
        return n == 1


def claim_task(
    *,
    task_id: int,
    server_id: int | None,
    hostname: str,
    at: dt.datetime | None = None,
    limit_checked: bool = False,
    celery_task_id: str = "",
) -> BatchTaskRun | None:
    """Ready -> Executing for the server that got the message; None if someone else did.

    A duplicate or stale delivery finds the task no longer Ready (or not yet past its retry
    backoff) and does nothing. A task of a group with a max concurrency is not claimed by the
    fast statement: _claim_limited checks the limit under the job lock, then claims it with
    ``limit_checked``.
    """
    at = at or now()
    lease = at + dt.timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    adapt = connection.ops.adapt_datetimefield_value
    # Hand-written SQL, one statement on PostgreSQL (sql.py says why).
    claim_params = [
        S.EXECUTING,
        server_id,
        hostname,
        adapt(at),
        adapt(lease),
        adapt(at),  # deadline_at: start + the task's time limit or the default
        settings.BATCH_TASK_TIME_LIMIT_SECONDS,
        task_id,
        S.READY,
        adapt(at),
        limit_checked,
    ]
    if sql.POSTGRESQL:
        with connection.cursor() as cursor:
            cursor.execute(
                sql.CLAIM_PG,
                [
                    *claim_params,
                    task_id,
                    S.EXECUTING,
                    server_id,
                    hostname,
                    adapt(at),
                    celery_task_id,
                ],
            )
            row = cursor.fetchone()
        if row is None:
            return (
                None
                if limit_checked
                else _claim_limited(task_id, server_id, hostname, at, celery_task_id)
            )
        run_id, job_run_id, job_id, attempt, key, process, parameters, company_id = row
    else:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql.CLAIM, claim_params)
            row = cursor.fetchone()
            if row is None:
                return (
                    None
                    if limit_checked
                    else _claim_limited(task_id, server_id, hostname, at, celery_task_id)
                )
            job_id, attempt, key, process, parameters, company_id = row
            cursor.execute(
                sql.RUN,
                [
                    task_id,
                    attempt,
                    S.EXECUTING,
                    server_id,
                    hostname,
                    adapt(at),
                    celery_task_id,
                    job_id,
                ],
            )
            run_id, job_run_id = cursor.fetchone()
    task = BatchTask(
        pk=task_id,
        job_id=job_id,
        key=key,
        process=process,
        parameters=json.loads(parameters) if isinstance(parameters, str) else parameters,
        company_id=company_id,
        attempt=attempt,
        status=S.EXECUTING,
    )
    return BatchTaskRun(
        pk=run_id,
        job_run_id=job_run_id,
        task=task,
        attempt=attempt,
        status=S.EXECUTING,
        server_id=server_id,
        hostname=hostname,
        started_at=at,
        celery_task_id=celery_task_id,
    )


def _claim_limited(
    task_id: int, server_id: int | None, hostname: str, at: dt.datetime, celery_task_id: str
) -> BatchTaskRun | None:
    """The claim of a task whose group has a max concurrency or reserved capacity (or of a
    task no longer Ready).

    D365 Max concurrency: N = at most N tasks of each job run at once in the group, -1 = the
    group is paused. Under the job's row lock (which finish_task takes too) two workers claiming
    tasks of one job are serialised, so the count of running tasks is exact. A refused task
    stays Ready without a message (held) until a task of its job finishes or the tick sends it.

    Reserved capacity: a task that is not of priority Reserved capacity may not start while the
    group's other running tasks fill its shared threads (priority.usable). Those claims take
    the group's row lock (after the job's, the one order used) so that the count is exact;
    Reserved capacity tasks are not limited by it and do not take that lock.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql.LOCK_JOB + sql.for_update(), [task_id])
        if cursor.fetchone() is None:
            return None
        cursor.execute(sql.LIMIT_STATE, [connection.ops.adapt_datetimefield_value(at), task_id])
        status, due, job_id, group_id, limit, reserved, task_priority = cursor.fetchone()
        if status != S.READY or not due:
            return None  # someone else claimed it, or its retry backoff is not over
        if limit != NO_LIMIT:
            running = 0
            if limit != PAUSED:
                cursor.execute(sql.RUNNING_IN_GROUP, [job_id, group_id, *RUNNING_STATUSES])
                (running,) = cursor.fetchone()
            if limit == PAUSED or running >= limit:
                cursor.execute(sql.HOLD, [task_id, S.READY])
                return None
        if reserved and task_priority != Priority.RESERVED:
            cursor.execute(sql.LOCK_GROUP + sql.for_update(), [group_id])
            threads = priority.group_threads([group_id], at)
            if group_id in threads:  # no known thread: nothing to keep
                cursor.execute(sql.SHARED_RUNNING, [group_id, *RUNNING_STATUSES, Priority.RESERVED])
                (shared,) = cursor.fetchone()
                if shared >= priority.usable(threads[group_id], reserved):
                    cursor.execute(sql.HOLD, [task_id, S.READY])
                    return None
        return claim_task(
            task_id=task_id,
            server_id=server_id,
            hostname=hostname,
            at=at,
            limit_checked=True,
            celery_task_id=celery_task_id,
        )


@dataclass
class Outcome:
    """How one attempt ended, as the runner saw it."""

    error: str = ""
    traceback: str = ""
    canceled: bool = False  # the process stopped because it was asked to
    retryable: bool = True  # False: fail for good (unknown process, bad parameters)


def finish_task(
    *,
    task_id: int,
    attempt: int,
    outcome: Outcome,
    log: Iterable[BatchLogEntry] = (),
    at: dt.datetime | None = None,
) -> bool:
    """Settle one attempt: Ended, back to Ready for a retry, Error, or Canceled.

    ``attempt`` guards against a stale caller: if the lease of this attempt already expired and
    the task moved on, the late result is discarded (returns False).
    """
    at = at or now()
    adapt = connection.ops.adapt_datetimefield_value
    with transaction.atomic(), connection.cursor() as cursor:
        # Serialise the finishes of one job: the last one must see all the others.
        cursor.execute(sql.LOCK_JOB + sql.for_update(), [task_id])
        (job_id,) = cursor.fetchone()
        cursor.execute(sql.TASK_STATE, [task_id])
        task_attempt, status, retries, max_retries, group_id, limit = cursor.fetchone()
        if task_attempt != attempt or status not in RUNNING_STATUSES:
            return False
        canceling = status == S.CANCELING
        if not outcome.error:
            new = S.CANCELED if canceling and outcome.canceled else S.ENDED
        elif canceling:
            new = S.CANCELED if outcome.canceled else S.ERROR
        elif outcome.retryable and retries < max_retries:
            new = S.READY
        else:
            new = S.ERROR
        cursor.execute(
            sql.FINISH_RUN,
            [
                S.ERROR if new == S.READY else new,
                adapt(at),
                outcome.error,
                outcome.traceback,
                task_id,
                attempt,
                S.EXECUTING,
            ],
        )
        log = list(log)
        if log:
            BatchLogEntry.objects.bulk_create(log)
        if new == S.READY:
            ready_at = at + backoff(retries + 1)
            BatchTask.objects.filter(pk=task_id).update(
                status=S.READY,
                retries=retries + 1,
                ended_at=at,
                lease_expires_at=None,
                ready_at=ready_at,
                # No message yet: the tick sends one when the backoff is over, which keeps
                # long-delayed (ETA) messages out of the broker and the workers' memory.
                dispatched_at=None,
            )
            if limit > 0:
                limits.release_held(job_id=job_id, group_id=group_id, limit=limit, at=at)
            return True
        cursor.execute(sql.FINISH_TASK, [new, adapt(at), task_id])
        if limit > 0:
            # Max concurrency: a slot of this job in the group is free; the next held task
            # goes now, not at the next tick.
            limits.release_held(job_id=job_id, group_id=group_id, limit=limit, at=at)
        cursor.execute(sql.WHAT_FOLLOWS, [task_id, S.WAITING, job_id, *OPEN_TASK_STATUSES])
        has_dependents, has_open = cursor.fetchone()
        # The common case (no dependents, other tasks still open) ends here; the rest stays
        # in this transaction, under the job lock.
        if has_dependents:
            _release_dependents([task_id], at=at)
        if has_dependents or not has_open:
            _settle_job_if_done(job_id, at=at)
    return True


def expire_lease(*, task_id: int, attempt: int, at: dt.datetime | None = None) -> bool:
    """The tick found this attempt's lease run out: its server is gone. Fail the attempt."""
    at = at or now()
    still_expired = BatchTask.objects.filter(
        pk=task_id, attempt=attempt, lease_expires_at__lt=at
    ).exists()
    if not still_expired:
        return False
    return finish_task(task_id=task_id, attempt=attempt, outcome=Outcome(error=SERVER_LOST), at=at)


def renew_leases(*, task_ids: list[int], at: dt.datetime | None = None) -> int:
    at = at or now()
    lease = at + dt.timedelta(seconds=settings.BATCH_LEASE_SECONDS)
    return BatchTask.objects.running().filter(pk__in=task_ids).update(lease_expires_at=lease)


# --- What follows from a finished task ----------------------------------------------------


def _release_dependents(parent_ids: list[int], *, at: dt.datetime) -> None:
    """Move waiting dependents of ``parent_ids`` to Ready or Didn't run, transitively."""
    while parent_ids:
        waiting = list(
            BatchTaskCondition.objects.filter(
                depends_on_id__in=parent_ids, task__status=S.WAITING
            ).values_list("task_id", flat=True)
        )
        if not waiting:
            return
        rows = BatchTaskCondition.objects.filter(task_id__in=waiting).values_list(
            "task_id",
            "task__condition_type",
            "task__group__code",
            "expected_status",
            "depends_on__status",
            # The job's priority rides along (a join, not a query) for the message's step.
            "task__job__priority",
            "task__job__priority_overridden",
        )
        by_task: dict[int, tuple[str, str, int, list[bool | None]]] = {}
        for tid, ctype, group_code, expected, parent_status, job_priority, overridden in rows:
            entry = by_task.setdefault(
                tid,
                (ctype, group_code, priority.task_step(group_code, job_priority, overridden), []),
            )
            entry[3].append(conditions.condition_state(expected, parent_status))
        ready: list[tuple[int, str, int]] = []
        not_run: list[int] = []
        for tid, (ctype, group_code, step, states) in by_task.items():
            decision = conditions.decide(ctype, states)
            if decision == S.READY:
                ready.append((tid, group_code, step))
            elif decision == S.NOT_RUN:
                not_run.append(tid)
        _make_ready(ready, at=at)
        if not_run:
            BatchTask.objects.filter(pk__in=not_run, status=S.WAITING).update(
                status=S.NOT_RUN, ended_at=at
            )
        # A Didn't run parent decides its own dependents in turn.
        parent_ids = not_run


def _make_ready(tasks: list[tuple[int, str, int]], *, at: dt.datetime) -> None:
    """Waiting -> Ready and send each a "start this now" message once the transaction commits.

    ``tasks``: (task id, group code, priority step of its message, see priority.py).
    """
    if not tasks:
        return
    ids = [tid for tid, _, _ in tasks]
    group_limits = limits.cached_limits()  # per-process cache: no query for unlimited groups
    if any(code in group_limits for _, code, _ in tasks):
        tasks, held = _apply_limits(tasks, group_limits)
        # Max concurrency of the group: these stay Ready without a message (held).
        BatchTask.objects.filter(pk__in=held, status=S.WAITING).update(
            status=S.READY, ready_at=at, dispatched_at=None
        )
        ids = [tid for tid, _, _ in tasks]
    BatchTask.objects.filter(pk__in=ids, status=S.WAITING).update(
        status=S.READY, ready_at=at, dispatched_at=at
    )
    dispatch.send_on_commit([(tid, QUEUE_PREFIX + code, step) for tid, code, step in tasks])


def _apply_limits(
    tasks: list[tuple[int, str, int]], group_limits: dict[str, int]
) -> tuple[list[tuple[int, str, int]], list[int]]:
    """Split tasks becoming Ready into those sent now and those held by their group's limit."""
    job_ids = dict(
        BatchTask.objects.filter(
            pk__in=[tid for tid, code, _ in tasks if code in group_limits]
        ).values_list("pk", "job_id")
    )
    candidates = [
        limits.Candidate(tid, job_ids.get(tid, 0), code, group_limits.get(code, 0))
        for tid, code, _ in tasks
    ]
    allowed = {c.task_id for c in limits.dispatchable(candidates)}
    return [t for t in tasks if t[0] in allowed], [t[0] for t in tasks if t[0] not in allowed]


def _settle_job_if_done(job_id: int, *, at: dt.datetime) -> bool:
    """Give a running job its final status once none of its tasks is open (caller holds the job lock)."""
    if BatchTask.objects.filter(job_id=job_id, status__in=OPEN_TASK_STATUSES).exists():
        return False
    job = BatchJob.objects.select_related("recurrence").get(pk=job_id)
    if job.status == S.CANCELING:
        final = S.CANCELED
    elif job.status == S.EXECUTING:
        failed = BatchTask.objects.filter(job_id=job_id, status=S.ERROR, ignore_failure=False)
        final = S.ERROR if failed.exists() else S.ENDED
    else:
        return False
    n = BatchJob.objects.filter(pk=job_id, status=job.status).update(status=final, ended_at=at)
    if n != 1:
        return False
    if job.current_run_id:
        BatchJobRun.objects.filter(pk=job.current_run_id).update(status=final, ended_at=at)
        _record_unattempted_tasks(job_id, job.current_run_id)
    _record(job_id, job.status, final, run_id=job.current_run_id, at=at)
    # Alerts (alerts/apps.py) take their snapshot (failing tasks, first error lines) here,
    # in this transaction, before the history may go.
    signals.job_settled.send(BatchJob, job=job, run_id=job.current_run_id, final=final, at=at)
    history.apply_save_policy(job, run_id=job.current_run_id, final=final)
    if final != S.CANCELED:
        _schedule_next_run(job, final=final, at=at)
    return True


def _schedule_next_run(job: BatchJob, *, final: BatchStatus, at: dt.datetime) -> bool:
    """D365: a recurring job goes back to Waiting after Ended and after Error, while its range
    lasts; the next start is the first occurrence after now. Occurrences that passed while it
    ran are recorded as missed and not replayed. (A canceled job stays Canceled.)
    """
    recurring = job.get_recurrence()
    if recurring is None:
        return False
    try:
        # Never the occurrence that just ran, even when this worker's clock is behind the beat's.
        following = recurring.next_occurrence(max(at, job.scheduled_start))
    except recurrence.RuleError:
        # A row edited by hand into nonsense must not fail the finish of the task.
        log.exception("Batch job %s: invalid recurrence, no further runs", job.pk)
        return False
    if following is None:
        return False  # the range is over: the job keeps its final status
    n = BatchJob.objects.filter(pk=job.pk, status=final).update(
        status=S.WAITING, scheduled_start=following
    )
    if n != 1:
        return False
    _reset_tasks(job.pk)
    started = max(job.started_at or at, job.scheduled_start)
    missed = recurring.rule().span(started + _TINY, at, limit=MISSED_COUNT_LIMIT)
    _record_missed(job, missed, MissedOccurrence.Reason.RUNNING)
    _record(
        job.pk,
        final,
        S.WAITING,
        run_id=job.current_run_id,
        reason="Recurrence: next run "
        + clock.format_when(following.astimezone(recurring.rule().tz), "tz"),
        at=at,
    )
    return True


def _record_unattempted_tasks(job_id: int, run_id: int) -> None:
    """Give tasks that never ran in this run (Didn't run, canceled early) a history row too."""
    attempted = BatchTaskRun.objects.filter(job_run_id=run_id).values("task_id")
    untouched = BatchTask.objects.filter(job_id=job_id).exclude(pk__in=attempted)
    BatchTaskRun.objects.bulk_create(
        BatchTaskRun(
            job_run_id=run_id,
            task_id=t.pk,
            attempt=0,
            status=t.status,
            ended_at=t.ended_at,
        )
        for t in untouched.only("pk", "status", "ended_at")
    )


def settle_stranded_job(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """Safety net for the tick: settle a running job none of whose tasks is open."""
    at = at or now()
    with transaction.atomic():
        locked = (
            BatchJob.objects.select_for_update().filter(pk=job_id).values_list("status", flat=True)
        )
        if locked.first() not in RUNNING_STATUSES:
            return False
        return _settle_job_if_done(job_id, at=at)


def release_stranded(*, job_id: int, parent_ids: list[int], at: dt.datetime | None = None) -> int:
    """Safety net for the tick: re-evaluate waiting dependents of decided parents."""
    at = at or now()
    with transaction.atomic():
        BatchJob.objects.select_for_update().filter(pk=job_id).values_list("pk").first()
        before = BatchTask.objects.filter(job_id=job_id, status=S.WAITING).count()
        _release_dependents(parent_ids, at=at)
        after = BatchTask.objects.filter(job_id=job_id, status=S.WAITING).count()
        _settle_job_if_done(job_id, at=at)
        return before - after

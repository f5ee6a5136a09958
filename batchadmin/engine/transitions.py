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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F, Max, Q
from django.utils.timezone import now

from batchadmin.audit import trail
from batchadmin.engine import conditions, dispatch, limits, priority, signals, sql
from batchadmin.jobs import access, backfill, history
from batchadmin.jobs.models import (
    MISSED_COUNT_LIMIT,
    OPEN_TASK_STATUSES,
    RUNNING_STATUSES,
    AfterStatus,
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    MissedOccurrence,
    QueuedRun,
    StatusChange,
)
from batchadmin.lib import clock, daterange, durations, fastload, recurrence, text
from batchadmin.processes import registry
from batchadmin.servers.models import NO_LIMIT, PAUSED, QUEUE_PREFIX, Priority

log = logging.getLogger(__name__)
S = BatchStatus
Expected = BatchTaskCondition.ExpectedStatus

# Every move the engine or a user may make, job and task alike (docs/architecture.md, section 2).
# Executing from anything but Waiting: a manual run (Run now, Rerun, a skip that resumes).
JOB_ALLOWED: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.WITHHOLD: frozenset({S.WAITING, S.EXECUTING}),
    S.WAITING: frozenset({S.WITHHOLD, S.EXECUTING}),
    S.EXECUTING: frozenset({S.ENDED, S.ERROR, S.CANCELING}),
    S.CANCELING: frozenset({S.CANCELED}),
    S.ENDED: frozenset({S.WAITING, S.WITHHOLD, S.EXECUTING}),
    S.ERROR: frozenset({S.WAITING, S.WITHHOLD, S.EXECUTING}),
    S.CANCELED: frozenset({S.WAITING, S.WITHHOLD, S.EXECUTING}),
    S.READY: frozenset(),
    S.NOT_RUN: frozenset(),
    S.SKIPPED: frozenset(),
}
# Skipped is an operator's move (skip_task); a new run puts a skipped task back to Waiting.
# Restoring a recurring job's last run from its history (last_run_results) writes back what
# the tasks were, and is no move.
TASK_ALLOWED: dict[BatchStatus, frozenset[BatchStatus]] = {
    S.WAITING: frozenset({S.READY, S.NOT_RUN, S.SKIPPED}),
    S.READY: frozenset({S.EXECUTING, S.NOT_RUN, S.SKIPPED}),
    S.EXECUTING: frozenset({S.ENDED, S.READY, S.ERROR, S.CANCELING}),
    S.CANCELING: frozenset({S.ENDED, S.ERROR, S.CANCELED}),
    S.ENDED: frozenset({S.WAITING}),
    S.ERROR: frozenset({S.WAITING, S.SKIPPED}),
    S.NOT_RUN: frozenset({S.WAITING}),
    S.SKIPPED: frozenset({S.WAITING}),
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
DECIDED_TASK_STATUSES = (S.ENDED, S.ERROR, S.NOT_RUN, S.SKIPPED, S.CANCELED)
# Rerun "only failed": these tasks run again; Ended and Skipped tasks keep their result.
RERUN_TASK_STATUSES = (S.ERROR, S.NOT_RUN, S.CANCELED)
# Skip: a task in Error, or one that has not started (docs/operator-actions.md).
SKIPPABLE_TASK_STATUSES = (S.ERROR, S.WAITING, S.READY)
_TINY = dt.timedelta(microseconds=1)
SERVER_LOST = "Batch server lost: the task's lease expired without a heartbeat from its worker."


class IllegalMove(ValueError):
    pass


class Refused(Exception):
    """An operator's action (skip, rerun, run now) can't be done: the message says why and
    names the culprit. Nothing was changed."""


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


def change_status(
    *, job_id: int, to: BatchStatus, by_id: int | None, via: str = trail.Via.WEB
) -> bool:
    """The Change status dialog: Waiting, Withhold or Cancel (to=CANCELING).

    Raises IllegalMove when ``to`` is not offered from the job's current status; returns False
    when the job changed status between reading and writing (try again). A change that is
    made is written to the audit trail in its transaction.
    """
    current = BatchJob.objects.values_list("status", flat=True).get(pk=job_id)
    allowed = USER_MOVES.get(BatchStatus(current), ())
    if to not in allowed:
        names = ", ".join(str(s.label) for s in allowed) or "nothing"
        raise IllegalMove(
            f"A job in status {BatchStatus(current).label} can't be changed to {to.label}; "
            f"allowed: {names}."
        )
    with transaction.atomic():
        if to == S.CANCELING:
            moved = cancel_job(job_id=job_id, by_id=by_id)
        elif to == S.WAITING:
            moved = release_job(job_id=job_id, by_id=by_id)
        else:
            moved = hold_job(job_id=job_id, by_id=by_id)
        if moved:
            trail.record(
                trail.Action.STATUS,
                user=by_id,
                job=job_id,
                target="job",
                changes={"Status": [str(BatchStatus(current).label), str(to.label)]},
                via=via,
            )
        return moved


def hold_job(*, job_id: int, by_id: int | None) -> bool:
    """Withhold: take the job off the waiting list ("equivalent to stop")."""
    return _set_idle_status(job_id=job_id, to=S.WITHHOLD, by_id=by_id)


def withhold_out_of_range(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """The tick found a waiting job whose scheduled start is outside the dates batchadmin
    accepts (lib/daterange.py; stored before the bounds, or by hand): Waiting -> Withhold, with
    the reason in its status history, once. A person sets a real start and releases it."""
    with transaction.atomic():
        bad = BatchJob.objects.filter(pk=job_id, status=S.WAITING).exclude(
            scheduled_start__range=(daterange.EARLIEST_INSTANT, daterange.LATEST_INSTANT)
        )
        # The tick waits on no row another process holds: a locked job is looked at next tick.
        if bad.select_for_update(skip_locked=True).values_list("pk", flat=True).first() is None:
            return False  # changed meanwhile, repaired, or locked
        if bad.update(status=S.WITHHOLD) != 1:
            return False
        reason = f"Scheduled start out of range (dates go {daterange.RANGE_TEXT}): withheld."
        _record(job_id, S.WAITING, S.WITHHOLD, reason=reason, at=at)
        return True


def release_job(*, job_id: int, by_id: int | None) -> bool:
    """Waiting: the scheduler starts the job once its scheduled start has passed."""
    return _set_idle_status(job_id=job_id, to=S.WAITING, by_id=by_id)


def _set_idle_status(*, job_id: int, to: BatchStatus, by_id: int | None) -> bool:
    with transaction.atomic():
        old = BatchJob.objects.values_list("status", flat=True).get(pk=job_id)
        if to not in JOB_ALLOWED[BatchStatus(old)]:
            return False
        # ``modified`` too: a job set Waiting with a start already past became due now, and
        # explain.job_due must not blame beat for the seconds before its next tick.
        n = BatchJob.objects.filter(pk=job_id, status=old).update(status=to, modified=now())
        if n != 1:
            return False  # another request changed it first
        if old in TERMINAL_JOB_STATUSES:
            # Run again: every task starts from scratch (actual retries back to 0).
            _reset_tasks(job_id)
        _record(job_id, old, to, by_id=by_id)
        return True


def _reset_tasks(
    job_id: int, *, statuses: tuple[str, ...] | None = None, pks: Iterable[int] | None = None
) -> None:
    """Tasks start from scratch: Waiting, actual retries 0 (all of them, or those in
    ``statuses``, or those in ``pks``); a skip and a run's parameter overrides are over."""
    tasks = BatchTask.objects.filter(job_id=job_id)
    if statuses is not None:
        tasks = tasks.filter(status__in=statuses)
    if pks is not None:
        tasks = tasks.filter(pk__in=list(pks))
    tasks.update(
        skip_note="",
        run_parameters=None,
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


def cancel_job(
    *, job_id: int, by_id: int | None, reason: str = "", at: dt.datetime | None = None
) -> bool:
    """Executing -> Canceling (D365 batch-abort.md).

    Unstarted tasks become Didn't run; running tasks become Canceling, which a process sees
    through ``ctx.cancel_requested()``. The job ends Canceled when the last running task stops.
    ``reason`` goes into the status history (the engine's cancels say why).
    """
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().get(pk=job_id)
        n = BatchJob.objects.filter(pk=job_id, status=S.EXECUTING).update(
            status=S.CANCELING, canceled_by_id=by_id
        )
        if n != 1:
            return False
        at = at or now()
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
            reason=reason,
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


# --- Operator actions: skip, rerun, run now (docs/operator-actions.md) ---------------------

Trigger = BatchJobRun.Trigger
# A manual run starts from a job that is not running: finished, Waiting or Withhold.
MANUAL_RUN_FROM = (*TERMINAL_JOB_STATUSES, S.WAITING, S.WITHHOLD)


def _lock_job(job_id: int) -> BatchJob:
    """Lock the job row (the order finish_task uses: the job first, then its tasks)."""
    job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
    if job is None:
        raise Refused(f"There is no batch job {job_id}.")
    return job


def _skip_note(by_id: int | None, reason: str) -> str:
    """ "Skipped by alice: <reason>", kept on the task and in the run's history."""
    who = None
    if by_id is not None:
        who = get_user_model().objects.filter(pk=by_id).values_list("username", flat=True).first()
    return (f"Skipped by {who}: {reason}" if who else f"Skipped: {reason}")[:300]


def skip_task(
    *,
    task_id: int,
    reason: str,
    by_id: int | None,
    via: str = trail.Via.WEB,
    at: dt.datetime | None = None,
) -> bool:
    """Skip a task, with a reason: it becomes Skipped, which counts as Ended for the
    conditions of its dependents and never makes the job fail.

    1. The job is executing: a task in Error, Waiting or Ready is skipped in this run. Its
       dependents that had not run wait again and are decided with it Skipped; the job
       settles when nothing is left open.
    2. The job is over (Ended, Error, Canceled), or a recurring job went back to Waiting after
       a run in which this task ended in Error: the job resumes now, in a new run
       (_start_manual_run): the task is Skipped, the tasks downstream of it that had not run
       are released, and every other task keeps its result.
    3. The job has not started (Waiting or Withhold) and the task is Waiting: it is skipped in
       the job's next run only; the run after that starts from scratch again.

    Raises Refused (nothing changed) for anything else; False when another request changed the
    task or the job first.
    """
    reason = reason.strip()
    if not reason:
        raise Refused("Give a reason to skip a task: it goes into the audit trail.")
    at = at or now()
    with transaction.atomic():
        job_id = BatchTask.objects.filter(pk=task_id).values_list("job_id", flat=True).first()
        if job_id is None:
            raise Refused("This task does not exist (any more).")
        job = _lock_job(job_id)
        task = BatchTask.objects.select_related("group").get(pk=task_id)
        status = BatchStatus(task.status)
        note = _skip_note(by_id, reason)

        def audit(before: str, after: str) -> None:
            trail.record(
                trail.Action.SKIP,
                user=by_id,
                job=job.pk,
                target=f"task {task.key}",
                changes={"Status": [before, after]},
                reason=reason,
                via=via,
                at=at,
            )

        effect, results = _skip_effect(job, task)
        if effect == SKIP_IN_RUN:
            n = BatchTask.objects.filter(pk=task_id, status=status).update(
                status=S.SKIPPED,
                ended_at=at,
                ready_at=None,
                dispatched_at=None,
                lease_expires_at=None,
                skip_note=note,
            )
            if n != 1:
                return False  # it started or finished meanwhile
            _record_skip(task, run_id=job.current_run_id, note=note, at=at)
            if status == S.READY and task.group.max_concurrency > 0:
                # A Ready task with a message out held a slot of its group's limit.
                limits.release_held(
                    job_id=job.pk,
                    group_id=task.group_id,
                    limit=task.group.max_concurrency,
                    at=at,
                )
            not_run = BatchTask.objects.filter(
                pk__in=downstream_of(job.pk, [task_id]), status=S.NOT_RUN
            ).values_list("pk", flat=True)
            _reset_tasks(job.pk, pks=list(not_run))
            _release_decided(job.pk, at=at)
            audit(str(status.label), "Skipped")
            _settle_job_if_done(job.pk, at=at)
            return True
        if effect == SKIP_RESUMES:
            assert results is not None
            down = downstream_of(job.pk, [task_id])
            started = _start_manual_run(
                job,
                trigger=Trigger.RESUME,
                results=results,
                again={pk for pk in down if results.get(pk) == S.NOT_RUN},
                skip={task_id: note},
                by_id=by_id,
                note=f"Resumed after task {task.key} was skipped: {reason}",
                at=at,
            )
            if started:
                audit("Error", "Skipped")
            return started
        # 3. Not started yet: skipped in the next run (start_job leaves it Skipped and
        # releases what waits for it).
        n = BatchTask.objects.filter(pk=task_id, status=S.WAITING).update(
            status=S.SKIPPED, skip_note=note
        )
        if n == 1:
            audit("Waiting", "Skipped (next run)")
        return n == 1


# What a skip does (skip_task's three cases).
SKIP_IN_RUN, SKIP_RESUMES, SKIP_NEXT_RUN = "in_run", "resumes", "next_run"


def skip_effect(job: BatchJob, task: BatchTask) -> str:
    """What skipping ``task`` would do now: SKIP_IN_RUN, SKIP_RESUMES or SKIP_NEXT_RUN; or
    Refused with the reason it can't be skipped. The Skip dialog says it before asking."""
    return _skip_effect(job, task)[0]


def _skip_effect(job: BatchJob, task: BatchTask) -> tuple[str, dict[int, str] | None]:
    status = BatchStatus(task.status)
    if job.status == S.CANCELING:
        raise Refused(f"Job {job.pk} is being canceled: its tasks can't be skipped now.")
    if job.status == S.EXECUTING:
        if status not in SKIPPABLE_TASK_STATUSES:
            raise Refused(
                f"Task {task.key} is {status.label}: only a task in Error, Waiting or Ready "
                "can be skipped."
            )
        return SKIP_IN_RUN, None
    results = last_run_results(job)
    if results is not None and results.get(task.pk) == S.ERROR:
        return SKIP_RESUMES, results
    if job.status in TERMINAL_JOB_STATUSES:
        label = BatchStatus(results[task.pk]).label if results else status.label
        raise Refused(
            f"Task {task.key} is {label} in the job's last run: in a finished run only a task "
            "in Error can be skipped."
        )
    if status != S.WAITING:
        raise Refused(
            f"Task {task.key} is {status.label}: before the job starts only a Waiting task can "
            "be skipped."
        )
    return SKIP_NEXT_RUN, results


def _record_skip(task: BatchTask, *, run_id: int | None, note: str, at: dt.datetime) -> None:
    """The skip as a row of the run's history, after the task's attempts in it (attempt 0 when
    it had none, as a task that did not run)."""
    if run_id is None:
        return
    last = BatchTaskRun.objects.filter(job_run_id=run_id, task_id=task.pk).aggregate(
        n=Max("attempt")
    )["n"]
    BatchTaskRun.objects.create(
        job_run_id=run_id,
        task_id=task.pk,
        attempt=0 if last is None else last + 1,
        status=S.SKIPPED,
        ended_at=at,
        error_message=note,
    )


def downstream_of(job_id: int, roots: list[int]) -> set[int]:
    """Every task that waits, directly or through others, for one of ``roots`` (one query)."""
    children: dict[int, list[int]] = {}
    edges = BatchTaskCondition.objects.filter(task__job_id=job_id).values_list(
        "depends_on_id", "task_id"
    )
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen - set(roots)


def _release_decided(job_id: int, *, at: dt.datetime) -> None:
    """Decide the waiting tasks whose parents are decided (Ended, Skipped, Error ...)."""
    decided = BatchTask.objects.filter(job_id=job_id, status__in=DECIDED_TASK_STATUSES)
    _release_dependents(list(decided.values_list("pk", flat=True)), at=at)


def last_run_results(job: BatchJob) -> dict[int, str] | None:
    """Task id -> how it ended the job's last run; None when that is not known.

    A finished job's tasks still hold it. A recurring job went back to Waiting after its run
    and its tasks with it, so there it is read back from that run's history: each task's last
    row (attempt 0: it did not run). A task added since counts as Waiting. None: the job has
    not run, or the history of its last run was not saved (Save job to history) or cleaned up.
    """
    tasks = dict(BatchTask.objects.filter(job_id=job.pk).values_list("pk", "status"))
    if job.status in TERMINAL_JOB_STATUSES:
        return tasks
    if job.status not in (S.WAITING, S.WITHHOLD) or job.current_run_id is None:
        return None
    rows = BatchTaskRun.objects.filter(
        job_run_id=job.current_run_id, job_run__ended_at__isnull=False
    ).order_by("task_id", "attempt", "pk")
    last = dict(rows.values_list("task_id", "status"))  # the later attempt wins
    if not last:
        return None
    results: dict[int, str] = {}
    for pk in tasks:
        status = last.get(pk, S.WAITING)  # a task added since the run: not run yet
        # An open status in a finished run's history (a crash mid-settle): it did not run.
        results[pk] = S.NOT_RUN if pk in last and status in OPEN_TASK_STATUSES else status
    return results


def _start_manual_run(
    job: BatchJob,
    *,
    trigger: str,
    results: dict[int, str] | None,
    again: set[int],
    by_id: int | None,
    note: str,
    at: dt.datetime,
    skip: dict[int, str] | None = None,
    start_first: int | None = None,
    overrides: dict[int, dict[str, object]] | None = None,
    shown_overrides: dict[str, dict[str, object]] | None = None,
    occurrence: dt.datetime | None = None,
) -> bool:
    """Start a run now, for an operator, a trigger or a backfill (the caller holds the job
    lock).

    1. The job becomes Executing at once, whatever its scheduled start. A recurring job that
       was Waiting or Withhold keeps that state and its start in ``return_status`` and
       ``return_start`` and goes back to them when the run ends (_end_manual_run); its
       recurrence's run count does not change. Any other job keeps the run's final status.
    2. The tasks are what ``results`` says (a recurring job's last run, read back from its
       history), then ``again`` start from scratch and ``skip`` are Skipped; every other task
       keeps its result.
    3. A new BatchJobRun records why (``trigger``, ``note``) and the parameter overrides.
    4. ``start_first`` (Rerun from a task) is made Ready whatever its conditions, then the
       tasks without conditions, then the dependents of every decided task, as start_job does.

    A new run and not the old one reopened: a run's history row stays the record of what
    happened (the Error run stays an Error run), its alert stays one event per final status,
    and the old run may be gone (Save job to history, the clean-up).
    """
    old = job.status
    if old not in MANUAL_RUN_FROM:
        raise Refused(f"Job {job.pk} is {BatchStatus(old).label}: wait until this run is over.")
    # A job that follows another one waits for it again after the run, as a recurring job
    # waits for its next occurrence.
    scheduled = job.get_recurrence() is not None or job.after_job_id is not None
    back = old in (S.WAITING, S.WITHHOLD) and scheduled
    n = BatchJob.objects.filter(pk=job.pk, status=old).update(
        status=S.EXECUTING,
        scheduled_start=at,
        started_at=at,
        ended_at=None,
        canceled_by=None,
        manual_run=True,
        return_status=old if back else "",
        return_start=job.scheduled_start if back else None,
    )
    if n != 1:
        return False  # another request or beat changed it first
    if results is not None and old not in TERMINAL_JOB_STATUSES:
        by_status: dict[str, list[int]] = {}
        for pk, status in results.items():
            by_status.setdefault(status, []).append(pk)
        for status, pks in by_status.items():
            BatchTask.objects.filter(pk__in=pks).update(
                status=status, ready_at=None, dispatched_at=None, lease_expires_at=None
            )
    if again:
        _reset_tasks(job.pk, pks=again)
    for pk, skip_note in (skip or {}).items():
        BatchTask.objects.filter(pk=pk).update(
            status=S.SKIPPED, ended_at=at, ready_at=None, dispatched_at=None, skip_note=skip_note
        )
    run = BatchJobRun.objects.create(
        job=job,
        status=S.EXECUTING,
        scheduled_start=at,
        started_at=at,
        run_by_id=job.effective_run_as_id(),
        trigger=trigger,
        started_by_id=by_id,
        note=note[:300],
        parameters=shown_overrides or {},
        occurrence=occurrence,
    )
    BatchJob.objects.filter(pk=job.pk).update(current_run=run)
    for pk, params in (overrides or {}).items():
        BatchTask.objects.filter(pk=pk).update(run_parameters=params)
    _record(job.pk, old, S.EXECUTING, run_id=run.pk, by_id=by_id, reason=note[:200], at=at)
    waiting = BatchTask.objects.filter(job_id=job.pk, status=S.WAITING)
    first = []
    if start_first is not None:
        first = list(waiting.filter(pk=start_first).values_list("pk", "group__code"))
    roots = waiting.filter(conditions__isnull=True).exclude(pk=start_first or 0)
    _make_ready(
        [
            (pk, code, priority.task_step(code, job.priority, job.priority_overridden))
            for pk, code in first + list(roots.values_list("pk", "group__code"))
        ],
        at=at,
    )
    _release_decided(job.pk, at=at)
    _settle_job_if_done(job.pk, at=at)  # nothing left to run: it ends at once
    return True


def rerun_job(
    *,
    job_id: int,
    by_id: int | None,
    only_failed: bool = False,
    from_task_id: int | None = None,
    via: str = trail.Via.WEB,
    at: dt.datetime | None = None,
) -> bool:
    """Rerun the job's last run now (Batch job history > Rerun, task line > Rerun from here).

    - Whole job: every task starts from scratch.
    - ``only_failed``: the tasks in Error, Didn't run or Canceled run again; Ended and Skipped
      tasks keep their result and release what waits for them.
    - ``from_task_id``: that task and everything downstream of it run again; the others keep
      their result. The task itself starts at once (it is where the operator starts).

    It starts at once (not at a scheduled start) and, on a recurring job, neither waits for
    nor uses up an occurrence (_start_manual_run). Raises Refused when the job is running or
    has no last run to rerun; False when another request changed the job first.
    """
    at = at or now()
    with transaction.atomic():
        job = _lock_job(job_id)
        if job.status in RUNNING_STATUSES:
            raise Refused(
                f"Job {job_id} is {job.get_status_display()}: it can be rerun once this run "
                "is over."
            )
        results = last_run_results(job)
        if results is None:
            note = history.not_saved_note(job)
            raise Refused(
                f"Job {job_id} has no finished run to rerun"
                + (f" in its history ({note})" if note and job.started_at else "")
                + ": use Run now."
            )
        start_first = None
        target = "job"
        if from_task_id is not None:
            key = BatchTask.objects.filter(pk=from_task_id, job_id=job_id).values_list(
                "key", flat=True
            )
            if not key:
                raise Refused(f"Job {job_id} has no such task.")
            again = {from_task_id} | downstream_of(job_id, [from_task_id])
            trigger, action, start_first = Trigger.RERUN_FROM, trail.Action.RERUN_FROM, from_task_id
            target = f"task {key[0]}"
            reason = f"Rerun from task {key[0]}"
        elif only_failed:
            again = {pk for pk, status in results.items() if status in RERUN_TASK_STATUSES}
            if not again:
                raise Refused(
                    f"No task failed or did not run in the last run of job {job_id}: "
                    "use Run now to run it all again."
                )
            trigger, action = Trigger.RERUN_FAILED, trail.Action.RERUN_FAILED
            reason = "Rerun of the tasks that failed or did not run"
        else:
            again = set(results)
            trigger, action = Trigger.RERUN_ALL, trail.Action.RERUN_ALL
            reason = "Rerun of the whole job"
        started = _start_manual_run(
            job,
            trigger=trigger,
            results=results,
            again=again,
            by_id=by_id,
            note=reason,
            at=at,
            start_first=start_first,
        )
        if started:
            trail.record(action, user=by_id, job=job_id, target=target, via=via, at=at)
        return started


def run_job_now(
    *,
    job_id: int,
    by_id: int | None,
    overrides: dict[str, dict[str, object]] | None = None,
    via: str = trail.Via.WEB,
    at: dt.datetime | None = None,
) -> bool:
    """Run now: the job runs at once, whatever its status but running.

    ``overrides`` ({task key: {parameter: value}}) are for this run only: each task's
    parameters with them must pass its process's parameter form; the stored parameters do not
    change, the run records what it ran with, and its attempts use them (the claim reads
    ``run_parameters``). A finished job runs from scratch; a Waiting or Withhold job runs its
    tasks as they are (one skipped for the next run stays skipped). A recurring job keeps its
    next occurrence and its remaining runs; for a one-off job this is its run.
    Raises Refused (nothing changed); False when another request changed the job first.
    """
    at = at or now()
    with transaction.atomic():
        job = _lock_job(job_id)
        if job.status in RUNNING_STATUSES:
            raise Refused(f"Job {job_id} is {job.get_status_display()}: it is running already.")
        tasks = {t.key: t for t in BatchTask.objects.filter(job_id=job_id)}
        if not tasks:
            raise Refused(f"Job {job_id} has no tasks: there is nothing to run.")
        params, shown, changes = _clean_overrides(job_id, tasks, overrides or {}, by_id=by_id)
        if job.status in TERMINAL_JOB_STATUSES:
            again = {t.pk for t in tasks.values()}
        else:
            again = {t.pk for t in tasks.values() if t.status not in (S.WAITING, S.SKIPPED)}
        started = _start_manual_run(
            job,
            trigger=Trigger.RUN_NOW,
            results=None,
            again=again,
            by_id=by_id,
            note="Run now" + (" with parameter overrides" if shown else ""),
            at=at,
            overrides=params,
            shown_overrides=shown,
        )
        if started:
            trail.record(
                trail.Action.RUN_NOW,
                user=by_id,
                job=job_id,
                target="job",
                changes=changes,
                via=via,
                at=at,
            )
        return started


def _clean_overrides(
    job_id: int,
    tasks: dict[str, BatchTask],
    overrides: dict[str, dict[str, object]],
    *,
    by_id: int | None,
) -> tuple[dict[int, dict[str, object]], dict[str, dict[str, object]], dict[str, list[object]]]:
    """Validate Run now's overrides with each task's parameter form, and that ``by_id`` may run
    the process whose parameters they change (a manager's line in a Batch user's job keeps
    the parameters the manager gave it).

    Returns the parameters each overridden task runs with (by task id), the overrides as
    cleaned (by key, only values that differ from the stored ones) and the audit's changes.
    """
    by = get_user_model().objects.filter(pk=by_id).first() if by_id and overrides else None
    params: dict[int, dict[str, object]] = {}
    shown: dict[str, dict[str, object]] = {}
    changes: dict[str, list[object]] = {}
    for key, values in overrides.items():
        task = tasks.get(key)
        if task is None:
            raise Refused(f"Job {job_id} has no task {key!r}.")
        if not values:
            continue
        try:
            process = registry.get(task.process)
            access.check_processes(by, [task.process])
            cleaned = process.clean_parameters({**(task.parameters or {}), **values})
        except (
            registry.UnknownProcess,
            registry.ParameterError,
            registry.ProcessNotAllowed,
        ) as exc:
            raise Refused(f"Task {key}: {exc}") from None
        differ = {n: cleaned[n] for n in values if cleaned.get(n) != (task.parameters or {}).get(n)}
        if differ:
            params[task.pk] = cleaned
            shown[key] = differ
            for name, value in differ.items():
                changes[f"{key}.{name}"] = [(task.parameters or {}).get(name), value]
    return params, shown, changes


def _end_manual_run(job: BatchJob, *, final: BatchStatus, at: dt.datetime) -> None:
    """A manual run ended: its parameter overrides are over, and a recurring job goes back to
    the schedule it interrupted (Waiting at the same next start, or Withhold): no occurrence
    missed or used up. If that start passed meanwhile, the tick starts it as any late start
    (the job's missed-runs policy decides). Any other job keeps the run's final status."""
    BatchTask.objects.filter(job_id=job.pk).exclude(run_parameters=None).update(run_parameters=None)
    done = {"manual_run": False, "return_status": "", "return_start": None}
    back = job.return_status
    if back not in (S.WAITING, S.WITHHOLD):
        BatchJob.objects.filter(pk=job.pk).update(**done)
        return
    start = job.return_start or at
    n = BatchJob.objects.filter(pk=job.pk, status=final).update(
        status=back, scheduled_start=start, **done
    )
    if n != 1:
        return
    _reset_tasks(job.pk)
    if back == S.WAITING and job.is_trigger_only():
        reason = f"Back to Waiting: it runs after the next run of job {job.after_job_id}"
    elif back == S.WAITING:
        recurring = job.get_recurrence()
        zone = recurring.rule().tz if recurring is not None else dt.UTC
        when = clock.format_when(start.astimezone(zone), "tz")
        reason = f"Back to its schedule after the manual run: next run {when}"
    else:
        reason = "Back to Withhold, as before the manual run"
    _record(job.pk, final, BatchStatus(back), run_id=job.current_run_id, reason=reason, at=at)


# --- The engine's moves -------------------------------------------------------------------


def start_job(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """Waiting -> Executing once the scheduled start has passed: open a run, release roots.

    Not yet, and False, when the job must wait instead: a late recurring job that skips missed
    runs moves on to its next occurrence, and a job outside its active period waits for the
    period to open (its scheduled start moves there, so the tick does not look at it again).
    """
    at = at or now()
    with transaction.atomic():
        job = _job_for_start(job_id)
        if job is None or job.status != S.WAITING or job.scheduled_start > at:
            return False
        recurring = job.get_recurrence()
        # What due() leaves out (the tick chose this job through it; a caller may not have).
        if (recurring is not None and recurring.is_paused()) or job.is_trigger_only():
            return False
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
        started = _open_run(job, recurring, scheduled, at=at)
        if started is None:
            return False  # not due, or another beat started it first
        _run_id, tasks = started
        if recurring is not None:
            BatchRecurrence.objects.filter(pk=recurring.pk).update(
                runs=F("runs") + 1,
                overlap_at=_overlap_at(job, recurring, scheduled),
                overlap_canceled=False,
            )
        roots: list[tuple[int, str, int]] = []
        decided: list[int] = []
        for pk, code, status in tasks:
            if status == S.WAITING:
                roots.append(
                    (pk, code, priority.task_step(code, job.priority, job.priority_overridden))
                )
            else:
                decided.append(pk)
        _make_ready(roots, at=at)
        # The skipped tasks' waiting dependents are decided now, as if they had just ended.
        released = _release_dependents(decided, at=at)
        if not roots and not released:
            _settle_job_if_done(job_id, at=at)  # a job without tasks (left) ends at once
        return True


def _job_for_start(job_id: int) -> BatchJob | None:
    """The job with its recurrence (its active period, rarer, loads when asked)."""
    if not sql.POSTGRESQL:
        return (
            BatchJob.objects.select_related("recurrence", "active_period").filter(pk=job_id).first()
        )
    row = sql.fetchone(sql.JOB_FOR_START, [job_id])
    return _job_from_row(row) if row is not None else None


def _job_from_row(values: Sequence[Any]) -> BatchJob:
    """A job and its recurrence from a hand-written row: BatchJob's columns, then
    BatchRecurrence's (NULLs when it has none), as lib/fastload.py reads them."""
    split = fastload.width(BatchJob)
    job = fastload.instance(BatchJob, values[:split])
    rec = values[split:]
    recurring = fastload.instance(BatchRecurrence, rec) if rec[0] is not None else None
    # As select_related leaves them: job.recurrence answers without a query, None included.
    BatchJob.recurrence.related.set_cached_value(job, recurring)
    if recurring is not None:
        BatchRecurrence.job.field.set_cached_value(recurring, job)
    return job


def _open_run(
    job: BatchJob, recurring: BatchRecurrence | None, scheduled: dt.datetime, *, at: dt.datetime
) -> tuple[int, list[tuple[int, str, str]]] | None:
    """Waiting -> Executing with a new run and its status change. Returns the run's id and the
    tasks start_job goes on with, (id, group code, status): the roots (Waiting, without
    conditions) and the tasks skipped for this run before it started (decided already). None:
    the job was no longer Waiting at the start it was read with (another beat started it).

    On PostgreSQL one statement (sql.START_JOB): the tick starts hundreds of jobs in a burst.
    """
    occurrence = scheduled if recurring is not None else None
    if sql.POSTGRESQL:
        adapt = connection.ops.adapt_datetimefield_value
        rows = sql.fetchall(
            sql.START_JOB,
            {
                "job": job.pk,
                "was": adapt(job.scheduled_start),
                "scheduled": adapt(scheduled),
                "at": adapt(at),
                "occurrence": adapt(occurrence),
                "run_by": job.effective_run_as_id(),
                "trigger": BatchJobRun.Trigger.SCHEDULED,
                "executing": S.EXECUTING,
                "waiting": S.WAITING,
                "decided": list(DECIDED_TASK_STATUSES),
            },
        )
        if not rows:
            return None
        return rows[0][0], [(pk, code, status) for _, pk, code, status in rows if pk is not None]
    # On the job's own columns only: an UPDATE through due()'s joins becomes
    # "WHERE id IN (subquery)", which a second beat's UPDATE, waiting on the row lock,
    # does not re-check after the first commits: both started the job (two runs).
    n = BatchJob.objects.filter(
        pk=job.pk,
        status=S.WAITING,
        scheduled_start=job.scheduled_start,
        scheduled_start__lte=at,
    ).update(
        status=S.EXECUTING,
        scheduled_start=scheduled,
        started_at=at,
        ended_at=None,
        canceled_by=None,
    )
    if n != 1:
        return None
    run = BatchJobRun.objects.create(
        job=job,
        status=S.EXECUTING,
        scheduled_start=scheduled,
        started_at=at,
        run_by_id=job.effective_run_as_id(),
        occurrence=occurrence,
    )
    BatchJob.objects.filter(pk=job.pk).update(current_run=run)
    _record(job.pk, S.WAITING, S.EXECUTING, run_id=run.pk, at=at)
    tasks: list[tuple[int, str, str]] = []
    seen: set[int] = set()
    for pk, code, status in (
        BatchTask.objects.filter(job_id=job.pk)
        .filter(Q(status=S.WAITING, conditions__isnull=True) | Q(status__in=DECIDED_TASK_STATUSES))
        .values_list("pk", "group__code", "status")
    ):
        if pk not in seen:  # once per condition a decided task has (the join)
            seen.add(pk)
            tasks.append((pk, code, status))
    return run.pk, tasks


def _overlap_at(
    job: BatchJob, recurring: BatchRecurrence, scheduled: dt.datetime
) -> dt.datetime | None:
    """Overlap "cancel_running": when the run starting now must give way to the next one (the
    occurrence after the one it stands for); None for the other policies."""
    if recurring.overlap != BatchRecurrence.Overlap.CANCEL_RUNNING:
        return None
    try:
        return recurring.rule().next_after(scheduled, runs_done=recurring.runs + 1)
    except recurrence.RuleError:
        log.exception("Batch job %s: invalid recurrence, no overlap check", job.pk)
        return None


def cancel_for_overlap(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """Overlap "cancel_running" (beyond D365): the next occurrence came while this run still
    executes. Cancel the run, with the reason in the status history, and mark it so that its
    settling starts the next run at once (_schedule_next_run). False when the run ended or was
    canceled meanwhile, or the recurrence changed or is paused."""
    at = at or now()
    with transaction.atomic():
        job = _lock_job(job_id)
        recurring = job.get_recurrence()
        if (
            job.status != S.EXECUTING
            or job.manual_run
            or recurring is None
            or recurring.overlap != BatchRecurrence.Overlap.CANCEL_RUNNING
            or recurring.overlap_at is None
            or recurring.overlap_at > at
            or recurring.is_paused()
        ):
            return False
        came = clock.format_when(recurring.overlap_at.astimezone(recurring.rule().tz), "tz")
        BatchRecurrence.objects.filter(pk=recurring.pk).update(
            overlap_at=None, overlap_canceled=True
        )
        return cancel_job(
            job_id=job_id,
            by_id=None,
            reason=f"Overlap policy: the occurrence of {came} came while this run still "
            "executed; canceled to start it.",
            at=at,
        )


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
        if recurring is None:
            return False
        following = recurring.next_occurrence(at, inclusive=True)
        if following is None:
            return False
        if job.is_running():
            # A manual run goes back to the schedule it interrupted: the new one, then.
            n = BatchJob.objects.filter(pk=job_id, manual_run=True, return_status=S.WAITING).update(
                return_start=following
            )
            return n == 1
        n = BatchJob.objects.filter(pk=job_id, status=job.status).update(scheduled_start=following)
        return n == 1


# --- Pausing a recurrence (issue 14, item 6) -----------------------------------------------

PAUSE_REASON_MAX = BatchRecurrence._meta.get_field("pause_reason").max_length or 500


def pause_recurrence(
    *,
    job_id: int,
    by_id: int | None,
    reason: str,
    until: dt.datetime | None = None,
    via: str = trail.Via.WEB,
    at: dt.datetime | None = None,
) -> bool:
    """Pause a recurring job: the tick starts no run until it is resumed, by hand or at
    ``until``. A run in progress finishes; the job's status and next start stay as they are.

    Refused (nothing changed) without a recurrence, without a reason, with an ``until`` that
    has passed, or when it is paused already. The audit entry is written in the same
    transaction.
    """
    at = at or now()
    reason = reason.strip()
    if not reason:
        raise Refused("Give a reason to pause a recurrence: it is shown with the job.")
    if len(reason) > PAUSE_REASON_MAX:
        raise Refused(f"The reason is longer than {PAUSE_REASON_MAX} characters.")
    if until is not None and until <= at:
        raise Refused(f"Paused until {clock.format_when(until, 'tz')}: that time has passed.")
    with transaction.atomic():
        job = _lock_job(job_id)
        recurring = job.get_recurrence()
        if recurring is None:
            raise Refused(f"Job {job_id} has no recurrence to pause.")
        if recurring.is_paused():
            raise Refused(f"Job {job_id}: {recurring.pause_note()}. Resume it first.")
        n = BatchRecurrence.objects.filter(pk=recurring.pk, paused_at=None).update(
            paused_at=at, paused_by_id=by_id, pause_reason=reason, paused_until=until
        )
        if n != 1:
            return False
        trail.record(
            trail.Action.RECURRENCE_PAUSE,
            user=by_id,
            job=job_id,
            target=f"batch job {job_id}",
            changes={"Paused until": [None, until.isoformat() if until else "resumed by hand"]},
            reason=reason,
            via=via,
            at=at,
        )
    return True


def resume_recurrence(
    *,
    job_id: int,
    by_id: int | None,
    via: str = trail.Via.WEB,
    at: dt.datetime | None = None,
    automatic: bool = False,
) -> bool:
    """Resume a paused recurrence (by hand, or by the tick at its ``paused_until``).

    1. Clear the pause (conditional: a second resume finds nothing paused and returns False).
    2. A Waiting job whose start passed while paused is not run for the occurrences it missed:
       they are recorded as missed ("paused") and the job moves to its first occurrence from
       now; with none left, the recurrence is over and the job is withheld.
    3. The audit entry, in the same transaction.
    """
    at = at or now()
    with transaction.atomic():
        job = _lock_job(job_id)
        recurring = job.get_recurrence()
        if recurring is None or not recurring.is_paused():
            if automatic:
                return False  # another beat resumed it first
            raise Refused(f"Job {job_id}'s recurrence is not paused.")
        note = recurring.pause_note()
        n = BatchRecurrence.objects.filter(pk=recurring.pk, paused_at=recurring.paused_at).update(
            paused_at=None, paused_by=None, pause_reason="", paused_until=None
        )
        if n != 1:
            return False
        if job.status == S.WAITING and job.scheduled_start < at:
            _catch_up_after_pause(job, recurring, at=at)
        trail.record(
            trail.Action.RECURRENCE_RESUME,
            user=by_id,
            job=job_id,
            target=f"batch job {job_id}",
            changes={"Paused": [note, None]},
            reason="Resumed at the date set when it was paused." if automatic else "",
            via=via,
            at=at,
        )
    return True


def _catch_up_after_pause(job: BatchJob, recurring: BatchRecurrence, *, at: dt.datetime) -> None:
    try:
        rule = recurring.rule()
        _record_missed(
            job,
            rule.span(job.scheduled_start, at - _TINY, limit=MISSED_COUNT_LIMIT),
            MissedOccurrence.Reason.PAUSED,
        )
        following = recurring.next_occurrence(at, inclusive=True)
    except recurrence.RuleError:
        log.exception("Batch job %s: invalid recurrence, resumed as it was", job.pk)
        return
    if following is not None:
        _move_start(job, following)
        return
    n = BatchJob.objects.filter(pk=job.pk, status=S.WAITING).update(status=S.WITHHOLD)
    if n == 1:
        _record(job.pk, S.WAITING, S.WITHHOLD, reason="Recurrence over while it was paused.", at=at)


def claim_task(
    *,
    task_id: int,
    server_id: int | None,
    hostname: str,
    at: dt.datetime | None = None,
    limit_checked: bool = False,
    celery_task_id: str = "",
) -> Claim | None:
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
        row = sql.fetchone(
            sql.CLAIM_PG,
            [*claim_params, task_id, S.EXECUTING, server_id, hostname, adapt(at), celery_task_id],
        )
        if row is None:
            return (
                None
                if limit_checked
                else _claim_limited(task_id, server_id, hostname, at, celery_task_id)
            )
        run_id, job_run_id, job_id, attempt, key, process, parameters, company_id = row[:8]
        time_limit, run_as_id = row[8:]
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
            job_id, attempt, key, process, parameters, company_id, time_limit, run_as_id = row[:8]
            ready_at = row[8]
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
                    ready_at,
                    job_id,
                ],
            )
            run_id, job_run_id = cursor.fetchone()
    return Claim(
        pk=run_id,
        job_run_id=job_run_id,
        task=ClaimedTask(
            pk=task_id,
            job_id=job_id,
            key=key,
            process=process,
            parameters=json.loads(parameters) if isinstance(parameters, str) else parameters,
            company_id=company_id,
            time_limit=time_limit,
            run_as_id=run_as_id,
        ),
        attempt=attempt,
        server_id=server_id,
        hostname=hostname,
        started_at=at,
        celery_task_id=celery_task_id,
    )


@dataclass(slots=True)
class ClaimedTask:
    """What the runner needs of a claimed task (no model instance: built once per task)."""

    pk: int
    job_id: int
    key: str
    process: str
    parameters: Any
    company_id: int | None
    time_limit: int | None
    run_as_id: int | None  # the job's Run by, else its creator; None: a system job


@dataclass(slots=True)
class Claim:
    """A won claim: the new attempt's history row (BatchTaskRun) and its task, as plain data."""

    pk: int
    job_run_id: int | None
    task: ClaimedTask
    attempt: int
    server_id: int | None
    hostname: str
    started_at: dt.datetime
    celery_task_id: str


def _claim_limited(
    task_id: int, server_id: int | None, hostname: str, at: dt.datetime, celery_task_id: str
) -> Claim | None:
    """The claim of a task whose group has a max concurrency or reserved capacity (or of a
    task no longer Ready).

    D365 Max concurrency: N = at most N tasks of each job run at once in the group, -1 = the
    group is paused. Under the job's row lock (which finish_task takes too) two workers claiming
    tasks of one job are serialised, so the count of running tasks is exact. A refused task
    stays Ready without a message (held) until a task of its job finishes or the tick sends it.

    Maximum running tasks: at most N tasks of the group run at once, all jobs together. The
    claim takes the group's row lock (after the job's) and counts the group's running tasks.

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
        status, due, job_id, group_id, limit, reserved, task_priority, cap = cursor.fetchone()
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
        if cap != NO_LIMIT:
            # Maximum running tasks of the group: every job's claims in the group queue on the
            # group's row, so the count is exact however many workers claim at once.
            cursor.execute(sql.LOCK_GROUP + sql.for_update(), [group_id])
            cursor.execute(sql.GROUP_RUNNING, [group_id, *RUNNING_STATUSES])
            (in_group,) = cursor.fetchone()
            if in_group >= cap:
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

    Call it outside a transaction (the runner does): a successful attempt's finish commits on
    its own, before the check that decides whether its job ended (_decide_what_follows says
    why that order matters when the last tasks of a job finish at once).
    """
    at = at or now()
    adapt = connection.ops.adapt_datetimefield_value
    log = list(log)
    if sql.POSTGRESQL and not outcome.error:
        # Most attempts end well: settle those in one statement, without the job's lock
        # (sql.FINISH_ENDED), and take the lock only when something follows.
        row = sql.fetchone(
            sql.FINISH_ENDED,
            {
                "ended": S.ENDED,
                "at": adapt(at),
                "task": task_id,
                "attempt": attempt,
                "executing": S.EXECUTING,
                "waiting": S.WAITING,
            },
        )
        if row is not None:
            if log:
                BatchLogEntry.objects.bulk_create(log)
            job_id, has_dependents = row
            if (
                has_dependents
                or not sql.fetchone(sql.JOB_OPEN, [job_id, list(OPEN_TASK_STATUSES)])[0]
            ):
                _decide_what_follows(job_id, task_id, has_dependents, at=at)
            return True
    with transaction.atomic(), connection.cursor() as cursor:
        # Serialise the finishes of one job: the last one must see all the others.
        (job_id,) = sql.fetchone(sql.LOCK_JOB + sql.for_update(), [task_id])
        cursor.execute(sql.TASK_STATE, [task_id])
        task_attempt, status, retries, max_retries, group_id, limit, cap = cursor.fetchone()
        if task_attempt != attempt or status not in RUNNING_STATUSES:
            return False
        if cap:
            # Maximum running tasks: the group's lock before any task row is written (job, then
            # group, then tasks: the claim's order), for release_group_held below.
            cursor.execute(sql.LOCK_GROUP + sql.for_update(), [group_id])
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
                # The runner cleaned and cut them (engine/runner.py); again here, for every
                # caller: one NUL would fail this statement, and with it the whole finish.
                text.storable(outcome.error, settings.BATCH_ERROR_MAX_CHARS),
                text.storable(outcome.traceback, settings.BATCH_TRACEBACK_MAX_CHARS),
                task_id,
                attempt,
                S.EXECUTING,
            ],
        )
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
            _release_slot(job_id=job_id, group_id=group_id, limit=limit, cap=cap, at=at)
            return True
        cursor.execute(sql.FINISH_TASK, [new, adapt(at), task_id])
        _release_slot(job_id=job_id, group_id=group_id, limit=limit, cap=cap, at=at)
        cursor.execute(sql.WHAT_FOLLOWS, [task_id, S.WAITING, job_id, *OPEN_TASK_STATUSES])
        has_dependents, has_open = cursor.fetchone()
        _what_follows(job_id, task_id, has_dependents, has_open, at=at)
    return True


def _decide_what_follows(
    job_id: int, task_id: int, has_dependents: bool, *, at: dt.datetime
) -> None:
    """After a task ended by sql.FINISH_ENDED (committed, without the lock): release its
    waiting dependents, or settle its job when no task is open.

    The release takes no lock either. It reads the dependents' conditions after this finish
    committed, so of two parents ending at once the one reading second sees both ends; its
    moves are conditional and return what they moved, so a dependent both decide is sent
    once (``_make_ready``). The settle takes the job's lock, after a new look for open tasks.
    """
    if has_dependents:
        with transaction.atomic():  # its messages go when the release commits
            if _release_dependents([task_id], at=at):
                return  # a dependent made Ready keeps the job open
        if sql.fetchone(sql.JOB_OPEN, [job_id, list(OPEN_TASK_STATUSES)])[0]:
            return
    with transaction.atomic():
        sql.fetchone(sql.LOCK_JOB + sql.for_update(), [task_id])
        _settle_job_if_done(job_id, at=at)


def _what_follows(
    job_id: int, task_id: int, has_dependents: bool, has_open: bool, *, at: dt.datetime
) -> None:
    """After a task settled, under its job's lock: release its dependents, settle its job."""
    # The common case (no dependents, other tasks still open) ends here.
    released = _release_dependents([task_id], at=at) if has_dependents else 0
    # A dependent made Ready keeps the job open: no need to look.
    if not released and (has_dependents or not has_open):
        _settle_job_if_done(job_id, at=at, none_open=not has_dependents and not has_open)


def _release_slot(*, job_id: int, group_id: int, limit: int, cap: int, at: dt.datetime) -> None:
    """A task stopped running: the next held task of its job (max concurrency) or of its group
    (maximum running tasks) goes now, not at the next tick. The caller holds the job's lock,
    and the group's when ``cap``."""
    if limit > 0:
        limits.release_held(job_id=job_id, group_id=group_id, limit=limit, at=at)
    if cap > 0:
        limits.release_group_held(group_id=group_id, cap=cap, job_limit=limit, at=at, locked=True)


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


def _release_dependents(parent_ids: list[int], *, at: dt.datetime) -> int:
    """Move waiting dependents of ``parent_ids`` to Ready or Didn't run, transitively.

    Returns how many became Ready.
    """
    made_ready = 0
    while parent_ids:
        rows = _waiting_dependents(parent_ids)
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
        made_ready += _make_ready(ready, at=at)
        if not_run:
            if sql.POSTGRESQL:
                rows = sql.fetchall(
                    sql.MAKE_NOT_RUN,
                    [S.NOT_RUN, connection.ops.adapt_datetimefield_value(at), not_run, S.WAITING],
                )
                not_run = [pk for (pk,) in rows]  # another release may have decided some
            else:
                BatchTask.objects.filter(pk__in=not_run, status=S.WAITING).update(
                    status=S.NOT_RUN, ended_at=at
                )
        # A Didn't run parent decides its own dependents in turn.
        parent_ids = not_run
    return made_ready


def _waiting_dependents(parent_ids: list[int]) -> Iterable[tuple[Any, ...]]:
    """Every condition of every waiting dependent of ``parent_ids``, in one query: (task id,
    its condition type, its group's code, the expected status, the parent's status, the job's
    priority and whether it overrides its groups'). The job's priority rides along (a join,
    not a query) for the message's step."""
    if sql.POSTGRESQL:  # once per released task: hand-written and prepared (sql.py says why)
        if len(parent_ids) == 1:
            return sql.fetchall(sql.WAITING_DEPENDENTS_OF_ONE, [parent_ids[0], S.WAITING])
        return sql.fetchall(sql.WAITING_DEPENDENTS, [parent_ids, S.WAITING])
    waiting = BatchTaskCondition.objects.filter(
        depends_on_id__in=parent_ids, task__status=S.WAITING
    ).values("task_id")
    return BatchTaskCondition.objects.filter(task_id__in=waiting).values_list(
        "task_id",
        "task__condition_type",
        "task__group__code",
        "expected_status",
        "depends_on__status",
        "task__job__priority",
        "task__job__priority_overridden",
    )


def _set_ready(ids: list[int], *, at: dt.datetime, sent: bool) -> set[int]:
    """Waiting -> Ready; ``sent``: a message goes now (else held: no dispatch time). Returns
    the tasks moved (on SQLite, whose single writer leaves no race: all of them)."""
    if not ids:
        return set()
    if sql.POSTGRESQL:
        stamp = connection.ops.adapt_datetimefield_value(at)
        one = len(ids) == 1
        rows = sql.fetchall(
            sql.MAKE_READY_ONE if one else sql.MAKE_READY,
            [S.READY, stamp, stamp if sent else None, ids[0] if one else ids, S.WAITING],
        )
        return {pk for (pk,) in rows}
    BatchTask.objects.filter(pk__in=ids, status=S.WAITING).update(
        status=S.READY, ready_at=at, dispatched_at=at if sent else None
    )
    return set(ids)


def _make_ready(tasks: list[tuple[int, str, int]], *, at: dt.datetime) -> int:
    """Waiting -> Ready and send each a "start this now" message once the transaction commits.
    Returns how many it moved (a task another release moved first is not sent twice).

    ``tasks``: (task id, group code, priority step of its message, see priority.py).
    """
    if not tasks:
        return 0
    ids = [tid for tid, _, _ in tasks]
    group_limits = limits.cached_limits()  # per-process cache: no query for unlimited groups
    caps = limits.cached_caps()
    held_moved: set[int] = set()
    if any(code in group_limits or code in caps for _, code, _ in tasks):
        tasks, held = _apply_limits(tasks, group_limits, caps)
        # Max concurrency of the group: these stay Ready without a message (held).
        held_moved = _set_ready(held, at=at, sent=False)
        ids = [tid for tid, _, _ in tasks]
    moved = _set_ready(ids, at=at, sent=True)
    dispatch.send_on_commit(
        [(tid, QUEUE_PREFIX + code, step) for tid, code, step in tasks if tid in moved]
    )
    return len(moved) + len(held_moved)


def _apply_limits(
    tasks: list[tuple[int, str, int]], group_limits: dict[str, int], caps: dict[str, int]
) -> tuple[list[tuple[int, str, int]], list[int]]:
    """Split tasks becoming Ready into those sent now and those held by their group's limit
    (max concurrency per job, then the group's maximum running tasks)."""
    job_ids = dict(
        BatchTask.objects.filter(
            pk__in=[tid for tid, code, _ in tasks if code in group_limits or code in caps]
        ).values_list("pk", "job_id")
    )
    candidates = [
        limits.Candidate(tid, job_ids.get(tid, 0), code, group_limits.get(code, 0))
        for tid, code, _ in tasks
    ]
    allowed = {c.task_id for c in limits.capped(limits.dispatchable(candidates), caps)}
    return [t for t in tasks if t[0] in allowed], [t[0] for t in tasks if t[0] not in allowed]


def _settle_job_if_done(job_id: int, *, at: dt.datetime, none_open: bool = False) -> bool:
    """Give a running job its final status once none of its tasks is open (caller holds the
    job lock). ``none_open``: the caller has just seen that no task is open."""
    if sql.POSTGRESQL:
        settled = _settle_pg(job_id, at=at)
    else:
        settled = _settle_orm(job_id, at=at, none_open=none_open)
    if settled is None:
        return False
    job, final, followed = settled
    # Alerts (alerts/apps.py) take their snapshot (failing tasks, first error lines) here,
    # in this transaction, before the history may go.
    signals.job_settled.send(BatchJob, job=job, run_id=job.current_run_id, final=final, at=at)
    history.apply_save_policy(job, run_id=job.current_run_id, final=final)
    recurring = job.get_recurrence()
    overlap_canceled = recurring is not None and recurring.overlap_canceled
    if recurring is not None and (recurring.overlap_at or overlap_canceled):
        # The overlap check was for this run only.
        BatchRecurrence.objects.filter(pk=recurring.pk).update(
            overlap_at=None, overlap_canceled=False
        )
    if job.manual_run:
        _end_manual_run(job, final=final, at=at)
    elif final != S.CANCELED or overlap_canceled:
        _schedule_next_run(job, final=final, at=at)
    if followed:
        _queue_followers(job, run_id=job.current_run_id, final=final, at=at)
    return True


def _settle_pg(job_id: int, *, at: dt.datetime) -> tuple[BatchJob, BatchStatus, bool] | None:
    """The settle's writes in one statement (sql.SETTLE_JOB_PG): the job (as it was, with its
    recurrence), its final status, and whether _queue_followers has anything to do."""
    row = sql.fetchone(
        sql.SETTLE_JOB_PG,
        {
            "at": connection.ops.adapt_datetimefield_value(at),
            "job": job_id,
            "open": list(OPEN_TASK_STATUSES),
            "canceling": S.CANCELING,
            "canceled": S.CANCELED,
            "error": S.ERROR,
            "ended": S.ENDED,
            "executing": S.EXECUTING,
        },
    )
    if row is None:
        return None
    final, has_followers, has_pending = row[:3]
    return _job_from_row(row[3:]), S(final), has_followers or has_pending


def _settle_orm(
    job_id: int, *, at: dt.datetime, none_open: bool
) -> tuple[BatchJob, BatchStatus, bool] | None:
    """SQLite: what sql.SETTLE_JOB_PG does, in several statements."""
    if (
        not none_open
        and BatchTask.objects.filter(job_id=job_id, status__in=OPEN_TASK_STATUSES).exists()
    ):
        return None
    job = BatchJob.objects.select_related("recurrence").get(pk=job_id)
    if job.status not in RUNNING_STATUSES:
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            sql.SETTLE_JOB,
            {
                "at": connection.ops.adapt_datetimefield_value(at),
                "job": job_id,
                "canceling": S.CANCELING,
                "canceled": S.CANCELED,
                "error": S.ERROR,
                "ended": S.ENDED,
                "executing": S.EXECUTING,
            },
        )
        row = cursor.fetchone()
        if row is None:
            return None
        final = S(row[0])
        if job.current_run_id:
            BatchJobRun.objects.filter(pk=job.current_run_id).update(status=final, ended_at=at)
            cursor.execute(sql.RECORD_UNATTEMPTED, {"run": job.current_run_id, "job": job_id})
    _record(job_id, job.status, final, run_id=job.current_run_id, at=at)
    return job, final, True


# --- Queued runs: jobs that follow jobs, backfills ------------------------------------------


def _queue_followers(
    job: BatchJob, *, run_id: int | None, final: BatchStatus, at: dt.datetime
) -> None:
    """Owe a run to each job that follows this one on ``final``, in the settling transaction.

    1. A QueuedRun row per follower whose status matches: the durable outbox, so a worker
       that dies after this commit loses nothing (the tick starts what is owed).
    2. The unique (follower, parent run) constraint ignores a second settle of the same run.
    3. After the commit, the followers (and this job, when a backfill or trigger waits for it
       to end) start their next queued run at once; the tick is the safety net.
    """
    if run_id is not None and final != S.CANCELED:
        owed = [
            pk
            for pk, status in BatchJob.objects.filter(after_job_id=job.pk).values_list(
                "pk", "after_status"
            )
            if AfterStatus(status).matches(final)
        ]
        QueuedRun.objects.bulk_create(
            [
                QueuedRun(
                    job_id=pk,
                    kind=QueuedRun.Kind.TRIGGER,
                    after_job_id=job.pk,
                    after_run_id=run_id,
                    after_status=final,
                    created=at,
                )
                for pk in owed
            ],
            ignore_conflicts=True,
        )
    else:
        owed = []
    if QueuedRun.objects.pending().filter(job_id=job.pk).exists():
        owed.append(job.pk)
    if owed:
        transaction.on_commit(lambda: _start_queued_soon(owed))


def _start_queued_soon(job_ids: list[int]) -> None:
    # After the settle committed: a failure here costs a second, not a run (the tick retries).
    for job_id in job_ids:
        try:
            start_queued_run(job_id=job_id)
        except Exception:
            log.exception("Could not start the queued run of batch job %s now", job_id)


def backfill_job(
    *,
    job_id: int,
    first_day: dt.date,
    last_day: dt.date,
    by_id: int | None,
    only_last: bool = False,
    dry_run: bool = False,
    via: str = trail.Via.WEB,
    at: dt.datetime | None = None,
) -> list[dt.datetime]:
    """Backfill: queue one run per occurrence missed from ``first_day`` to ``last_day`` (or
    only the last of them), run one after the other, each recording the occurrence it stands
    for (jobs/backfill.py says what counts as missed). Returns the occurrences, oldest first;
    ``dry_run`` queues nothing (the preview). Raises Refused (nothing queued)."""
    at = at or now()
    with transaction.atomic():
        job = _lock_job(job_id)
        try:
            times = backfill.missed(job, first_day, last_day, at=at, only_last=only_last)
        except backfill.BackfillError as exc:
            raise Refused(str(exc)) from None
        if dry_run or not times:
            return times
        QueuedRun.objects.bulk_create(
            QueuedRun(
                job_id=job_id,
                kind=QueuedRun.Kind.BACKFILL,
                occurrence=t,
                requested_by_id=by_id,
                created=at,
            )
            for t in times
        )
        tz = job.recurrence.rule().tz
        trail.record(
            trail.Action.BACKFILL,
            user=by_id,
            job=job_id,
            target="job",
            changes={
                "Occurrences": [None, [clock.format_when(t.astimezone(tz), "tz") for t in times]]
            },
            reason=f"Backfill from {first_day} to {last_day}"
            + (" (only the last)" if only_last else ""),
            via=via,
            at=at,
        )
        transaction.on_commit(lambda: _start_queued_soon([job_id]))
        return times


def start_queued_run(*, job_id: int, at: dt.datetime | None = None) -> bool:
    """Start the job's oldest queued run, once the job is not running (its run-before ended).

    1. Under the job lock: a running job keeps its queued runs for later (one at a time).
    2. A trigger starts a Waiting job only: a held (Withhold) or finished job, or one that no
       longer follows that job, drops it with the reason. A backfill starts from any status
       but running, as Run now does.
    3. The run is a run of its own (_start_manual_run) that records why and, for a backfill,
       the occurrence; the job goes back to Waiting (or Withhold) when it ends.
    Returns whether a run started.
    """
    at = at or now()
    with transaction.atomic():
        job = BatchJob.objects.select_for_update().filter(pk=job_id).first()
        if job is None or job.status in RUNNING_STATUSES:
            return False
        for queued in QueuedRun.objects.pending().filter(job_id=job_id).order_by("pk"):
            if queued.kind == QueuedRun.Kind.TRIGGER:
                parent = f"run {queued.after_run_id} of job {queued.after_job_id}"
                status = BatchStatus(queued.after_status).label
                if job.after_job_id != queued.after_job_id:
                    QueuedRun.objects.filter(pk=queued.pk).update(
                        done_at=at,
                        note=f"Not started: the job no longer follows job {queued.after_job_id}.",
                    )
                    continue
                if job.status != S.WAITING:
                    QueuedRun.objects.filter(pk=queued.pk).update(
                        done_at=at,
                        note=f"Not started after {parent}: the job was {job.get_status_display()}.",
                    )
                    continue
                trigger, by_id, occurrence = Trigger.TRIGGERED, None, None
                note = f"After {parent} ({status})"
            else:
                trigger, by_id, occurrence = (
                    Trigger.BACKFILL,
                    queued.requested_by_id,
                    queued.occurrence,
                )
                recurring = job.get_recurrence()
                zone = recurring.rule().tz if recurring is not None else dt.UTC
                assert occurrence is not None
                note = "Backfill of the occurrence " + clock.format_when(
                    occurrence.astimezone(zone), "tz"
                )
            tasks = BatchTask.objects.filter(job_id=job_id)
            if job.status in TERMINAL_JOB_STATUSES:
                again = set(tasks.values_list("pk", flat=True))
            else:
                again = set(
                    tasks.exclude(status__in=(S.WAITING, S.SKIPPED)).values_list("pk", flat=True)
                )
            started = _start_manual_run(
                job,
                trigger=trigger,
                results=None,
                again=again,
                by_id=by_id,
                note=note,
                at=at,
                occurrence=occurrence,
            )
            if not started:
                return False
            run_id = BatchJob.objects.values_list("current_run_id", flat=True).get(pk=job_id)
            QueuedRun.objects.filter(pk=queued.pk).update(done_at=at, run_id=run_id)
            return True
        return False


def _schedule_next_run(job: BatchJob, *, final: BatchStatus, at: dt.datetime) -> bool:
    """D365: a recurring job goes back to Waiting after Ended and after Error, while its range
    lasts; the next start is the first occurrence after now. Occurrences that passed while it
    ran are recorded as missed and not replayed. (A canceled job stays Canceled, unless the
    overlap policy canceled it.) Beyond D365, the recurrence's overlap policy "buffer_one" or
    "cancel_running" runs the latest of those occurrences at once instead.
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
    rule = recurring.rule()
    started = max(job.started_at or at, job.scheduled_start)
    missed = rule.span(started + _TINY, at, limit=MISSED_COUNT_LIMIT)
    reason = "Recurrence: next run " + (
        clock.format_when(following.astimezone(rule.tz), "tz") if following else ""
    )
    if missed is not None and _runs_overlapping(recurring):
        # Overlap "buffer_one" / "cancel_running": the latest occurrence that came while the
        # job ran runs now (once, however many came); the ones before it were missed.
        reason = (
            f"Overlap policy: the occurrence of "
            f"{clock.format_when(missed.last.astimezone(rule.tz), 'tz')} came while the job "
            "ran; it runs now"
        )
        missed = rule.span(started + _TINY, missed.last - _TINY, limit=MISSED_COUNT_LIMIT)
        following = at
    elif following is None:
        return False  # the range is over: the job keeps its final status
    if sql.POSTGRESQL:
        # Once per run of every recurring job: the three writes below in one statement.
        adapt = connection.ops.adapt_datetimefield_value
        moved = sql.fetchone(
            sql.NEXT_RUN,
            {
                "job": job.pk,
                "final": final,
                "waiting": S.WAITING,
                "start": adapt(following),
                "run": job.current_run_id,
                "reason": reason,
                "at": adapt(at),
            },
        )
        if moved is None:
            return False
        _record_missed(job, missed, MissedOccurrence.Reason.RUNNING)
        return True
    n = BatchJob.objects.filter(pk=job.pk, status=final).update(
        status=S.WAITING, scheduled_start=following
    )
    if n != 1:
        return False
    _reset_tasks(job.pk)
    _record_missed(job, missed, MissedOccurrence.Reason.RUNNING)
    _record(job.pk, final, S.WAITING, run_id=job.current_run_id, reason=reason, at=at)
    return True


def _runs_overlapping(recurring: BatchRecurrence) -> bool:
    """Whether an occurrence that came during a run is run after it (overlap policy), while
    the recurrence has runs left and is not paused."""
    if recurring.overlap == BatchRecurrence.Overlap.SKIP or recurring.is_paused():
        return False
    return recurring.runs_left() != 0


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

"""The tick: the clock and safety net of the engine, run by beat every second.

Each step is a small handler over a bounded number of rows; every write goes through a
conditional transition, so overlapping ticks or two beats do no harm. Task-to-task release is
event driven (transitions.finish_task); the tick only starts due jobs, fails attempts whose
server is gone, sends messages for retries whose backoff is over, resends messages that were
lost, and settles anything an interrupted worker left behind.

No handler waits on a row lock another process holds (a worker frozen inside its finish
transaction holds its job's row for as long as it is stopped): the tick's statements give up
after BATCH_TICK_LOCK_TIMEOUT_SECONDS, and the row is left for the next tick while the others
go on. PostgreSQL then ends the frozen transaction (idle_in_transaction_session_timeout).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.utils.timezone import now
from redis.exceptions import RedisError

from batchadmin.audit import trail
from batchadmin.engine import counters, dispatch, limits, priority, signals, transitions
from batchadmin.jobs.models import (
    OPEN_TASK_STATUSES,
    RUNNING_STATUSES,
    BatchJob,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    QueuedRun,
)
from batchadmin.lib import broker, daterange, db, tracing
from batchadmin.servers.models import NO_LIMIT, PAUSED, QUEUE_PREFIX, Priority

log = logging.getLogger(__name__)
S = BatchStatus
TERMINAL_TASK_STATUSES = (S.ENDED, S.ERROR, S.NOT_RUN, S.SKIPPED, S.CANCELED)


# Until this time.monotonic(), no lease is failed: the tick could not reach the database a
# moment ago, so most likely the workers could not renew their leases either. They get one
# lease period after the outage to do so; a server that really died is failed after it.
_lease_grace_until = 0.0


def tick(at: dt.datetime | None = None) -> dict[str, int]:
    global _lease_grace_until
    try:
        return _tick(at)
    except db.BLIPS as exc:
        if db.busy(exc):  # a locked row, not a lost database: the leases are renewed as usual
            raise
        _lease_grace_until = time.monotonic() + settings.BATCH_LEASE_SECONDS
        raise


def _tick(at: dt.datetime | None) -> dict[str, int]:
    close_old_connections()  # beat is long-lived: drop a connection the database has closed
    at = at or now()
    with db.lock_timeout(settings.BATCH_TICK_LOCK_TIMEOUT_SECONDS):
        counts = {
            "withheld": handle_out_of_range_starts(),
            "resumed": handle_paused_until(at),
            "overlaps": handle_overlaps(at),
            "started": handle_due_jobs(at),
            "queued_started": handle_queued_runs(at),
            "leases_expired": handle_expired_leases(at),
            "overdue": handle_overdue_tasks(at),
            "dispatched": handle_ready_tasks(at),
            "resent": handle_lost_messages(at),
            "aged": handle_aging(at),
            "released": handle_stranded_tasks(),
            "settled": handle_stranded_jobs(at),
        }
        # Then what others hang on the tick (the alerts' checks, throttled; they never raise).
        for _receiver, more in signals.ticked.send(None, at=at):
            counts.update(cast(dict[str, int], more))
    return counts


def handle_out_of_range_starts() -> int:
    """Withhold waiting jobs whose scheduled start no input accepts (a row stored before the
    bounds, or by hand: lib/daterange.py). Such a job could never start (its start reads as
    an edge, not as stored), and would be due or looked at every second; withheld, the tick
    leaves it alone and the job's history says why. Both ends of job_due_idx's range."""
    bad = BatchJob.objects.filter(status=S.WAITING).filter(
        Q(scheduled_start__lt=daterange.EARLIEST_INSTANT)
        | Q(scheduled_start__gt=daterange.LATEST_INSTANT)
    )
    n = 0
    for job_id in bad.values_list("pk", flat=True)[: settings.BATCH_TICK_LIMIT]:
        if transitions.withhold_out_of_range(job_id=job_id):
            log.warning("Batch job %s: scheduled start out of range; withheld", job_id)
            n += 1
    return n


@contextmanager
def next_tick_if_busy(what: str) -> Iterator[None]:
    """A row another process holds locked (a worker finishing, or frozen while it did): leave
    ``what`` for the next tick rather than stop the tick's other rows and handlers."""
    try:
        yield
    except db.BLIPS as exc:
        if not db.busy(exc):
            raise
        log.warning("%s: a row it needs is locked by another process; next tick", what)


# Due jobs started in one transaction: one commit for the lot, and their first tasks share
# messages (dispatch.gathered). 1,000 small jobs released at once took 7-9 s to start one
# transaction each. Small enough that the first job's messages leave well within a second.
START_BATCH = 25


def handle_due_jobs(at: dt.datetime) -> int:
    """Start waiting jobs whose scheduled start has passed, highest effective priority first
    (the priority their tasks will run with), then the longest due."""
    due = (
        BatchJob.objects.due(at)
        .with_effective_priority()
        .order_by("-effective_priority", "scheduled_start", "pk")
    )
    ids = list(due.values_list("pk", flat=True)[: settings.BATCH_TICK_LIMIT])
    # Traced, each job's start is the root of its run's trace and its messages carry it: a
    # message shared by the tasks of several jobs could carry only one, so one at a time.
    size = 1 if tracing.recording() else START_BATCH
    started = 0
    for i in range(0, len(ids), size):
        batch = ids[i : i + size]
        if len(batch) > 1:
            try:
                with transaction.atomic(), dispatch.gathered():
                    started += sum(transitions.start_job(job_id=j, at=at) for j in batch)
                continue
            except Exception:
                # One job of the batch could not start (a row locked by a frozen worker, a
                # bad row): all of it rolled back. Each on its own, so the others start and
                # that one is logged with its reason.
                log.info("Starting %d due jobs together failed; one at a time", len(batch))
        started += sum(_start_job(job_id, at) for job_id in batch)
    return started


def _start_job(job_id: int, at: dt.datetime) -> bool:
    try:
        # The root of the run's trace (lib/tracing.py): its messages carry it to the workers.
        with (
            next_tick_if_busy(f"Starting batch job {job_id}"),
            tracing.span("batchadmin.job.start", job_id=job_id),
        ):
            return transitions.start_job(job_id=job_id, at=at)
    except Exception:
        # Crash-loop guard: one broken job must not stop the others from starting.
        log.exception("Could not start batch job %s", job_id)
    return False  # not started: failed, or left for the next tick (next_tick_if_busy)


def handle_paused_until(at: dt.datetime) -> int:
    """Resume paused recurrences whose "paused until" has come (recurrence_paused_until_idx),
    before the due jobs start, so a job due now starts in this same tick."""
    rows = BatchRecurrence.objects.filter(paused_until__lte=at).values_list("job_id", flat=True)
    resumed = 0
    for job_id in rows[: settings.BATCH_TICK_LIMIT]:
        try:
            resumed += transitions.resume_recurrence(
                job_id=job_id, by_id=None, via=trail.Via.SCHEDULER, at=at, automatic=True
            )
        except Exception:
            # Crash-loop guard: one broken row must not stop the tick.
            log.exception("Could not resume the recurrence of batch job %s", job_id)
    return resumed


def handle_overlaps(at: dt.datetime) -> int:
    """Overlap policy "cancel_running": cancel runs whose next occurrence has come
    (recurrence_overlap_at_idx); their settling starts the next run (transitions)."""
    rows = BatchRecurrence.objects.filter(overlap_at__lte=at, job__status=S.EXECUTING).values_list(
        "job_id", flat=True
    )
    canceled = 0
    for job_id in rows[: settings.BATCH_TICK_LIMIT]:
        try:
            canceled += transitions.cancel_for_overlap(job_id=job_id, at=at)
        except Exception:
            log.exception("Could not cancel batch job %s for its overlap policy", job_id)
    return canceled


def handle_queued_runs(at: dt.datetime) -> int:
    """Start the runs owed to jobs that are not running (a trigger, a backfill's next
    occurrence) that the settle's after-commit start did not: its worker died, or the job
    was busy then."""
    owed = (
        QueuedRun.objects.pending()
        .exclude(job__status__in=RUNNING_STATUSES)
        .order_by("job_id")
        .values_list("job_id", flat=True)
        .distinct()
    )
    started = 0
    for job_id in owed[: settings.BATCH_TICK_LIMIT]:
        try:
            started += transitions.start_queued_run(job_id=job_id, at=at)
        except Exception:
            log.exception("Could not start the queued run of batch job %s", job_id)  # next tick
    return started


def handle_expired_leases(at: dt.datetime) -> int:
    """Fail attempts whose batch server stopped renewing their lease (it died)."""
    if time.monotonic() < _lease_grace_until:
        return 0
    expired = (
        BatchTask.objects.running()
        .filter(lease_expires_at__lt=at)
        .values_list("pk", "attempt", "group__code", "started_at")
    )
    n = 0
    for task_id, attempt, group, started_at in expired[: settings.BATCH_TICK_LIMIT]:
        with next_tick_if_busy(f"Task {task_id} attempt {attempt}'s lost lease"):
            if transitions.expire_lease(task_id=task_id, attempt=attempt, at=at):
                log.warning("Task %s attempt %s: batch server lost", task_id, attempt)
                n += 1
                seconds = (at - started_at).total_seconds() if started_at else 0.0
                counters.task_finished(
                    task_id=task_id, status=S.ERROR, seconds=seconds, group=group
                )
    return n


def handle_overdue_tasks(at: dt.datetime) -> int:
    """Time limits and aborts: running attempts whose deadline has passed (task_deadline_idx).

    An attempt past its time limit is asked to stop; one still running a grace period after it
    was asked (by its time limit or a cancel) is aborted.
    """
    overdue = (
        BatchTask.objects.running()
        .filter(deadline_at__lt=at)
        .values_list("pk", "attempt", "status", "timed_out", "group__code", "started_at")
    )
    n = 0
    for task_id, attempt, status, timed_out, group, started_at in overdue[
        : settings.BATCH_TICK_LIMIT
    ]:
        try:
            with next_tick_if_busy(f"Task {task_id} attempt {attempt}'s time limit"):
                if status == S.EXECUTING and not timed_out:
                    if transitions.stop_for_time_limit(task_id=task_id, attempt=attempt, at=at):
                        log.warning("Task %s attempt %s: time limit exceeded", task_id, attempt)
                        n += 1
                elif transitions.abort_task(task_id=task_id, attempt=attempt, at=at):
                    log.warning(
                        "Task %s attempt %s: aborted after the grace period", task_id, attempt
                    )
                    n += 1
                    final = S.CANCELED if status == S.CANCELING else S.ERROR
                    seconds = (at - started_at).total_seconds() if started_at else 0.0
                    counters.task_finished(
                        task_id=task_id, status=final, seconds=seconds, group=group
                    )
        except Exception:
            log.exception("Could not stop task %s attempt %s", task_id, attempt)
    return n


def handle_ready_tasks(at: dt.datetime) -> int:
    """Send messages for ready tasks that have none yet: a retry whose backoff is over, or a
    task its group's max concurrency or maximum running tasks held back (limits.py) that may
    go now."""
    # Held tasks whose job is still at its limit, or whose group is paused, are left out in
    # SQL so that they do not crowd the others out of the tick's batch.
    taken = (
        BatchTask.objects.taking_slot()
        .filter(job=OuterRef("job"), group=OuterRef("group"))
        .order_by()
        .values("job")
        .annotate(n=Count("pk"))
        .values("n")
    )
    ready = BatchTask.objects.filter(
        status=S.READY, dispatched_at=None, ready_at__lte=at
    ).with_effective_priority()
    # Reserved capacity: groups whose shared threads are all taken send none of their other
    # tasks (left out in SQL, like the limits above); the rest send up to their room.
    reserved = [g.id for g in priority.group_settings().values() if g.reserved_capacity]
    room = priority.room(reserved, at)
    full = [gid for gid, n in room.items() if n <= 0]
    if full:
        ready = ready.exclude(Q(group_id__in=full) & ~Q(effective_priority=Priority.RESERVED))
    # Maximum running tasks: groups with no free slot send nothing (left out in SQL too).
    caps = limits.cached_caps()
    slots = limits.group_slots(caps)
    capped_full = [code for code, cap in caps.items() if slots.by_group[code] >= cap]
    if capped_full:
        ready = ready.exclude(group__code__in=capped_full)
    rows = list(
        ready.filter(
            Q(group__max_concurrency=NO_LIMIT)
            | Q(group__max_concurrency__gt=Coalesce(Subquery(taken), 0))
        )
        .order_by("-effective_priority", "ready_at", "position", "pk")
        .values_list(
            "pk",
            "job_id",
            "group__code",
            "group__max_concurrency",
            "group_id",
            "effective_priority",
            "ready_at",
        )[: settings.BATCH_TICK_LIMIT]
    )
    extra = {row[0]: row[4:] for row in rows}
    allowed = limits.capped(
        limits.dispatchable(
            [
                limits.Candidate(pk, job, code, limit, eff)
                for pk, job, code, limit, _, eff, _ in rows
            ]
        ),
        caps,
        slots,
    )
    send: list[tuple[int, str, int]] = []
    for c in allowed:
        group_id, eff, ready_at = extra[c.task_id]
        if group_id in room and eff != Priority.RESERVED:
            if room[group_id] <= 0:
                continue
            room[group_id] -= 1
        send.append((c.task_id, c.group, priority.step(eff, priority.waited(at, ready_at))))
    return _redispatch(send, at)


def handle_lost_messages(at: dt.datetime) -> int:
    """Resend messages of ready tasks that sat too long while their queue is empty.

    An empty queue with tasks still Ready means their messages are gone (Redis restarted
    without persistence, a publish failed). A message a worker holds unacked is not in the
    queue either, so such a task may get a second message; the claim makes that harmless.
    """
    stale = at - dt.timedelta(seconds=settings.BATCH_REDISPATCH_AFTER_SECONDS)
    # A paused group's claims refuse every task (it becomes held): no point resending.
    rows = (
        BatchTask.objects.filter(status=S.READY, dispatched_at__lt=stale)
        .exclude(group__max_concurrency=PAUSED)
        .with_effective_priority()
        .values_list("pk", "group__code", "effective_priority", "ready_at")[
            : settings.BATCH_TICK_LIMIT
        ]
    )
    by_group: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
    for pk, code, eff, ready_at in rows:
        by_group[code].append((pk, code, priority.step(eff, priority.waited(at, ready_at))))
    try:
        lost = [
            row
            for code, group_rows in by_group.items()
            if broker.queue_length(QUEUE_PREFIX + code) == 0
            for row in group_rows
        ]
    except (RedisError, OSError) as exc:
        # The broker is down: nothing could be re-sent anyway, and the handlers after this
        # one (stranded tasks and jobs, the alerts' checks) must not wait for Redis.
        log.warning("Could not read the queues to find lost messages: %s", exc)
        return 0
    return _redispatch(lost, at)


def handle_aging(at: dt.datetime) -> int:
    """Never starved: resend each waiting task's message one priority step higher every
    BATCH_PRIORITY_AGING_SECONDS (priority.py), until it reached the top step.

    Its earlier message stays in the queue; whichever delivery comes first claims the task and
    the other finds it no longer Ready.
    """
    aging = settings.BATCH_PRIORITY_AGING_SECONDS
    if aging <= 0:
        return 0
    period = dt.timedelta(seconds=aging)
    # Last sent below the top step: sent less than (base step) periods after it became ready.
    below_top = Q()
    for level, base in priority.STEPS.items():
        if base > 0:
            below_top |= Q(
                effective_priority=level, dispatched_at__lt=F("ready_at") + base * period
            )
    rows = (
        BatchTask.objects.filter(status=S.READY, dispatched_at__lte=at - period, ready_at__lte=at)
        .exclude(group__max_concurrency=PAUSED)
        .with_effective_priority()
        .filter(below_top)
        .order_by("ready_at", "pk")
        .values_list("pk", "group__code", "effective_priority", "ready_at")[
            : settings.BATCH_TICK_LIMIT
        ]
    )
    return _redispatch(
        [
            (pk, code, priority.step(eff, priority.waited(at, ready_at)))
            for pk, code, eff, ready_at in rows
        ],
        at,
    )


def _redispatch(rows: list[tuple[int, str, int]], at: dt.datetime) -> int:
    if not rows:
        return 0
    # Rows a finishing worker holds (it is making them Ready or holding them back) are left
    # for the next tick, which sees what that worker decided.
    with transaction.atomic():
        free = set(
            BatchTask.objects.select_for_update(skip_locked=True)
            .filter(pk__in=[row[0] for row in rows], status=S.READY)
            .values_list("pk", flat=True)
        )
        BatchTask.objects.filter(pk__in=free).update(dispatched_at=at)
    return dispatch.send([(pk, QUEUE_PREFIX + c, step) for pk, c, step in rows if pk in free])


def handle_stranded_tasks() -> int:
    """Release waiting tasks whose parents are all decided but which were left waiting.

    finish_task releases dependents in the same transaction, so this finds work only after
    a crash mid-way or a manual edit of the tables.
    """
    # Start from the few running jobs (partial index) so the cost does not grow with history.
    running = list(
        BatchJob.objects.filter(status=S.EXECUTING).values_list("pk", flat=True)[
            : settings.BATCH_TICK_LIMIT
        ]
    )
    if not running:
        return 0
    parents = (
        BatchTaskCondition.objects.filter(
            task__job_id__in=running,
            task__status=S.WAITING,
            depends_on__status__in=TERMINAL_TASK_STATUSES,
        )
        .values_list("depends_on__job_id", "depends_on_id")
        .distinct()[: settings.BATCH_TICK_LIMIT]
    )
    by_job: dict[int, list[int]] = defaultdict(list)
    for job_id, parent_id in parents:
        by_job[job_id].append(parent_id)
    released = 0
    for job_id, parent_ids in by_job.items():
        with next_tick_if_busy(f"Releasing the stranded tasks of batch job {job_id}"):
            released += transitions.release_stranded(job_id=job_id, parent_ids=parent_ids)
    return released


def handle_stranded_jobs(at: dt.datetime) -> int:
    """Settle running jobs none of whose tasks is open any more."""
    open_tasks = BatchTask.objects.filter(job=OuterRef("pk"), status__in=OPEN_TASK_STATUSES)
    stranded = BatchJob.objects.running().exclude(Exists(open_tasks))
    settled = 0
    for job_id in stranded.values_list("pk", flat=True)[: settings.BATCH_TICK_LIMIT]:
        with next_tick_if_busy(f"Settling batch job {job_id}"):
            settled += transitions.settle_stranded_job(job_id=job_id, at=at)
    return settled

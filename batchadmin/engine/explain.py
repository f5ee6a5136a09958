"""Why is this not running? Every waiting or ready task and every job that has not started
says why, in words (issue 5, item 7; D365's pitfall "jobs sit in Waiting and never start").

The explanation is a list of small rules, each a pure function of one task (or job) and a
``World``: what the page knows about batch servers, groups, queues and beat, loaded once per
page by ``world.load_world``. A page explains any number of tasks with a fixed number of queries and
at most one broker round trip per batch group; the rules themselves never query.

Scheduling controls are rules of their own, in TASK_RULES before ``threads_busy``: a paused
group (D365 Max concurrency -1), a job's concurrency limit and a group's maximum running tasks
(limits.py) and a group's reserved capacity (priority.py); after it, the higher-priority tasks
queued ahead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from django.conf import settings
from django.utils.timezone import localtime

from batchadmin.engine import beat, conditions, priority
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
)
from batchadmin.lib import clock, durations
from batchadmin.servers import coverage
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    Priority,
)

S = BatchStatus
Served = coverage.Served

# The tick starts a due job within about a second; after this long something is in the way.
DUE_GRACE = dt.timedelta(seconds=10)

INFO, WARN, DANGER = "info", "warn", "danger"


@dataclass(frozen=True)
class Reason:
    code: str  # stable name of the rule's finding, for tests and styling
    text: str
    level: str = INFO  # info: it will run by itself; warn / danger: someone must act


# --- What a page knows about the system ----------------------------------------------------


@dataclass
class ServerState:
    server: BatchServer
    online: list[BatchServerReplica]
    threads_now: int | None  # the schedule's maximum now; None: no schedule rows
    opens_at: dt.datetime | None = None  # when threads_now == 0: when a window opens

    @property
    def busy(self) -> int:
        return sum(r.busy for r in self.online)

    @property
    def threads(self) -> int:
        """Threads of the online replicas, each capped by the schedule's maximum."""
        cap = self.threads_now
        return sum(r.concurrency if cap is None else min(r.concurrency, cap) for r in self.online)

    @property
    def is_open(self) -> bool:
        return self.threads_now != 0


@dataclass
class GroupState:
    group: BatchGroup
    served: Served
    servers: list[ServerState]  # enabled servers that have the group
    waiting_tasks: int = 0  # Ready + Waiting tasks of executing jobs (coverage.py)

    @property
    def code(self) -> str:
        return self.group.code

    @property
    def ok(self) -> bool:
        return self.served == Served.YES

    @property
    def online(self) -> list[ServerState]:
        return [s for s in self.servers if s.online]

    @property
    def serving(self) -> list[ServerState]:
        """Online servers inside a schedule window: those that take the group's tasks now."""
        return [s for s in self.online if s.is_open]

    @property
    def busy(self) -> int:
        return sum(s.busy for s in self.serving)

    @property
    def threads(self) -> int:
        return sum(s.threads for s in self.serving)


@dataclass
class World:
    at: dt.datetime
    groups: dict[int, GroupState] = field(default_factory=dict)
    queues: dict[int, int | None] = field(default_factory=dict)  # group id -> messages waiting
    beat: beat.Liveness | None = None  # None: not looked at (nothing due long enough to ask)
    # (job id, group id) -> its Executing and Canceling tasks, for groups with a max concurrency
    running: dict[tuple[int, int], int] = field(default_factory=dict)
    # (group id, effective priority) -> its Ready tasks that were sent, for priority_behind
    ready: dict[tuple[int, int], int] = field(default_factory=dict)
    # group id -> its Executing and Canceling tasks, for groups with a maximum running tasks
    group_running: dict[int, int] = field(default_factory=dict)
    # group id -> its running tasks other than Reserved capacity, for groups that reserve some
    shared_running: dict[int, int] = field(default_factory=dict)

    def group(self, group_id: int) -> GroupState | None:
        return self.groups.get(group_id)


# --- What is explained ---------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    parent: BatchTask
    expected: str  # BatchTaskCondition.ExpectedStatus


@dataclass(frozen=True)
class TaskView:
    """A task with its job and its conditions' parent tasks, all loaded by the caller."""

    task: BatchTask
    job: BatchJob
    conditions: Sequence[Condition] = ()


TaskRule = Callable[[TaskView, World], "Reason | None"]
JobRule = Callable[[BatchJob, World, "frozenset[int]"], "Reason | None"]


# --- Words --------------------------------------------------------------------------------


def when(t: dt.datetime, at: dt.datetime) -> str:
    """A time in the viewer's zone and the one format (lib/clock.py): "21:00 Europe/Oslo"
    today, "Tue 2026-06-03 21:00 Europe/Oslo" on another day."""
    local = localtime(t)
    same_day = local.date() == localtime(at).date()
    return clock.format_when(local, "time tz" if same_day else "day tz")


def _when_seconds(t: dt.datetime, at: dt.datetime) -> str:
    local = localtime(t)
    same_day = local.date() == localtime(at).date()
    return clock.format_when(local, "time s" if same_day else "day s")


def _names(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} and {items[-1]}"


def _task_ref(task: BatchTask) -> str:
    return f"task {task.key} '{task.description}'"


def _label(status: str) -> str:
    return str(BatchStatus(status).label)


# --- Job rules: a job in Withhold or Waiting -----------------------------------------------


def _period_hold(job: BatchJob, at: dt.datetime) -> dt.datetime | None:
    """When a Waiting job may start, if its active period rather than its scheduled start
    decides that: the period is closed when the job falls due, or the tick already moved the
    start to the period's opening (transitions.start_job)."""
    period = job.active_period
    if period is None or job.status != S.WAITING:
        return None
    due = max(job.scheduled_start, at)
    if not period.is_open(due):
        return period.next_opening(due)
    moved = not period.is_open(at) and period.next_opening(at) == job.scheduled_start
    return job.scheduled_start if moved else None


def job_withhold(job: BatchJob, world: World, group_ids: frozenset[int]) -> Reason | None:
    if job.status != S.WITHHOLD:
        return None
    return Reason(
        "job_withhold", "The job is Withhold: change its status to Waiting to run it", WARN
    )


def job_outside_active_period(
    job: BatchJob, world: World, group_ids: frozenset[int]
) -> Reason | None:
    opens = _period_hold(job, world.at)
    if opens is None or job.active_period is None:
        return None
    return Reason(
        "outside_active_period",
        f"Outside active period {job.active_period.code}, {job.active_period.describe()}; "
        f"it opens at {when(opens, world.at)}",
    )


def job_paused(job: BatchJob, world: World, group_ids: frozenset[int]) -> Reason | None:
    """A paused recurrence (issue 14, item 6): the tick starts no run until it is resumed."""
    note = job.pause_note
    if job.status != S.WAITING or not note:
        return None
    return Reason("recurrence_paused", f"{note}: no run starts until it is resumed", WARN)


# How a trigger's status reads after "a run of that job that ends ...".
AFTER_WORDS = {"ended": "Ended", "error": "in Error", "ended_or_error": "Ended or in Error"}


def _trigger_only(job: BatchJob) -> bool:
    # after_job_id first: the recurrence is looked at (maybe a query) only for triggered jobs.
    return job.after_job_id is not None and job.is_trigger_only()


def job_after_job(job: BatchJob, world: World, group_ids: frozenset[int]) -> Reason | None:
    """A job that follows another one: with no schedule of its own it waits for that job;
    with a recurrence it also runs after it."""
    if job.after_job_id is None or job.status != S.WAITING:
        return None
    ends = AFTER_WORDS.get(job.after_status, job.after_status)
    if _trigger_only(job):
        return Reason(
            "waits_for_job",
            f"Waits for job {job.after_job_id} to end: it runs after each run of job "
            f"{job.after_job_id} that ends {ends}",
        )
    return Reason(
        "after_job", f"Also runs after each run of job {job.after_job_id} that ends {ends}"
    )


def job_scheduled(job: BatchJob, world: World, group_ids: frozenset[int]) -> Reason | None:
    if (
        job.status != S.WAITING
        or job.scheduled_start <= world.at
        or job.pause_note
        or _trigger_only(job)
    ):
        return None
    if _period_hold(job, world.at) is not None:
        return None  # the active period's opening is the later and the one that counts
    return Reason("scheduled", f"The job starts at {when(job.scheduled_start, world.at)}")


def job_due(job: BatchJob, world: World, group_ids: frozenset[int]) -> Reason | None:
    """Due and not started: the tick starts it within about a second, so after DUE_GRACE the
    scheduler is not doing its work. beat's own record of the tick tells whether it runs."""
    if (
        job.status != S.WAITING
        or job.scheduled_start > world.at
        or job.pause_note
        or _trigger_only(job)
    ):
        return None
    if _period_hold(job, world.at) is not None:
        return None
    # The job became due at its start, or later when its start was moved into the past or it
    # was set Waiting with a past start (both write ``modified``). Before then beat had
    # nothing to start, so lateness counts from then, not from the start.
    modified: dt.datetime | None = job.modified  # None on an unsaved job (pure tests)
    became_due = max(job.scheduled_start, modified if modified is not None else job.scheduled_start)
    late = world.at - became_due
    ticks = world.beat
    not_ticked_since = (
        ticks is not None
        and ticks.alive(world.at)
        and ticks.last_tick is not None
        and ticks.last_tick < became_due
    )
    if late < DUE_GRACE or not_ticked_since:
        # A live beat whose recorded tick is not yet past the moment the job became due (the
        # record is written every few seconds): it has not had its chance yet.
        return Reason("due", "The job is due: the scheduler starts it within seconds")
    late = world.at - job.scheduled_start
    since = f"Due since {when(job.scheduled_start, world.at)} ({durations.short(late)})"
    if ticks is not None and not ticks.exists:
        return Reason(
            "beat_missing",
            f"{since} and not started: the release tick is missing from Periodic tasks, so "
            "nothing starts due jobs (run manage.py migrate)",
            DANGER,
        )
    if ticks is not None and not ticks.enabled:
        return Reason(
            "beat_disabled",
            f"{since} and not started: the release tick is disabled in Periodic tasks, so "
            "nothing starts due jobs",
            DANGER,
        )
    if ticks is not None and ticks.last_tick and not ticks.alive(world.at):
        return Reason(
            "beat_down",
            f"{since} and not started: the scheduler (celery beat) seems to be down; its "
            f"release tick last ran at {when(ticks.last_tick, world.at)}",
            DANGER,
        )
    return Reason(
        "not_started",
        f"{since} and not started: the scheduler (celery beat) starts due jobs every second; "
        "check that it runs and read its log",
        DANGER,
    )


def job_groups_unserved(job: BatchJob, world: World, group_ids: frozenset[int]) -> Reason | None:
    """Not what keeps the job from starting, but what will keep its tasks from running."""
    bad = sorted(
        (g for gid in group_ids if (g := world.group(gid)) is not None and not g.ok),
        key=lambda g: g.code.lower(),
    )
    if not bad:
        return None
    codes = _names([g.code for g in bad])
    noun = "group" if len(bad) == 1 else "groups"
    if all(g.served == Served.CLOSED for g in bad):
        return Reason(
            "groups_closed",
            f"When it starts, its tasks in {noun} {codes} wait: the servers of "
            f"{'that group' if len(bad) == 1 else 'those groups'} are outside their schedule now",
            WARN,
        )
    return Reason(
        "groups_unserved",
        f"When it starts, its tasks in {noun} {codes} will not run: no online batch server "
        f"serves {'it' if len(bad) == 1 else 'them'}",
        DANGER,
    )


JOB_RULES: tuple[JobRule, ...] = (
    job_withhold,
    job_paused,
    job_after_job,
    job_outside_active_period,
    job_scheduled,
    job_due,
    job_groups_unserved,
)


def explain_job(job: BatchJob, world: World, group_ids: Iterable[int] = ()) -> list[Reason]:
    """Why a Withhold or Waiting job is not running; [] for any other status.

    ``group_ids``: the batch groups of the job's tasks (their coverage is checked too).
    """
    if job.status not in (S.WITHHOLD, S.WAITING):
        return []
    ids = frozenset(group_ids)
    return [r for rule in JOB_RULES if (r := rule(job, world, ids)) is not None]


# --- Task rules: a Waiting or Ready task -----------------------------------------------------


def job_not_started(view: TaskView, world: World) -> Reason | None:
    job = view.job
    if job.status in RUNNING_STATUSES or view.task.status != S.WAITING:
        return None
    if job.status == S.WITHHOLD:
        return Reason("job_not_started", "Waits for the job, which is Withhold")
    if job.status == S.WAITING and _trigger_only(job):
        return Reason(
            "job_not_started", f"Waits for the job, which waits for job {job.after_job_id} to end"
        )
    opens = _period_hold(job, world.at)
    if opens is not None:
        return Reason(
            "job_not_started",
            f"Waits for the job, which starts at {when(opens, world.at)} when active period "
            f"{job.active_period.code if job.active_period else ''} opens",
        )
    if job.status == S.WAITING and job.scheduled_start > world.at:
        return Reason(
            "job_not_started",
            f"Waits for the job, which starts at {when(job.scheduled_start, world.at)}",
        )
    if job.status == S.WAITING:
        return Reason("job_not_started", "Waits for the job, which is due")
    return Reason("job_not_started", f"Waits for the job, which is {_label(job.status)}")


def waiting_for_conditions(view: TaskView, world: World) -> Reason | None:
    """D365 "Has conditions": which parents the task still waits for, and what they must reach."""
    task = view.task
    if task.status != S.WAITING or view.job.status != S.EXECUTING:
        return None
    if not view.conditions:
        return Reason(
            "stranded", "No conditions: the scheduler makes it Ready within a second", INFO
        )
    states = [conditions.condition_state(c.expected, c.parent.status) for c in view.conditions]
    decision = conditions.decide(task.condition_type, states)
    if decision == S.READY:
        return Reason("stranded", "Its conditions are met: the scheduler makes it Ready shortly")
    if decision == S.NOT_RUN:
        return Reason(
            "stranded",
            "Its conditions can no longer be met: the scheduler marks it Didn't run shortly",
        )
    pending = [c for c, state in zip(view.conditions, states, strict=True) if state is None]
    words = [
        f"{_task_ref(c.parent)} (needs {_label_expected(c.expected)}, it is "
        f"{_label(c.parent.status)})"
        for c in pending
    ]
    if len(words) == 1:
        text = f"Waiting for {words[0]}"
    elif task.condition_type == BatchTask.ConditionType.ANY:
        text = f"Waiting for any one of {len(words)} tasks: {'; '.join(words)}"
    else:
        text = f"Waiting for all of {len(words)} tasks: {'; '.join(words)}"
    met = sum(1 for s in states if s is True)
    if met and task.condition_type == BatchTask.ConditionType.ALL:
        text += f" ({met} of {len(states)} conditions met)"
    return Reason("waiting_for_task", text)


def _label_expected(expected: str) -> str:
    return str(BatchTaskCondition.ExpectedStatus(expected).label)


def retry_backoff(view: TaskView, world: World) -> Reason | None:
    task = view.task
    if task.status != S.READY or not task.retries:
        return None
    if task.ready_at is not None and task.ready_at > world.at:
        return Reason(
            "retry_backoff",
            f"Retry {task.retries} of {task.max_retries} after an error; not before "
            f"{_when_seconds(task.ready_at, world.at)}",
        )
    return None


def group_unserved(view: TaskView, world: World) -> Reason | None:
    """D365's first pitfall: the group's tasks queue and no batch server runs them."""
    group = world.group(view.task.group_id)
    if group is None or group.served not in (Served.NO_SERVER, Served.OFFLINE):
        return None
    if group.served == Served.NO_SERVER:
        return Reason(
            "no_server",
            f"No batch server serves group {group.code}: add the group to a server on the "
            "Batch groups page",
            DANGER,
        )
    names = _names([s.server.name for s in group.servers])
    verb = "is" if len(group.servers) == 1 else "are"
    return Reason(
        "no_server",
        f"No online batch server serves group {group.code}: {names} {verb} offline",
        DANGER,
    )


def servers_closed(view: TaskView, world: World) -> Reason | None:
    group = world.group(view.task.group_id)
    if group is None or group.served != Served.CLOSED:
        return None
    closed = [s for s in group.online if not s.is_open]
    parts = [
        f"{s.server.name} until {when(s.opens_at, world.at)}"
        if s.opens_at
        else f"{s.server.name} (no window with threads)"
        for s in closed
    ]
    if len(closed) == 1:
        only = closed[0]
        until = f"until {when(only.opens_at, world.at)}" if only.opens_at else "at any time"
        text = f"Server {only.server.name} takes no tasks {until} (server schedule)"
    else:
        text = (
            f"Servers of group {group.code} take no tasks now: {'; '.join(parts)} (server schedule)"
        )
    return Reason("server_schedule", text, WARN)


def threads_busy(view: TaskView, world: World) -> Reason | None:
    task = view.task
    group = world.group(task.group_id)
    if task.status != S.READY or group is None or not group.ok:
        return None
    if task.ready_at is not None and task.ready_at > world.at:
        return None  # in its retry backoff: that is the reason for now
    threads = group.threads
    if not threads or group.busy < threads:
        return None
    detail = ", ".join(f"{s.server.name} {s.busy}/{s.threads}" for s in group.serving)
    text = (
        f"All {threads} thread{'s' if threads != 1 else ''} of the servers serving group "
        f"{group.code} are busy ({detail})"
    )
    waiting = world.queues.get(group.group.pk)
    if waiting:
        text += f"; {waiting} task{'s' if waiting != 1 else ''} in its queue"
    return Reason("threads_busy", text)


def group_paused(view: TaskView, world: World) -> Reason | None:
    """D365 Max concurrency -1 on the batch group."""
    group = world.group(view.task.group_id)
    if view.task.status != S.READY or group is None or not group.group.is_paused():
        return None
    return Reason(
        "group_paused",
        f"Group {group.code} is paused (max concurrency -1): running tasks finish, no new ones "
        "start",
        WARN,
    )


def job_limit_reached(view: TaskView, world: World) -> Reason | None:
    """D365 Max concurrency N: at most N tasks of each job run at once in the group."""
    task = view.task
    group = world.group(task.group_id)
    if task.status != S.READY or group is None:
        return None
    limit = group.group.job_limit()
    if limit is None:
        return None
    running = world.running.get((task.job_id, task.group_id), 0)
    if running < limit:
        return None
    return Reason(
        "job_limit",
        f"Job concurrency limit reached: {running} of {limit} task{'s' if limit != 1 else ''} "
        f"of this job run in group {group.code}",
    )


def group_limit_reached(view: TaskView, world: World) -> Reason | None:
    """The group's maximum running tasks: at most N tasks of the group run at once, all jobs
    together (limits.py). Held tasks of different jobs take turns."""
    task = view.task
    group = world.group(task.group_id)
    if task.status != S.READY or group is None:
        return None
    cap = group.group.task_cap()
    if cap is None:
        return None
    running = world.group_running.get(task.group_id, 0)
    if running < cap:
        return None
    return Reason("group_limit", f"Group {group.code} is at its limit: {running} of {cap} running")


def task_priority(view: TaskView, world: World) -> int:
    """The task's effective scheduling priority (its job's when overridden, else its group's)."""
    group = world.group(view.task.group_id)
    default = group.group.default_priority if group else Priority.NORMAL
    return priority.effective(view.job.priority, view.job.priority_overridden, default)


def reserved_capacity_kept(view: TaskView, world: World) -> Reason | None:
    """D365 Reserved capacity level: the group's shared threads are all taken."""
    task = view.task
    group = world.group(task.group_id)
    if task.status != S.READY or group is None or not group.group.reserved_capacity:
        return None
    if task_priority(view, world) == Priority.RESERVED:
        return None
    threads = group.threads
    kept = priority.kept_threads(threads, group.group.reserved_capacity)
    running = world.shared_running.get(group.group.pk, 0)
    if not threads or running < threads - kept:
        return None
    return Reason(
        "reserved_capacity",
        f"Reserved capacity: {group.group.reserved_capacity}% of group {group.code}'s threads "
        f"({kept} of {threads}) are kept for Reserved capacity jobs, and the other {threads - kept} "
        "are busy",
    )


def priority_behind(view: TaskView, world: World) -> Reason | None:
    """Tasks of a higher priority queued in the same group start first."""
    task = view.task
    group = world.group(task.group_id)
    if task.status != S.READY or task.dispatched_at is None or group is None:
        return None
    mine = task_priority(view, world)
    ahead = sum(
        n for (gid, level), n in world.ready.items() if gid == task.group_id and level > mine
    )
    if not ahead:
        return None
    moves_up = "; it moves up while it waits" if settings.BATCH_PRIORITY_AGING_SECONDS > 0 else ""
    return Reason(
        "priority_behind",
        f"Waiting for a thread: {ahead} higher-priority task{'s are' if ahead != 1 else ' is'} "
        f"queued for group {group.code} (this task: {Priority(mine).label}{moves_up})",
    )


TASK_RULES: tuple[TaskRule, ...] = (
    job_not_started,
    waiting_for_conditions,
    retry_backoff,
    group_unserved,
    servers_closed,
    group_paused,
    job_limit_reached,
    group_limit_reached,
    reserved_capacity_kept,
    threads_busy,
    priority_behind,
)


def queued(view: TaskView, world: World) -> Reason:
    """A Ready task nothing holds back: its message waits for a thread of its group."""
    task = view.task
    group = world.group(task.group_id)
    code = group.code if group else str(task.group_id)
    if task.dispatched_at is None:
        return Reason("queued", f"Ready: the scheduler sends it to group {code} within a second")
    waiting = world.queues.get(task.group_id)
    if waiting is None:
        return Reason("queued", f"Queued for group {code}")
    if waiting == 0:
        return Reason("queued", f"Queued for group {code}: a batch server is taking it")
    return Reason(
        "queued",
        f"Queued for group {code}; {waiting} task{'s' if waiting != 1 else ''} in its queue",
    )


def explain_task(view: TaskView, world: World) -> list[Reason]:
    """Why a Waiting or Ready task is not executing, or who skipped a Skipped one and why;
    [] for any other status."""
    if view.task.status == S.SKIPPED:
        # skip_task keeps "Skipped by alice: <reason>" on the task while it is Skipped.
        return [Reason("skipped", view.task.skip_note or "Skipped by an operator")]
    if view.task.status not in (S.WAITING, S.READY):
        return []
    reasons = [r for rule in TASK_RULES if (r := rule(view, world)) is not None]
    if not reasons and view.task.status == S.READY:
        reasons.append(queued(view, world))
    return reasons

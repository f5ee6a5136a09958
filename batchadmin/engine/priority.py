"""Scheduling priority of tasks and the reserved capacity of batch groups (reference 5.4).

A task's priority is its job's when the job overrides it (D365 "Scheduling priority is
overridden"), else its batch group's default priority. It decides the order in which the
"start this task" messages leave the broker: every group queue is split into Redis priority
lists (kombu ``priority_steps``), and a worker pops the lowest non-empty step first. With
prefetch 1 and late acks a worker only takes a message when a thread is free, so when more
tasks are ready than threads are free, the waiting messages start in priority order.

D365 picks by weight (Low 5, Normal 10, High 15, Critical 30, Reserved 40) so that Low is never
starved. A broker list cannot draw by weight, so this uses aging instead: every
BATCH_PRIORITY_AGING_SECONDS a waiting task's message is sent again one step higher
(tick.handle_aging). The steps of two neighbouring priorities are two apart, so a task
that waited one period goes ahead of every fresh task of its own priority, after two periods it
is level with the next priority, and at the top step it waits behind nothing newer. A Low task
overtakes fresh High ones after four periods (4 min by default), however many keep arriving:
the same promise the weights make (Low always gets its turn), at a fraction of the cost of a
weighted draw on every claim. The older message stays in the queue; its delivery finds the
task no longer Ready (or already sent again) and the claim turns it away.

Reserved capacity (D365 "Reserved capacity level", here per batch group): 10, 15 or 25% of the
threads of the group's online servers are kept for Reserved capacity tasks. Other tasks are
refused at the claim while the group's running tasks would eat into that share; they wait
held, without a message, and the tick sends them again once there is room (``room``).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from collections import defaultdict
from typing import NamedTuple

from django.conf import settings
from django.db.models import Count, Sum

from batchadmin.jobs.models import BatchTask
from batchadmin.servers.models import (
    BatchGroup,
    BatchServerReplica,
    Priority,
)

# Redis priority step of each priority's fresh message: lower is served first. Steps in
# between are for aged messages.
STEPS: dict[int, int] = {
    Priority.RESERVED: 0,
    Priority.CRITICAL: 2,
    Priority.HIGH: 4,
    Priority.NORMAL: 6,
    Priority.LOW: 8,
}
# Dispatch, the claim and the tick read group settings from this per-process cache: a changed
# default priority or max concurrency reaches new messages within this long (the claim's own
# checks are exact anyway).
CACHE_SECONDS = 2.0


class GroupSettings(NamedTuple):
    id: int
    default_priority: int
    reserved_capacity: int
    max_concurrency: int
    max_tasks: int


class _Cache:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: dict[str, GroupSettings] = {}
        self.loaded = -1e9

    def get(self) -> dict[str, GroupSettings]:
        with self.lock:
            if time.monotonic() - self.loaded > CACHE_SECONDS:
                rows = BatchGroup.objects.values_list(
                    "code",
                    "pk",
                    "default_priority",
                    "reserved_capacity",
                    "max_concurrency",
                    "max_tasks",
                )
                self.groups = {code: GroupSettings(*values) for code, *values in rows}
                self.loaded = time.monotonic()
            return self.groups

    def clear(self) -> None:
        with self.lock:
            self.loaded = -1e9


_cache = _Cache()


def group_settings() -> dict[str, GroupSettings]:
    """Group code -> (id, default priority, reserved capacity %, max concurrency, maximum
    running tasks), cached per process."""
    return _cache.get()


def clear_cache() -> None:
    """Forget the cached group settings (a group was saved in this process; tests)."""
    _cache.clear()


def effective(job_priority: int, overridden: bool, group_default: int) -> int:
    """The priority a task runs with: its job's when overridden, else its group's."""
    return job_priority if overridden else group_default


def step(priority: int, waited: float = 0.0) -> int:
    """Redis priority step for a task of ``priority`` that has waited ``waited`` seconds."""
    base = STEPS.get(priority, STEPS[Priority.NORMAL])
    aging = settings.BATCH_PRIORITY_AGING_SECONDS
    if aging <= 0 or waited <= 0:
        return base
    return max(0, base - int(waited // aging))


def waited(at: dt.datetime, ready_at: dt.datetime | None) -> float:
    """Seconds a ready task has waited for a thread (0 when it has no ready time)."""
    return (at - ready_at).total_seconds() if ready_at else 0.0


def task_step(code: str, job_priority: int, overridden: bool, waited: float = 0.0) -> int:
    """Step of the message of a task of group ``code`` that has waited ``waited`` seconds since
    it became ready (no query: cached group settings)."""
    if overridden:
        return step(job_priority, waited)
    group = group_settings().get(code)
    return step(group.default_priority if group else Priority.NORMAL, waited)


def kept_threads(threads: int, percent: int) -> int:
    """Threads kept for Reserved capacity tasks: the share rounded up, so a level always keeps
    at least one thread of a group that has any (D365 dedicates whole servers)."""
    if percent <= 0 or threads <= 0:
        return 0
    return math.ceil(threads * percent / 100)


def group_threads(group_ids: list[int], at: dt.datetime | None = None) -> dict[int, int]:
    """Threads of the online replicas of the enabled servers serving each group (one query).

    A group missing here has no known thread (no heartbeat yet): nothing is reserved in it.
    """
    rows = (
        BatchServerReplica.objects.online(at)
        .filter(server__enabled=True, server__groups__in=group_ids)
        .values("server__groups")
        .annotate(threads=Sum("concurrency"))
        .values_list("server__groups", "threads")
    )
    return {gid: int(threads or 0) for gid, threads in rows}


def room(group_ids: list[int], at: dt.datetime | None = None) -> dict[int, int]:
    """Group id -> how many more non-Reserved tasks may start in it now (reserved groups)."""
    if not group_ids:
        return {}
    levels = dict(
        BatchGroup.objects.filter(pk__in=group_ids).values_list("pk", "reserved_capacity")
    )
    threads = group_threads(group_ids, at)
    running: defaultdict[int, int] = defaultdict(int)
    # Tasks other than Reserved capacity that run, or were sent and not yet claimed.
    rows = (
        BatchTask.objects.taking_slot()
        .filter(group_id__in=group_ids)
        .with_effective_priority(select=False)
        .exclude(effective_priority=Priority.RESERVED)
        .values("group_id")
        .annotate(n=Count("pk"))
        .values_list("group_id", "n")
    )
    for gid, n in rows:
        running[gid] += n
    return {
        gid: (
            max(0, usable(threads[gid], levels.get(gid, 0)) - running[gid])
            if gid in threads
            else settings.BATCH_TICK_LIMIT
        )
        for gid in group_ids
    }


def usable(threads: int, percent: int) -> int:
    """Threads of a group that tasks other than Reserved capacity may use."""
    return threads - kept_threads(threads, percent)

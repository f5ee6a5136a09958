"""Max concurrency of a batch group (D365 "Batch concurrency control", reference 5.5).

0 = no limit; N > 0 = at most N tasks of each job run at once in the group; -1 = the group is
paused: running tasks finish, no new ones start. A task the limit keeps back stays Ready with
no message sent ("held": ``dispatched_at`` is NULL); it is sent when a task of its job and
group finishes (``release_held``, in the finishing transaction) or by the tick.

Two places decide:
- dispatch (this module): which ready tasks get a message now. It may be slightly stale (the
  limits cache, two ticks at once) and only spares the broker and the workers useless messages;
- the claim (transitions.claim_task): the authoritative check, under the job's row lock, so two
  workers claiming tasks of one job at once never exceed N.
Groups without a limit (the default) cost nothing extra on either path.

Maximum running tasks (``BatchGroup.max_tasks``, D365 batch concurrency control on the group):
at most N tasks of the group run at once, all jobs and servers together. The same two places
decide: dispatch sends no more messages than the group has free slots (``capped``), and the
claim counts the group's running tasks under the group's row lock (after the job's, the one
order used). Which held task goes next is ``fair_pick``: the highest effective priority first,
then the job with the fewest tasks in the group (jobs take turns), then the longest ready. A
finish frees a slot and sends the next one at once (``release_group_held``, under the group
lock so two finishes do not fill one slot twice); the tick sends any that are left.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from django.conf import settings
from django.db import connection

from batchadmin.engine import dispatch, priority, sql
from batchadmin.jobs.models import BatchStatus, BatchTask
from batchadmin.servers.models import NO_LIMIT, PAUSED, QUEUE_PREFIX

S = BatchStatus


class Candidate(NamedTuple):
    task_id: int
    job_id: int
    group: str  # group code
    limit: int  # the group's max concurrency
    priority: int = 0  # the task's effective priority (fair_pick serves the highest first)


def cached_limits() -> dict[str, int]:
    """Group code -> max concurrency, for the groups that have one (0 is left out).

    From the per-process cache of group settings: a changed limit reaches dispatch within
    priority.CACHE_SECONDS, and the claim is exact anyway.
    """
    return {
        code: group.max_concurrency
        for code, group in priority.group_settings().items()
        if group.max_concurrency != NO_LIMIT
    }


def dispatchable(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates that may be sent now, in their order.

    Paused group: none. Limit N: N minus the tasks of that job and group that run or were sent
    and not yet claimed (one query for all limited candidates; none when there are none).
    """
    limited = [c for c in candidates if c.limit != NO_LIMIT]
    if not limited:
        return list(candidates)
    counted = [c for c in limited if c.limit > 0]
    used = _slots_taken(
        {(c.job_id, c.group) for c in counted}, exclude=[c.task_id for c in counted]
    )
    allowed: list[Candidate] = []
    for c in candidates:
        if c.limit == NO_LIMIT:
            allowed.append(c)
        elif c.limit > 0 and used[c.job_id, c.group] < c.limit:
            used[c.job_id, c.group] += 1
            allowed.append(c)
    return allowed


def _slots_taken(
    pairs: set[tuple[int, str]], *, exclude: Iterable[int] = ()
) -> defaultdict[tuple[int, str], int]:
    used: defaultdict[tuple[int, str], int] = defaultdict(int)
    if not pairs:
        return used
    rows = (
        BatchTask.objects.taking_slot()
        .filter(job_id__in={j for j, _ in pairs}, group__code__in={g for _, g in pairs})
        .exclude(pk__in=list(exclude))
        .values_list("job_id", "group__code")
    )
    for job_id, code in rows:
        used[job_id, code] += 1
    return used


def release_held(*, job_id: int, group_id: int, limit: int, at: dt.datetime) -> int:
    """A task of this job and group stopped running: send its held successors, up to the limit.

    Runs in the finishing transaction under the job lock; the messages go on commit.
    """
    if limit <= 0:
        return 0  # no limit: nothing is held; paused: nothing may start
    tasks = BatchTask.objects.filter(job_id=job_id, group_id=group_id)
    taken = tasks.taking_slot().count()
    free = limit - taken
    if free <= 0:
        return 0
    held = list(
        tasks.filter(status=S.READY, dispatched_at=None, ready_at__lte=at)
        .order_by("ready_at", "position", "pk")
        .values_list("pk", "group__code", "job__priority", "job__priority_overridden", "ready_at")[
            :free
        ]
    )
    if not held:
        return 0
    BatchTask.objects.filter(pk__in=[row[0] for row in held], status=S.READY).update(
        dispatched_at=at
    )
    dispatch.send_on_commit(
        [
            (
                pk,
                QUEUE_PREFIX + code,
                priority.task_step(code, job_priority, overridden, priority.waited(at, ready_at)),
            )
            for pk, code, job_priority, overridden, ready_at in held
        ]
    )
    return len(held)


# --- Maximum running tasks of a whole group -----------------------------------------------


class Slots(NamedTuple):
    """Tasks taking a slot (running, or sent), per group code and per (group code, job)."""

    by_group: Counter[str]
    by_job: Counter[tuple[str, int]]


def cached_caps() -> dict[str, int]:
    """Group code -> maximum running tasks, for the groups that have one (per-process cache)."""
    return {
        code: group.max_tasks
        for code, group in priority.group_settings().items()
        if group.max_tasks != NO_LIMIT
    }


def group_slots(codes: Iterable[str], *, exclude: Iterable[int] = ()) -> Slots:
    """What the groups ``codes`` have taken, in one query (none for no group)."""
    slots = Slots(Counter(), Counter())
    codes = set(codes)
    if not codes:
        return slots
    rows = (
        BatchTask.objects.taking_slot()
        .filter(group__code__in=codes)
        .exclude(pk__in=list(exclude))
        .values_list("group__code", "job_id")
    )
    for code, job_id in rows:
        slots.by_group[code] += 1
        slots.by_job[code, job_id] += 1
    return slots


def fair_pick(
    candidates: Sequence[Candidate],
    free: int,
    used: Mapping[int, int],
    *,
    job_limit: int = NO_LIMIT,
) -> list[Candidate]:
    """Up to ``free`` of one group's ``candidates`` (given oldest first), taking turns.

    1. The highest effective priority among the candidates left goes first.
    2. Among those, the job with the fewest tasks in the group (``used``: job id -> tasks
       taking a slot, counting the ones picked here), so one job with many ready tasks
       cannot take every slot while another waits.
    3. Among those jobs' tasks, the first given (the longest ready).
    A job at ``job_limit`` (the group's max concurrency, N per job) gets no more.
    """
    taken = Counter(used)
    left = list(candidates)
    picked: list[Candidate] = []
    while left and len(picked) < free:
        if job_limit > 0:
            left = [c for c in left if taken[c.job_id] < job_limit]
            if not left:
                break
        top = max(c.priority for c in left)
        best = min((c for c in left if c.priority == top), key=lambda c: taken[c.job_id])
        left.remove(best)
        taken[best.job_id] += 1
        picked.append(best)
    return picked


def capped(
    candidates: Sequence[Candidate], caps: Mapping[str, int], slots: Slots | None = None
) -> list[Candidate]:
    """The candidates that fit in their group's free slots (fair_pick), in their order.

    ``slots``: what the groups have taken, when the caller has it; else one query (none when no
    candidate's group has a maximum).
    """
    codes = {c.group for c in candidates if c.group in caps}
    if not codes:
        return list(candidates)
    if slots is None:
        slots = group_slots(codes, exclude=[c.task_id for c in candidates])
    keep: set[int] = set()
    for code in codes:
        mine = [c for c in candidates if c.group == code]
        used = {job_id: n for (g, job_id), n in slots.by_job.items() if g == code}
        free = caps[code] - slots.by_group[code]
        keep.update(c.task_id for c in fair_pick(mine, free, used))
    return [c for c in candidates if c.group not in caps or c.task_id in keep]


def release_group_held(
    *, group_id: int, cap: int, job_limit: int, at: dt.datetime, locked: bool = False
) -> int:
    """A task of a group with a maximum stopped running: send held tasks of any of its jobs,
    taking turns (fair_pick), up to the maximum.

    Runs in the finishing transaction; under the group's row lock (taken here unless the caller
    holds it, ``locked``) so that the count is exact. The messages go on commit.
    """
    if cap <= 0 or job_limit == PAUSED:
        return 0
    if not locked:
        with connection.cursor() as cursor:
            cursor.execute(sql.LOCK_GROUP + sql.for_update(), [group_id])
    tasks = BatchTask.objects.filter(group_id=group_id)
    used = Counter(tasks.taking_slot().values_list("job_id", flat=True))
    free = cap - used.total()
    if free <= 0:
        return 0
    rows = list(
        tasks.filter(status=S.READY, dispatched_at=None, ready_at__lte=at)
        .with_effective_priority()
        .order_by("-effective_priority", "ready_at", "position", "pk")
        .values_list("pk", "job_id", "group__code", "effective_priority", "ready_at")[
            : settings.BATCH_TICK_LIMIT
        ]
    )
    if not rows:
        return 0
    ready_at = {pk: when for pk, _, _, _, when in rows}
    picked = fair_pick(
        [Candidate(pk, job_id, code, job_limit, eff) for pk, job_id, code, eff, _ in rows],
        free,
        used,
        job_limit=job_limit,
    )
    if not picked:
        return 0
    BatchTask.objects.filter(
        pk__in=[c.task_id for c in picked], status=S.READY, dispatched_at=None
    ).update(dispatched_at=at)
    dispatch.send_on_commit(
        [
            (
                c.task_id,
                QUEUE_PREFIX + c.group,
                priority.step(c.priority, priority.waited(at, ready_at[c.task_id])),
            )
            for c in picked
        ]
    )
    return len(picked)

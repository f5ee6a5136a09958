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
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from batchadmin.engine import dispatch, priority
from batchadmin.jobs.models import BatchStatus, BatchTask
from batchadmin.servers.models import NO_LIMIT, QUEUE_PREFIX

S = BatchStatus


class Candidate(NamedTuple):
    task_id: int
    job_id: int
    group: str  # group code
    limit: int  # the group's max concurrency


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

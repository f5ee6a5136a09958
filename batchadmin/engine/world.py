"""What the explanations (explain.py) know about the system, loaded once per page.

A page explains any number of tasks with a fixed number of queries and at most one broker
round trip; the rules themselves never query, and this module holds every query they need.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from django.db.models import Count
from django.utils.timezone import now

from batchadmin.engine.beat import liveness
from batchadmin.engine.explain import GroupState, ServerState, World
from batchadmin.jobs.models import BatchStatus, BatchTask
from batchadmin.lib import broker, recurrence
from batchadmin.servers import coverage
from batchadmin.servers.models import (
    QUEUE_PREFIX,
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    Priority,
)

S = BatchStatus


def schedule_opens_at(server: BatchServer, at: dt.datetime) -> dt.datetime | None:
    """The first instant after ``at`` at which the server's schedule allows threads again."""
    openings = sorted(
        recurrence.Window(row.start_time, row.end_time, server.time_zone).next_opening(at)
        for row in server.schedule.all()
        if row.max_threads > 0
    )
    for opening in openings:
        if opening > at and server.max_threads_at(opening):
            return opening
    return None


def load_world(
    groups: Iterable[BatchGroup],
    *,
    at: dt.datetime | None = None,
    queue_groups: Iterable[BatchGroup] = (),
    beat: bool = False,
) -> World:
    """What the rules need to know about ``groups``, in a fixed number of queries.

    servers with their groups and schedules (3), online replicas (1), waiting tasks per group
    (1, coverage.py); ready tasks per priority (1); running tasks per job (1) when a group has
    a max concurrency; running tasks per group (1) when a group has a maximum running tasks;
    shared running tasks (1) when a group reserves capacity; beat's tick
    (1) when ``beat``; one broker round trip per group in
    ``queue_groups``.
    """
    at = at or now()
    group_list = list({g.pk: g for g in groups}.values())
    world = World(at=at)
    if group_list:
        servers = coverage.servers_with_settings()
        replicas = list(BatchServerReplica.objects.online(at))
        cover = coverage.coverage(
            group_list, servers, online_ids={r.server_id for r in replicas}, at=at
        )
        states = {}
        for server in servers:
            threads_now = server.max_threads_at(at)
            states[server.pk] = ServerState(
                server,
                [r for r in replicas if r.server_id == server.pk],
                threads_now,
                schedule_opens_at(server, at) if threads_now == 0 else None,
            )
        for group in group_list:
            c = cover[group.pk]
            world.groups[group.pk] = GroupState(
                group, c.served, [states[s.pk] for s in c.servers], c.waiting_tasks
            )
    limited = [g.pk for g in group_list if g.job_limit() is not None]
    if limited:
        world.running = running_per_job(limited)
    if group_list:
        world.ready = ready_per_priority([g.pk for g in group_list])
    capped = [g.pk for g in group_list if g.task_cap() is not None]
    if capped:
        world.group_running = running_per_group(capped)
    reserving = [g.pk for g in group_list if g.reserved_capacity]
    if reserving:
        world.shared_running = shared_running(reserving)
    world.queues = queue_sizes(list({g.pk: g for g in queue_groups}.values()))
    if beat:
        world.beat = liveness()
    return world


def running_per_job(group_ids: list[int]) -> dict[tuple[int, int], int]:
    """Executing and Canceling tasks per (job, group) in these groups (one query)."""
    rows = (
        BatchTask.objects.running()
        .filter(group_id__in=group_ids)
        .values_list("job_id", "group_id")
        .order_by()
        .annotate(n=Count("pk"))
    )
    return {(job_id, group_id): n for job_id, group_id, n in rows}


def running_per_group(group_ids: list[int]) -> dict[int, int]:
    """Executing and Canceling tasks per group, all jobs (one query)."""
    rows = (
        BatchTask.objects.running()
        .filter(group_id__in=group_ids)
        .values_list("group_id")
        .order_by()
        .annotate(n=Count("pk"))
    )
    return dict(rows)


def ready_per_priority(group_ids: list[int]) -> dict[tuple[int, int], int]:
    """Ready tasks that were sent, per (group, effective priority) (one query)."""
    rows = (
        BatchTask.objects.filter(
            group_id__in=group_ids, status=S.READY, dispatched_at__isnull=False
        )
        .with_effective_priority()
        .values_list("group_id", "effective_priority")
        .order_by()
        .annotate(n=Count("pk"))
    )
    return {(group_id, level): n for group_id, level, n in rows}


def shared_running(group_ids: list[int]) -> dict[int, int]:
    """Running tasks other than Reserved capacity ones, per group (one query)."""
    rows = (
        BatchTask.objects.running()
        .filter(group_id__in=group_ids)
        .with_effective_priority(select=False)
        .exclude(effective_priority=Priority.RESERVED)
        .values_list("group_id")
        .order_by()
        .annotate(n=Count("pk"))
    )
    return dict(rows)


def queue_sizes(
    groups: Sequence[BatchGroup], *, broker_url: str | None = None
) -> dict[int, int | None]:
    """Messages waiting in each group's queue (all its priority lists): one round trip.

    When the broker is down or slow every size is None and the explanations leave the queue
    out: a page must not hang or fail on the broker.
    """
    if not groups:
        return {}
    try:
        lengths = broker.queue_lengths([QUEUE_PREFIX + g.code for g in groups], url=broker_url)
    except Exception:
        return {g.pk: None for g in groups}
    return {g.pk: lengths[QUEUE_PREFIX + g.code] for g in groups}

"""Which batch groups some online batch server serves right now.

D365's first pitfall: tasks queue in a group that no server serves and nothing runs them. Every
page that shows a group can ask ``coverage()`` and warn. A group is served when an enabled
server that has the group is online (a replica heartbeats) and its schedule lets it take tasks
now; it is not when no enabled server has it, when those that have it are all offline, or when
the online ones are all outside their schedule windows.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field

from django.db.models import Count
from django.utils.timezone import now

from batchadmin.servers.models import BatchGroup, BatchServer, BatchServerReplica


class Served(enum.Enum):
    YES = "yes"
    NO_SERVER = "no_server"  # no enabled server has the group
    OFFLINE = "offline"  # servers have it, none of them is online
    CLOSED = "closed"  # online servers have it, all outside their schedule windows now


@dataclass
class GroupCoverage:
    served: Served
    servers: list[BatchServer] = field(default_factory=list)  # enabled servers with the group
    online: list[BatchServer] = field(default_factory=list)  # ... of those, online now
    waiting_tasks: int = 0  # Ready + Waiting tasks of executing jobs

    @property
    def ok(self) -> bool:
        return self.served == Served.YES


def online_server_ids(at: dt.datetime | None = None) -> set[int]:
    return set(BatchServerReplica.objects.online(at).values_list("server_id", flat=True))


def waiting_tasks_by_group() -> dict[int, int]:
    """Group id -> tasks waiting to run in it (Ready, or Waiting in an executing job)."""
    from batchadmin.jobs.models import BatchStatus, BatchTask

    rows = (
        BatchTask.objects.filter(
            status__in=[BatchStatus.READY, BatchStatus.WAITING],
            job__status=BatchStatus.EXECUTING,
        )
        .order_by()
        .values_list("group_id")
        .annotate(n=Count("pk"))
    )
    return dict(rows)


def coverage(
    groups: list[BatchGroup],
    servers: list[BatchServer],
    *,
    online_ids: set[int] | None = None,
    at: dt.datetime | None = None,
) -> dict[int, GroupCoverage]:
    """Group id -> coverage; ``servers`` must come with ``groups`` and ``schedule`` prefetched."""
    at = at or now()
    if online_ids is None:
        online_ids = online_server_ids(at)
    waiting = waiting_tasks_by_group()
    result = {}
    for group in groups:
        having = [s for s in servers if s.enabled and group in s.groups.all()]
        online = [s for s in having if s.pk in online_ids]
        open_now = [s for s in online if s.max_threads_at(at) != 0]
        if not having:
            served = Served.NO_SERVER
        elif not online:
            served = Served.OFFLINE
        elif not open_now:
            served = Served.CLOSED
        else:
            served = Served.YES
        result[group.pk] = GroupCoverage(served, having, online, waiting.get(group.pk, 0))
    return result


def servers_with_settings() -> list[BatchServer]:
    return list(BatchServer.objects.prefetch_related("groups", "schedule").order_by("name"))

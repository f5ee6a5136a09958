"""How many batch threads a replica runs now, from its server's schedule rows.

Pure: the rows come in, a decision goes out. The worker's heartbeat applies it to the running
pool (worker.py).

The worker's own ``-c`` is the ceiling: a window never gives a replica more processes than it
was started with. To let a night window run 8 tasks while the day runs 2, start the worker with
``-c 8`` (the largest window's value); the day window shrinks the pool to 2 and the night grows
it back. ``--autoscale`` is not used for this: its pool follows the queue length and shrinks only
after an idle keepalive, while a schedule is a hard cap that must hold at once, and Celery
refuses pool grow/shrink commands on an autoscaling worker.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from batchadmin.servers.models import BatchServerSchedule


@dataclass(frozen=True)
class Plan:
    threads: int
    """Batch tasks the replica runs at once; 0 takes none (outside every window)."""
    window: str
    """The reason, for the log: the row that applies, or why none does."""

    @property
    def pool_size(self) -> int:
        # The pool keeps one process when the schedule allows none: the replica still runs
        # alert deliveries (the alerts queue stays consumed) and grows again when a window opens.
        return max(self.threads, 1)


def row_at(
    rows: Sequence[BatchServerSchedule], time_zone: str, when: dt.datetime
) -> BatchServerSchedule | None:
    """The first row (in start-time order) that covers ``when`` read in the server's zone."""
    local = when.astimezone(ZoneInfo(time_zone)).time()
    for row in sorted(rows, key=lambda r: (r.start_time, r.end_time)):
        if row.covers(local):
            return row
    return None


def plan(
    rows: Sequence[BatchServerSchedule], time_zone: str, when: dt.datetime, ceiling: int
) -> Plan:
    """The threads for a replica started with ``-c ceiling``.

    No rows: the worker's own concurrency. Rows, none covering ``when``: 0. Otherwise the
    covering row's maximum, capped at the ceiling.
    """
    if not rows:
        return Plan(ceiling, "no schedule")
    row = row_at(rows, time_zone, when)
    if row is None:
        return Plan(0, "outside every schedule window")
    label = f"schedule {row.start_time:%H:%M}-{row.end_time:%H:%M} x{row.max_threads}"
    if row.max_threads > ceiling:
        label += f" (capped at -c {ceiling})"
    return Plan(min(row.max_threads, ceiling), label)

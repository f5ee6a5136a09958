"""Finished-attempt counters and the duration histogram, kept in the broker's Redis.

/metrics reads its gauges (jobs and tasks by status, servers, threads, queue depth, beat) from
the database at scrape time. Counters and the duration histogram cannot come from there: the
history rows they would count are deleted by clean-up and by "Save job to history". So the
process that settles an attempt (a worker, or beat when a lease runs out) counts it, once the
finish has committed, in a tally of its own, and adds the tally to two Redis hashes in one round
trip every ``BATCH_METRICS_FLUSH_SECONDS`` (a write per task cost as much CPU as the claim:
bench/README.md). The tally is also written when the process shuts down warmly; a process that
is killed loses at most the last interval's counts, never an attempt (those are in the
database). The hashes last as long as the broker's data: a Redis flush resets them, which
Prometheus handles as a counter reset.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import redis
from celery import current_task
from django.conf import settings
from django.db import transaction

from batchadmin.jobs.models import BatchStatus, BatchTask
from batchadmin.lib import broker
from batchadmin.servers.models import QUEUE_PREFIX

if TYPE_CHECKING:
    from batchadmin.engine.transitions import Outcome

log = logging.getLogger(__name__)

# Upper bounds of the duration histogram, in seconds (+Inf is implied): batch tasks run from
# a fraction of a second to hours.
BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
# Hash of counters; field "<group>|<status>" (group codes cannot contain "|").
FINISHED_KEY = "batchadmin:metrics:finished"
# Hash of the histogram; fields "<group>|<le>" (observations in that bucket only, not
# cumulative: one increment per observation), "<group>|count" and "<group>|sum".
DURATION_KEY = "batchadmin:metrics:duration"
FINISH_STATUSES = (BatchStatus.ENDED, BatchStatus.ERROR, BatchStatus.CANCELED)
# After Redis failed, workers stop trying for this long, so an unreachable broker costs a task
# at most one timeout now and then instead of one per task.
PAUSE_AFTER_FAILURE_SECONDS = 5.0

_recorders: dict[str, redis.Redis] = {}
_paused_until = 0.0
_failing = False


def le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it ("0.1", "1.0", "+Inf")."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def attempt_status(outcome: Outcome) -> BatchStatus:
    """How an attempt that finish_task settled ended (its BatchTaskRun status).

    ``canceled`` is only set when the process saw the task Canceling, and a Canceling task can
    only be settled by this finish, so the outcome alone decides (no query).
    """
    if outcome.canceled:
        return BatchStatus.CANCELED
    return BatchStatus.ERROR if outcome.error else BatchStatus.ENDED


def task_finished(*, task_id: int, status: str, seconds: float, group: str | None = None) -> None:
    """Count a settled attempt once the transaction that settled it has committed."""

    def count() -> None:
        try:
            code = group if group is not None else _group_of(task_id)
        except Exception:
            log.debug("No batch group for task %s; not counted", task_id, exc_info=True)
            return
        TALLY.add(group=code, status=status, seconds=seconds)

    transaction.on_commit(count)


def _group_of(task_id: int) -> str:
    # In a worker the message's queue (batch.<code>) names the group: no query per task.
    request = getattr(current_task, "request", None)  # None outside a task
    delivery: dict[str, Any] = getattr(request, "delivery_info", None) or {}
    routing_key = str(delivery.get("routing_key") or "")
    if routing_key.startswith(QUEUE_PREFIX):
        return routing_key.removeprefix(QUEUE_PREFIX)
    code = BatchTask.objects.filter(pk=task_id).values_list("group__code", flat=True).first()
    return code or ""


def bucket_of(seconds: float) -> str:
    return le(next((b for b in BUCKETS if seconds <= b), math.inf))


class Tally:
    """The attempts this process settled and has not yet written to Redis.

    ``add`` costs a few dict updates; the Redis write happens on the first ``add`` after the
    interval, from a daemon thread for a process that goes quiet, and at exit. Thread-safe: a
    pool process has the lease thread and, with threads pools, several task threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._finished: Counter[str] = Counter()
        self._durations: Counter[str] = Counter()
        self._sums: defaultdict[str, float] = defaultdict(float)
        self._since = 0.0  # monotonic time of the oldest count not yet written
        self._pid = 0

    def add(self, *, group: str, status: str, seconds: float) -> None:
        interval = settings.BATCH_METRICS_FLUSH_SECONDS
        if interval <= 0:
            record(group=group, status=status, seconds=seconds)
            return
        t = time.monotonic()
        with self._lock:
            if self._pid != os.getpid():  # first count in this (possibly forked) process
                self._start(interval)
            if not self._finished:
                self._since = t
            self._finished[f"{group}|{status}"] += 1
            self._durations[f"{group}|{bucket_of(seconds)}"] += 1
            self._durations[f"{group}|count"] += 1
            self._sums[f"{group}|sum"] += max(seconds, 0.0)
            due = t - self._since >= interval
        if due:
            self.flush()

    def flush(self) -> None:
        """Write what was counted (one round trip) and start again. Never raises."""
        with self._lock:
            finished, durations, sums = self._finished, self._durations, self._sums
            if not finished:
                return
            self._finished, self._durations, self._sums = Counter(), Counter(), defaultdict(float)
        _write(finished, durations, sums)

    def _start(self, interval: float) -> None:
        # A fork inherits neither the parent's thread nor (meaningfully) its counts.
        self._pid = os.getpid()
        self._finished.clear()
        self._durations.clear()
        self._sums.clear()
        threading.Thread(
            target=self._loop, args=(interval,), name="batch-metrics", daemon=True
        ).start()
        atexit.register(self.flush)

    def _loop(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            self.flush()


TALLY = Tally()


def record(*, group: str, status: str, seconds: float) -> None:
    """Add one attempt to the counters and the histogram at once. Never raises."""
    _write(
        Counter({f"{group}|{status}": 1}),
        Counter({f"{group}|{bucket_of(seconds)}": 1, f"{group}|count": 1}),
        {f"{group}|sum": max(seconds, 0.0)},
    )


def _write(finished: Counter[str], durations: Counter[str], sums: dict[str, float]) -> None:
    global _paused_until, _failing
    if time.monotonic() < _paused_until:
        return
    try:
        client = _recorders.get(settings.CELERY_BROKER_URL)
        if client is None:
            client = _recorders[settings.CELERY_BROKER_URL] = broker.client(retries=1)
        # MULTI/EXEC in one round trip: a scrape never sees half an observation.
        with client.pipeline() as pipe:
            for field, n in finished.items():
                pipe.hincrby(FINISHED_KEY, field, n)
            for field, n in durations.items():
                pipe.hincrby(DURATION_KEY, field, n)
            for field, total in sums.items():
                pipe.hincrbyfloat(DURATION_KEY, field, total)
            pipe.execute()
    except Exception as exc:
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
        # Once per outage; the task itself has finished and must not notice.
        level = logging.DEBUG if _failing else logging.WARNING
        log.log(level, "Could not record task metrics in Redis: %s", exc)
        _failing = True
    else:
        _failing = False


def read() -> tuple[dict[tuple[str, str], float], dict[str, float]]:
    """The counters, (group, status) -> attempts, and the histogram's raw fields (one round
    trip). Raises when Redis does not answer."""
    with broker.client() as client, client.pipeline(transaction=False) as pipe:
        pipe.hgetall(FINISHED_KEY)
        pipe.hgetall(DURATION_KEY)
        finished_raw, durations_raw = pipe.execute()
    finished: dict[tuple[str, str], float] = defaultdict(float)
    for field, value in finished_raw.items():
        group, _, status = field.decode().partition("|")
        finished[group, status] += float(value)
    return finished, {field.decode(): float(value) for field, value in durations_raw.items()}

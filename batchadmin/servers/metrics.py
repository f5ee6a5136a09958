"""Prometheus metrics: the /metrics view, and the counters recorded when an attempt finishes.

Gauges (jobs and tasks by status, servers, threads, queue depth, beat) are read at scrape time
from the database and the broker. Counters and the duration histogram cannot be: the history
rows they would come from are deleted by clean-up and by "Save job to history". So the process
that settles an attempt (a worker, or beat when a lease runs out) adds it to two Redis hashes in
one round trip, once the finish has committed. They last as long as the broker's data: a Redis
flush resets them, which Prometheus handles as a counter reset.

Failed attempts are the finished ones with status "error" (retried attempts included); they are
exposed twice, as ``batchadmin_tasks_finished_total{status="error"}`` and, for dashboards that
want one series per group, as ``batchadmin_tasks_failed_total``, both from the same counter.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import redis
from celery import current_task
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, transaction
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils.timezone import now
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from kombu.transport.redis import Channel as RedisChannel
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry
from redis.backoff import NoBackoff
from redis.retry import Retry

from batchadmin.engine import beat
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from batchadmin.servers.models import QUEUE_PREFIX, BatchGroup, BatchServer, BatchServerReplica

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
REDIS_TIMEOUT_SECONDS = 1.0
# After Redis failed, workers stop trying for this long, so an unreachable broker costs a task
# at most one timeout now and then instead of one per task.
PAUSE_AFTER_FAILURE_SECONDS = 5.0


def redis_client(*, retries: int = 0, url: str | None = None) -> redis.Redis:
    """A client of the broker's Redis (or ``url``) that gives up within about a second.

    Not kombu's connection: it keeps retrying a lost broker, which would hang a health check,
    a page, a scrape or a worker finishing its task.
    """
    return redis.Redis.from_url(
        url or settings.CELERY_BROKER_URL,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), retries),
    )


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a kombu queue: one per priority step.

    The same lists kombu's Channel._size counts for scheduler.queue_size(); read here with a
    plain client so a scrape neither hangs on kombu's reconnects nor needs a round trip per
    queue.
    """
    options: dict[str, Any] = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    sep = str(options.get("sep", RedisChannel.sep))
    steps = options.get("priority_steps", RedisChannel.priority_steps)
    prefix = str(options.get("global_keyprefix", ""))
    return [prefix + (f"{queue}{sep}{step}" if step else queue) for step in steps]


def _le(bound: float) -> str:
    """A bucket's upper bound as Prometheus writes it ("0.1", "1.0", "+Inf")."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


# --- recording: workers and beat ------------------------------------------------------------

_recorders: dict[str, redis.Redis] = {}
_paused_until = 0.0
_failing = False


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
        record(group=code, status=status, seconds=seconds)

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


def record(*, group: str, status: str, seconds: float) -> None:
    """Add one attempt to the counters and the histogram. Never raises."""
    global _paused_until, _failing
    if time.monotonic() < _paused_until:
        return
    bucket = next((b for b in BUCKETS if seconds <= b), math.inf)
    try:
        client = _recorders.get(settings.CELERY_BROKER_URL)
        if client is None:
            # One retry: a pooled connection that died with a Redis restart fails once.
            client = _recorders[settings.CELERY_BROKER_URL] = redis_client(retries=1)
        # MULTI/EXEC in one round trip: a scrape never sees half an observation.
        with client.pipeline() as pipe:
            pipe.hincrby(FINISHED_KEY, f"{group}|{status}", 1)
            pipe.hincrby(DURATION_KEY, f"{group}|{_le(bucket)}", 1)
            pipe.hincrby(DURATION_KEY, f"{group}|count", 1)
            pipe.hincrbyfloat(DURATION_KEY, f"{group}|sum", max(seconds, 0.0))
            pipe.execute()
    except Exception as exc:
        _paused_until = time.monotonic() + PAUSE_AFTER_FAILURE_SECONDS
        # Once per outage; the task itself has finished and must not notice.
        level = logging.DEBUG if _failing else logging.WARNING
        log.log(level, "Could not record task metrics in Redis: %s", exc)
        _failing = True
    else:
        _failing = False


# --- scraping -------------------------------------------------------------------------------


class BatchCollector:
    """Every family, computed when scraped. Redis down: the database's families still come out."""

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "batchadmin_up",
            "1 when this scrape could read the component, 0 when it could not.",
            labels=["component"],
        )
        families: list[Metric] = []
        groups: list[str] | None = None
        try:
            db_families, groups = database_families()
        except DatabaseError as exc:
            log.warning("/metrics could not read the database: %s", exc)
            up.add_metric(["database"], 0)
        else:
            families += db_families
            up.add_metric(["database"], 1)
        try:
            families += broker_families(groups)
        except (redis.RedisError, OSError, ValueError) as exc:
            log.warning("/metrics could not read Redis: %s", exc)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
        return [up, *families]


def database_families() -> tuple[list[Metric], list[str]]:
    """The gauges read from the database, and the group codes (for the queue depths)."""
    jobs = GaugeMetricFamily("batchadmin_jobs", "Batch jobs by status.", labels=["status"])
    tasks = GaugeMetricFamily("batchadmin_tasks", "Batch tasks by status.", labels=["status"])
    # One GROUP BY per table; every status is listed, zero or not, so series do not vanish.
    for family, model in ((jobs, BatchJob), (tasks, BatchTask)):
        counts = dict(model.objects.order_by().values_list("status").annotate(n=Count("pk")))
        for status in BatchStatus:
            family.add_metric([status.value], counts.get(status.value, 0))

    online = Q(replicas__last_heartbeat__gte=now() - BatchServerReplica.offline_after())
    servers = (
        BatchServer.objects.order_by("name")
        .annotate(
            online=Count("replicas", filter=online),
            busy=Sum("replicas__busy", filter=online),
            threads=Sum("replicas__concurrency", filter=online),
        )
        .values_list("name", "online", "busy", "threads")
    )
    servers_online = GaugeMetricFamily(
        "batchadmin_servers_online", "Batch servers with at least one replica online."
    )
    replicas = GaugeMetricFamily(
        "batchadmin_server_replicas_online",
        "Replicas (worker processes) of each batch server whose heartbeat is recent.",
        labels=["server"],
    )
    busy = GaugeMetricFamily(
        "batchadmin_threads_busy",
        "Batch threads running a task, over a server's online replicas.",
        labels=["server"],
    )
    total = GaugeMetricFamily(
        "batchadmin_threads_total",
        "Batch threads (worker concurrency), over a server's online replicas.",
        labels=["server"],
    )
    n_online = 0
    for name, n, n_busy, n_threads in servers:
        n_online += n > 0
        replicas.add_metric([name], n)
        busy.add_metric([name], n_busy or 0)
        total.add_metric([name], n_threads or 0)
    servers_online.add_metric([], n_online)
    families: list[Metric] = [jobs, tasks, servers_online, replicas, busy, total]

    last_tick = beat.last_tick()
    if last_tick is not None:
        families.append(
            GaugeMetricFamily(
                "batchadmin_beat_last_tick_timestamp_seconds",
                "Unix time of beat's last successful tick (recorded at most every 5 s).",
                value=last_tick.timestamp(),
            )
        )
    return families, list(BatchGroup.objects.values_list("code", flat=True))


def broker_families(groups: list[str] | None) -> list[Metric]:
    """Counters, the histogram and, when the groups are known, queue depths: one round trip."""
    with redis_client() as client, client.pipeline(transaction=False) as pipe:
        pipe.hgetall(FINISHED_KEY)
        pipe.hgetall(DURATION_KEY)
        for code in groups or []:
            for key in queue_keys(QUEUE_PREFIX + code):
                pipe.llen(key)
        finished_raw, durations_raw, *lengths = pipe.execute()

    finished: dict[tuple[str, str], float] = defaultdict(float)
    for field, value in finished_raw.items():
        group, _, status = field.decode().partition("|")
        finished[group, status] += float(value)
    durations = {field.decode(): float(value) for field, value in durations_raw.items()}
    # Zero series for every known group, so a rate() has a start before the first increment.
    codes = sorted(
        set(groups or []) | {g for g, _ in finished} | {f.split("|")[0] for f in durations}
    )

    finished_family = CounterMetricFamily(
        "batchadmin_tasks_finished",
        "Task attempts settled, by batch group and how they ended (ended, error, canceled).",
        labels=["group", "status"],
    )
    failed_family = CounterMetricFamily(
        "batchadmin_tasks_failed",
        "Task attempts that ended in error (retried ones included), by batch group.",
        labels=["group"],
    )
    duration_family = HistogramMetricFamily(
        "batchadmin_task_duration_seconds",
        "Run time of settled task attempts, claim to finish, by batch group.",
        labels=["group"],
    )
    for code in codes:
        statuses = {str(s) for s in FINISH_STATUSES} | {s for g, s in finished if g == code}
        for status in sorted(statuses):
            finished_family.add_metric([code, status], finished.get((code, status), 0.0))
        failed_family.add_metric([code], finished.get((code, BatchStatus.ERROR.value), 0.0))
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in BUCKETS:
            cumulative += durations.get(f"{code}|{_le(bound)}", 0.0)
            buckets.append((_le(bound), cumulative))
        count = durations.get(f"{code}|count", 0.0)
        buckets.append(("+Inf", count))
        duration_family.add_metric([code], buckets, sum_value=durations.get(f"{code}|sum", 0.0))
    families: list[Metric] = [finished_family, failed_family, duration_family]

    if groups is not None:
        depth = GaugeMetricFamily(
            "batchadmin_queue_depth",
            "Messages waiting in a batch group's queue (not those a worker holds unacked).",
            labels=["group"],
        )
        per_queue = len(queue_keys(QUEUE_PREFIX))
        for i, code in enumerate(groups):
            depth.add_metric([code], sum(lengths[i * per_queue : (i + 1) * per_queue]))
        families.append(depth)
    return families


def _authorized(request: HttpRequest) -> bool:
    token = settings.BATCH_METRICS_TOKEN
    if not token:
        return True
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    # Constant-time: the comparison must not tell a guesser how much of the token was right.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), token.encode()
    )


@login_not_required  # for Prometheus; BATCH_METRICS_TOKEN protects it when set
@never_cache
@require_safe
def scrape(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = HttpResponse(
            "Send the metrics token: Authorization: Bearer <BATCH_METRICS_TOKEN>.\n",
            status=401,
            content_type="text/plain; charset=utf-8",
        )
        response["WWW-Authenticate"] = 'Bearer realm="batchadmin metrics"'
        return response
    # A registry per scrape, not the global default: nothing is registered twice (tests, a
    # reloaded module), and nothing but these families leaks in.
    registry = CollectorRegistry()
    registry.register(BatchCollector())
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(registry), content_type=content_type)

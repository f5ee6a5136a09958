"""The /metrics view: Prometheus text read at scrape time.

Gauges (jobs and tasks by status, servers, threads, queue depth, beat) come from the database
and the broker now. Counters and the duration histogram come from the Redis hashes the engine
adds to when an attempt settles (engine/counters.py says why they cannot be read from history).

Failed attempts are the finished ones with status "error" (retried attempts included); they are
exposed twice, as ``batchadmin_tasks_finished_total{status="error"}`` and, for dashboards that
want one series per group, as ``batchadmin_tasks_failed_total``, both from the same counter.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterable

import redis
from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError
from django.db.models import Count, Q, Sum
from django.http import HttpRequest, HttpResponse
from django.utils.timezone import now
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from batchadmin.engine import beat, counters
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from batchadmin.lib import broker
from batchadmin.servers.models import QUEUE_PREFIX, BatchGroup, BatchServer, BatchServerReplica

log = logging.getLogger(__name__)


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
    """Counters, the histogram and, when the groups are known, queue depths."""
    finished, durations = counters.read()
    lengths = broker.queue_lengths([QUEUE_PREFIX + code for code in groups or []])
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
        statuses = {str(s) for s in counters.FINISH_STATUSES} | {
            s for g, s in finished if g == code
        }
        for status in sorted(statuses):
            finished_family.add_metric([code, status], finished.get((code, status), 0.0))
        failed_family.add_metric([code], finished.get((code, BatchStatus.ERROR.value), 0.0))
        cumulative = 0.0
        buckets: list[tuple[str, float]] = []
        for bound in counters.BUCKETS:
            cumulative += durations.get(f"{code}|{counters.le(bound)}", 0.0)
            buckets.append((counters.le(bound), cumulative))
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
        for code in groups:
            depth.add_metric([code], lengths[QUEUE_PREFIX + code])
        families.append(depth)
    return families


def authorized(request: HttpRequest) -> bool:
    """The request carries BATCH_METRICS_TOKEN (or none is set): /metrics, /healthz detail."""
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
    if not authorized(request):
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

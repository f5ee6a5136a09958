"""/healthz and /metrics from a real gunicorn, beat and worker, on a Redis this test owns.

The shared Redis must never be stopped, so this module starts a private redis-server (no
persistence, tests/e2e/private.py) on a spare port, points a cluster of its own at it, and
stops and restarts it.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import isolation
from tests.e2e.cluster import (
    Cluster,
    create_database,
    drop_database,
    free_port,
    migrate,
    unique,
    wait_for,
)
from tests.e2e.private import PrivateRedis


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, PrivateRedis, str]]:
    """A database and a Redis of this module's own, with beat and gunicorn on them."""
    log_dir = tmp_path_factory.mktemp("ops-logs")
    broker = PrivateRedis(log_dir)
    name = isolation.db_name("batchadmin_ops")
    create_database(name)
    cluster = Cluster(f"postgres://postgres@127.0.0.1:5432/{name}", log_dir, pg_dbname=name)
    cluster.env["CELERY_BROKER_URL"] = broker.url
    try:
        broker.start()
        migrate(cluster.env)
        cluster.start_beat()
        web = cluster.start_web(free_port())
        yield cluster, broker, web
    finally:
        cluster.stop_all()
        broker.stop()
        drop_database(name)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def healthz(web: str) -> tuple[int, dict[str, Any]]:
    status, body = get(web + "/healthz")
    return status, json.loads(body)


def scrape(web: str) -> dict[str, list[Any]]:
    status, body = get(web + "/metrics")
    assert status == 200, body
    return {f.name: f.samples for f in text_string_to_metric_families(body.decode())}


def value(samples: list[Any], name: str, **labels: str) -> float:
    [found] = [s.value for s in samples if s.name == name and s.labels == labels]
    return float(found)


def test_it_serves_metrics_after_a_worker_ran_tasks(ops):
    cluster, broker, web = ops
    server = unique("ops-")
    cluster.start_worker(server, concurrency=2)
    unserved = unique("unserved-")
    [job_id] = cluster.import_jobs(
        {"groups": [{"code": unserved, "description": "no server", "servers": []}],
         "jobs": [{"description": "metrics", "tasks": [
             {"key": "A", "description": "a", "process": "demo.noop"},
             {"key": "B", "description": "b", "process": "demo.sleep", "parameters": {"seconds": 0.6}},
             {"key": "C", "description": "c", "process": "demo.fail",
              "parameters": {"message": "planned"}, "ignore_failure": True},
         ]}]}
    )  # fmt: skip
    assert cluster.wait(job_id) == "ended"
    [stuck_id] = cluster.import_jobs(
        {"description": "nobody serves this group",
         "tasks": [{"key": "U", "description": "u", "process": "demo.noop", "group": unserved}]}
    )  # fmt: skip

    samples = wait_for(
        lambda: (
            (s := scrape(web))
            and value(s["batchadmin_queue_depth"], "batchadmin_queue_depth", group=unserved) == 1
            # Workers write their counts every BATCH_METRICS_FLUSH_SECONDS, not per attempt.
            and value(
                s["batchadmin_tasks_finished"],
                "batchadmin_tasks_finished_total",
                group="default",
                status="error",
            )
            == 1
            and s
        ),
        timeout=30,
        what="the unserved group's message in its queue and the worker's counts",
    )
    up = samples["batchadmin_up"]
    assert value(up, "batchadmin_up", component="database") == 1
    assert value(up, "batchadmin_up", component="broker") == 1
    finished = samples["batchadmin_tasks_finished"]
    total = "batchadmin_tasks_finished_total"
    assert value(finished, total, group="default", status="ended") == 2
    assert value(finished, total, group="default", status="error") == 1
    assert value(finished, total, group=unserved, status="ended") == 0
    failed = samples["batchadmin_tasks_failed"]
    assert value(failed, "batchadmin_tasks_failed_total", group="default") == 1
    durations = samples["batchadmin_task_duration_seconds"]
    assert value(durations, "batchadmin_task_duration_seconds_count", group="default") == 3
    # The sleeper alone ran 0.6 s: the sum is at least that, and it is past the 0.5 s bucket.
    assert value(durations, "batchadmin_task_duration_seconds_sum", group="default") >= 0.6
    bucket = "batchadmin_task_duration_seconds_bucket"
    assert value(durations, bucket, group="default", le="0.5") <= 2
    assert value(durations, bucket, group="default", le="+Inf") == 3
    jobs = samples["batchadmin_jobs"]
    assert value(jobs, "batchadmin_jobs", status="ended") >= 1
    assert value(jobs, "batchadmin_jobs", status="executing") >= 1  # the unserved one
    assert value(samples["batchadmin_tasks"], "batchadmin_tasks", status="ready") >= 1
    assert value(samples["batchadmin_servers_online"], "batchadmin_servers_online") >= 1
    replicas = samples["batchadmin_server_replicas_online"]
    assert value(replicas, "batchadmin_server_replicas_online", server=server) == 1
    threads = samples["batchadmin_threads_total"]
    assert value(threads, "batchadmin_threads_total", server=server) == 2
    last_tick = samples["batchadmin_beat_last_tick_timestamp_seconds"]
    age = time.time() - value(last_tick, "batchadmin_beat_last_tick_timestamp_seconds")
    assert age < 60
    assert cluster.show(stuck_id)["status"] == "executing"


def test_it_turns_unhealthy_while_redis_is_down(ops):
    cluster, broker, web = ops
    status, body = wait_for(
        lambda: (r := healthz(web))[0] == 200 and r, timeout=60, what="/healthz to answer 200"
    )
    assert body["status"] == "ok"
    assert all(check["ok"] for check in body["checks"].values())

    broker.stop()
    try:
        status, body = wait_for(
            lambda: (r := healthz(web))[0] == 503 and r, timeout=30, what="/healthz to say 503"
        )
        assert body["status"] == "fail"
        assert body["checks"]["broker"]["ok"] is False
        assert "Connection refused" in body["checks"]["broker"]["error"]
        assert body["checks"]["database"]["ok"] is True
        # Metrics still come out, from the database; the broker is reported down.
        samples = scrape(web)
        up = samples["batchadmin_up"]
        assert value(up, "batchadmin_up", component="broker") == 0
        assert value(up, "batchadmin_up", component="database") == 1
        assert "batchadmin_jobs" in samples
    finally:
        broker.start()
    status, body = wait_for(
        lambda: (r := healthz(web))[0] == 200 and r,
        timeout=60,
        what="/healthz to recover once Redis is back",
    )
    assert body["checks"]["broker"]["ok"] is True


def finished_counts(broker: PrivateRedis, group: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(broker.url, decode_responses=True)
    raw: dict[str, str] = client.hgetall("batchadmin:metrics:finished")  # type: ignore[assignment]
    return {k.split("|")[1]: int(v) for k, v in raw.items() if k.startswith(f"{group}|")}


def test_a_worker_killed_before_it_writes_its_counts_loses_them_but_no_attempt(ops):
    """Workers add settled attempts to /metrics' counters on a timer (engine/counters.py). A
    worker killed between a finish and that write loses the counts of the interval, never an
    attempt; a warm shutdown writes them."""
    cluster, broker, _web = ops
    slow = {"BATCH_METRICS_FLUSH_SECONDS": "3600"}  # in effect: only at shutdown

    def run_job_on_a_server_of_its_own() -> tuple[str, int, str]:
        server, group = unique("tally-"), unique("tally-")
        cluster.import_jobs(
            {"groups": [{"code": group, "description": "tally", "servers": [server]}]}
        )
        node = cluster.start_worker(server, concurrency=2, env=slow)
        [job_id] = cluster.import_jobs(
            {"description": "tally", "tasks": [
                {"key": k, "description": k, "process": "demo.noop", "group": group}
                for k in ("A", "B", "C")
            ]}
        )  # fmt: skip
        assert cluster.wait(job_id) == "ended"
        return node, job_id, group

    node, job_id, group = run_job_on_a_server_of_its_own()
    cluster.kill(node)  # SIGKILL: no warm shutdown, the tally is gone
    attempts = cluster.rows(
        "SELECT r.status FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id "
        "WHERE t.job_id = %s",
        job_id,
    )
    assert attempts == [("ended",)] * 3  # every attempt recorded, once
    assert finished_counts(broker, group) == {}

    node, job_id, group = run_job_on_a_server_of_its_own()
    assert finished_counts(broker, group) == {}  # not yet: an hour's interval
    cluster.stop(node)  # SIGTERM: the warm shutdown writes the tally
    assert finished_counts(broker, group) == {"ended": 3}

from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import redis
from django.db import DatabaseError
from django.test import override_settings
from django.utils.timezone import now
from django_celery_beat.models import PeriodicTask
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from batchadmin.engine import beat, counters, tick, transitions
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from batchadmin.lib import broker
from batchadmin.servers import metrics
from batchadmin.servers.models import BatchGroup, BatchServer, BatchServerReplica
from tests import isolation
from tests.base import HOSTNAME, BaseTestCase, run, start

S = BatchStatus
# Counters go to a Redis database of the test run's own (E2E_REDIS_URL), never to the broker's.
REDIS_URL = isolation.E2E_REDIS_URL
DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
RECORD = counters.record  # the real one, even if BaseTestCase stubs it for other tests


def scrape(client: Any, **headers: str) -> dict[str, list[Any]]:
    """GET /metrics, parsed by prometheus-client's own parser: family name -> samples."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.content
    families = text_string_to_metric_families(response.content.decode())
    return {family.name: family.samples for family in families}


def value(samples: list[Any], name: str | None = None, **labels: str) -> float:
    found = [s.value for s in samples if s.labels == labels and (name is None or s.name == name)]
    assert len(found) == 1, (name, labels, samples)
    return float(found[0])


class RedisTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(override_settings(CELERY_BROKER_URL=REDIS_URL))
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.queues: list[str] = []
        self.clear()
        self.addCleanup(self.clear)
        self.enterContext(mock.patch.object(counters, "record", RECORD))
        # A failure to reach Redis in another test pauses recording; not in this one.
        self.enterContext(mock.patch.object(counters, "_paused_until", 0.0))
        # Jobs that end here queue alert messages: keep them out of any broker.
        self.enterContext(mock.patch("batchadmin.alerts.outbox.send"))

    def clear(self) -> None:
        keys = [counters.FINISHED_KEY, counters.DURATION_KEY]
        for queue in self.queues:
            keys += broker.queue_keys(queue)
            keys += [f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}"]
        self.redis.delete(*keys)


class FinishedTasksTestCase(RedisTestCase):
    def test_it_counts_attempts_by_group_and_status_after_the_finish_commits(self):
        nightly = BatchGroup.objects.create(code="nightly")
        self.server.groups.add(nightly)
        job = self.make_job()
        self.make_task(job, "OK")
        failing = self.make_task(
            job,
            "F",
            process="demo.fail",
            parameters={"message": "no"},
            max_retries=1,
            group=nightly,
        )
        start(job)
        with self.captureOnCommitCallbacks(execute=True):
            for task in job.tasks.order_by("key"):
                assert run(task)
            BatchTask.objects.filter(pk=failing.pk).update(ready_at=None)  # skip the backoff
            assert run(failing)  # the retry fails too
            assert self.redis.exists(counters.FINISHED_KEY) == 0  # not before the commit

        samples = scrape(self.client)
        finished = samples["batchadmin_tasks_finished"]
        assert value(finished, group="default", status="ended") == 1
        assert value(finished, group="nightly", status="error") == 2  # the retried attempt too
        assert value(finished, group="nightly", status="ended") == 0
        assert value(finished, group="default", status="canceled") == 0
        failed = samples["batchadmin_tasks_failed"]
        assert value(failed, "batchadmin_tasks_failed_total", group="nightly") == 2
        assert value(failed, group="default") == 0
        durations = samples["batchadmin_task_duration_seconds"]
        count = "batchadmin_task_duration_seconds_count"
        assert value(durations, count, group="nightly") == 2
        assert value(durations, count, group="default") == 1
        # A demo process ends in well under a second.
        assert (
            value(durations, "batchadmin_task_duration_seconds_bucket", group="nightly", le="1.0")
            == 2
        )

    def test_it_counts_an_attempt_whose_server_was_lost_as_an_error(self):
        job = self.make_job()
        task = self.make_task(job, "T1")
        start(job)
        claimed = transitions.claim_task(
            task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME
        )
        assert claimed is not None and claimed.started_at is not None
        at = claimed.started_at + dt.timedelta(seconds=90)
        with (
            self.captureOnCommitCallbacks(execute=True),
            self.assertLogs("batchadmin.engine.tick", "WARNING"),
        ):
            assert tick.handle_expired_leases(at) == 1
        durations = scrape(self.client)["batchadmin_task_duration_seconds"]
        assert (
            value(scrape(self.client)["batchadmin_tasks_finished"], group="default", status="error")
            == 1
        )
        bucket = "batchadmin_task_duration_seconds_bucket"
        assert value(durations, bucket, group="default", le="60.0") == 0
        assert value(durations, bucket, group="default", le="300.0") == 1
        assert value(durations, "batchadmin_task_duration_seconds_sum", group="default") == 90

    def test_it_keeps_the_histogram_buckets_cumulative(self):
        for seconds in (0.05, 0.7, 0.7, 20, 4000):
            counters.record(group="default", status="ended", seconds=seconds)
        durations = scrape(self.client)["batchadmin_task_duration_seconds"]
        buckets = [
            (s.labels["le"], s.value)
            for s in durations
            if s.name.endswith("_bucket") and s.labels["group"] == "default"
        ]
        assert buckets == [
            ("0.1", 1), ("0.5", 1), ("1.0", 3), ("5.0", 3), ("15.0", 3), ("60.0", 4),
            ("300.0", 4), ("900.0", 4), ("3600.0", 4), ("+Inf", 5),
        ]  # fmt: skip
        assert value(durations, "batchadmin_task_duration_seconds_count", group="default") == 5
        assert value(durations, "batchadmin_task_duration_seconds_sum", group="default") == (
            0.05 + 0.7 + 0.7 + 20 + 4000
        )

    def test_it_lists_every_group_before_its_first_task(self):
        BatchGroup.objects.create(code="reports")
        samples = scrape(self.client)
        assert value(samples["batchadmin_tasks_finished"], group="reports", status="ended") == 0
        assert value(samples["batchadmin_tasks_failed"], group="reports") == 0
        bucket = "batchadmin_task_duration_seconds_bucket"
        assert (
            value(samples["batchadmin_task_duration_seconds"], bucket, group="reports", le="+Inf")
            == 0
        )


class GaugesTestCase(RedisTestCase):
    def test_it_counts_jobs_and_tasks_by_status(self):
        job = self.make_job()
        self.make_task(job, "T1")
        self.make_task(job, "T2")
        self.make_job(status=S.WITHHOLD)
        start(job)
        samples = scrape(self.client)
        jobs, tasks = samples["batchadmin_jobs"], samples["batchadmin_tasks"]
        # Every status is listed, zero or not (migrations may seed jobs of their own).
        assert {s.labels["status"] for s in jobs} == {s.value for s in S}
        assert {s.labels["status"] for s in tasks} == {s.value for s in S}
        for status in S:
            assert value(jobs, status=status) == BatchJob.objects.filter(status=status).count()
            assert value(tasks, status=status) == BatchTask.objects.filter(status=status).count()
        assert value(jobs, status="executing") == 1
        assert value(jobs, status="withhold") >= 1
        assert value(tasks, status="ready") == 2

    def test_it_counts_online_servers_replicas_and_threads(self):
        aos2 = BatchServer.objects.create(name="aos2")
        BatchServer.objects.create(name="aos3")  # no replica at all
        stale = now() - dt.timedelta(minutes=5)
        for hostname, busy, threads, heartbeat in [
            ("aos1@host1", 1, 4, now()),
            ("aos1@host2", 3, 4, now()),
            ("aos1@host3", 8, 8, stale),  # offline: does not count
            ("aos2@host1", 0, 2, stale),
        ]:
            BatchServerReplica.objects.create(
                server=aos2 if hostname.startswith("aos2") else self.server,
                hostname=hostname,
                busy=busy,
                concurrency=threads,
                last_heartbeat=heartbeat,
            )
        samples = scrape(self.client)
        assert value(samples["batchadmin_servers_online"]) == 1
        replicas = samples["batchadmin_server_replicas_online"]
        assert [value(replicas, server=n) for n in ("aos1", "aos2", "aos3")] == [2, 0, 0]
        assert value(samples["batchadmin_threads_busy"], server="aos1") == 4
        assert value(samples["batchadmin_threads_total"], server="aos1") == 8
        assert value(samples["batchadmin_threads_total"], server="aos2") == 0

    def test_it_reports_beat_last_tick(self):
        at = dt.datetime(2025, 3, 1, 9, 0, 5, tzinfo=dt.UTC)
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(last_run_at=at)
        samples = scrape(self.client)
        assert value(samples["batchadmin_beat_last_tick_timestamp_seconds"]) == at.timestamp()
        assert value(samples["batchadmin_up"], component="database") == 1
        assert value(samples["batchadmin_up"], component="broker") == 1

    def test_it_counts_messages_in_every_priority_sub_queue_as_kombu_does(self):
        nightly = BatchGroup.objects.create(code="nightly")
        queue = Queue(nightly.queue_name, Exchange(nightly.queue_name), nightly.queue_name)
        self.queues.append(queue.name)
        with Connection(REDIS_URL) as conn:
            producer = conn.Producer()
            for priority in (0, 5, 9):  # three of kombu's Redis lists for one queue
                producer.publish({"n": priority}, routing_key=queue.name, declare=[queue], priority=priority)  # fmt: skip
            channel: Any = conn.default_channel  # kombu's stubs know only the abstract channel
            in_kombu = channel.queue_declare(queue=queue.name, passive=True)
        assert in_kombu.message_count == 3
        depth = scrape(self.client)["batchadmin_queue_depth"]
        assert value(depth, group="nightly") == 3
        assert value(depth, group="default") == 0


class DegradedTestCase(BaseTestCase):
    def test_it_still_reports_the_database_when_redis_is_down(self):
        self.make_job()
        with (
            override_settings(CELERY_BROKER_URL=DOWN_URL),
            self.assertLogs("batchadmin.servers.metrics", "WARNING") as logs,
        ):
            samples = scrape(self.client)
        assert "could not read Redis" in logs.output[0]
        assert value(samples["batchadmin_up"], component="broker") == 0
        assert value(samples["batchadmin_up"], component="database") == 1
        waiting = BatchJob.objects.filter(status=S.WAITING).count()
        assert value(samples["batchadmin_jobs"], status="waiting") == waiting > 0
        assert "batchadmin_queue_depth" not in samples
        assert "batchadmin_tasks_finished" not in samples

    def test_it_still_reports_redis_when_the_database_is_down(self):
        with (
            override_settings(CELERY_BROKER_URL=REDIS_URL),
            mock.patch.object(metrics, "database_families", side_effect=DatabaseError("down")),
            self.assertLogs("batchadmin.servers.metrics", "WARNING"),
        ):
            samples = scrape(self.client)
        assert value(samples["batchadmin_up"], component="database") == 0
        assert value(samples["batchadmin_up"], component="broker") == 1
        assert "batchadmin_jobs" not in samples
        assert "batchadmin_tasks_finished" in samples
        assert "batchadmin_queue_depth" not in samples  # the groups come from the database


class AccessTestCase(BaseTestCase):
    def test_it_needs_no_sign_in_without_a_token(self):
        with override_settings(CELERY_BROKER_URL=DOWN_URL):
            response = self.client.get("/metrics")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/plain; version=0.0.4")
        assert "no-cache" in response["Cache-Control"]

    @override_settings(BATCH_METRICS_TOKEN="s3cret-token", CELERY_BROKER_URL=DOWN_URL)
    def test_it_asks_for_the_token_when_one_is_set(self):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
            response = self.client.get("/metrics", headers=headers)
            assert response.status_code == 401
            assert response["WWW-Authenticate"].startswith("Bearer")
            assert b"batchadmin_jobs" not in response.content
        self.client.force_login(self.alice)  # a session is no substitute for the token
        assert self.client.get("/metrics").status_code == 401
        samples = scrape(self.client, Authorization="Bearer s3cret-token")
        assert "batchadmin_jobs" in samples

    @override_settings(CELERY_BROKER_URL=DOWN_URL)
    def test_it_speaks_openmetrics_when_asked(self):
        response = self.client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
        assert response["Content-Type"].startswith("application/openmetrics-text")
        assert response.content.endswith(b"# EOF\n")

    def test_it_only_answers_get(self):
        assert self.client.post("/metrics").status_code == 405

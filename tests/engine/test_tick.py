from __future__ import annotations

import datetime as dt
from unittest import mock

import redis
import time_machine
from django.conf import settings
from django.test import override_settings
from django.utils.timezone import now

from batchadmin.engine import tick, transitions
from batchadmin.engine.dispatch import NORMAL_STEP
from batchadmin.engine.transitions import SERVER_LOST, Outcome
from batchadmin.jobs.models import BatchJobRun, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.lib import broker
from batchadmin.servers.models import BatchGroup, Priority
from tests.base import HOSTNAME, BaseTestCase, start, statuses

S = BatchStatus
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
LEASE = dt.timedelta(seconds=settings.BATCH_LEASE_SECONDS)


class HandleDueJobsTestCase(BaseTestCase):
    def test_it_starts_a_job_once_its_scheduled_start_has_passed(self):
        job = self.make_job(scheduled_start=NINE)
        t1 = self.make_task(job, "T1")
        with time_machine.travel(NINE - dt.timedelta(seconds=1), tick=False):
            assert tick.handle_due_jobs(now()) == 0
        job.refresh_from_db()
        assert job.status == S.WAITING

        with (
            time_machine.travel(NINE, tick=False),
            self.captureOnCommitCallbacks(execute=True),
        ):
            assert tick.handle_due_jobs(now()) == 1
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert job.started_at == NINE
        self.send.assert_called_once_with([(t1.pk, "batch.default", NORMAL_STEP)])

    def test_it_does_not_start_a_job_scheduled_in_the_future(self):
        with time_machine.travel(NINE, tick=False):
            job = self.make_job(scheduled_start=NINE + dt.timedelta(days=1))
            self.make_task(job, "T1")
            assert tick.handle_due_jobs(now()) == 0
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert not BatchJobRun.objects.exists()

    def test_it_does_not_start_a_withheld_job(self):
        job = self.make_job(scheduled_start=NINE, status=S.WITHHOLD)
        assert tick.handle_due_jobs(NINE + dt.timedelta(hours=1)) == 0
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    @override_settings(BATCH_TICK_LIMIT=1)
    def test_it_starts_the_highest_priority_first(self):
        normal = self.make_job(scheduled_start=NINE - dt.timedelta(hours=1))
        high = self.make_job(scheduled_start=NINE, priority=30, priority_overridden=True)
        for job in (normal, high):
            self.make_task(job, "T1")
        assert tick.handle_due_jobs(NINE) == 1
        assert statuses(high) == {"T1": S.READY}
        assert statuses(normal) == {"T1": S.WAITING}
        assert tick.handle_due_jobs(NINE) == 1
        assert statuses(normal) == {"T1": S.READY}

    @override_settings(BATCH_TICK_LIMIT=1)
    def test_it_orders_by_the_priority_the_tasks_run_with_not_the_raw_job_field(self):
        # A job's own priority only counts when it overrides its groups' (D365); otherwise its
        # tasks run with their group's default, and so the start order follows that.
        urgent = BatchGroup.objects.create(code="Urgent", default_priority=Priority.CRITICAL)
        stale_field = self.make_job(scheduled_start=NINE - dt.timedelta(hours=1), priority=30)
        low = self.make_job(
            scheduled_start=NINE - dt.timedelta(hours=2), priority=10, priority_overridden=True
        )
        by_group = self.make_job(scheduled_start=NINE)
        self.make_task(stale_field, "T1")
        self.make_task(low, "T1")
        self.make_task(by_group, "T1")
        self.make_task(by_group, "T2", group=urgent)
        started = []
        for _ in range(3):
            assert tick.handle_due_jobs(NINE) == 1
            started += [
                j
                for j in (stale_field, low, by_group)
                if statuses(j)["T1"] == S.READY and j not in started
            ]
        assert started == [by_group, stale_field, low]

    def test_it_starts_the_other_jobs_when_one_cannot_start(self):
        broken = self.make_job(scheduled_start=NINE - dt.timedelta(minutes=1))
        fine = self.make_job(scheduled_start=NINE)
        real = transitions.start_job

        def start_job(*, job_id, at=None):
            if job_id == broken.pk:
                raise RuntimeError("database hiccup")
            return real(job_id=job_id, at=at)

        with (
            mock.patch.object(transitions, "start_job", side_effect=start_job),
            self.assertLogs("batchadmin.engine.tick", "ERROR") as logs,
        ):
            assert tick.handle_due_jobs(NINE) == 1
        assert f"Could not start batch job {broken.pk}" in logs.output[0]
        fine.refresh_from_db()
        assert fine.status == S.ENDED  # no tasks: started and ended at once

    def test_it_starts_due_jobs_together_and_sends_their_first_tasks_in_one_send(self):
        jobs = [self.make_job(scheduled_start=NINE) for _ in range(3)]
        firsts = [self.make_task(job, "T1") for job in jobs]
        with self.captureOnCommitCallbacks(execute=True):
            assert tick.handle_due_jobs(NINE) == 3
        # One send after the batch's commit: dispatch.send packs them into shared messages.
        self.send.assert_called_once_with([(t.pk, "batch.default", NORMAL_STEP) for t in firsts])
        assert [statuses(job) for job in jobs] == [{"T1": S.READY}] * 3

    @mock.patch.object(tick, "START_BATCH", 2)
    def test_a_job_that_fails_in_a_batch_rolls_only_its_own_start_back(self):
        broken = self.make_job(scheduled_start=NINE - dt.timedelta(minutes=1))
        fine = self.make_job(scheduled_start=NINE)
        later = self.make_job(scheduled_start=NINE)
        for job in (broken, fine, later):
            self.make_task(job, "T1")
        real = transitions.start_job
        calls: list[int] = []

        def start_job(*, job_id, at=None):
            calls.append(job_id)
            if job_id == broken.pk:
                raise RuntimeError("database hiccup")
            return real(job_id=job_id, at=at)

        with (
            mock.patch.object(transitions, "start_job", side_effect=start_job),
            self.captureOnCommitCallbacks(execute=True),
            self.assertLogs("batchadmin.engine.tick", "ERROR"),
        ):
            assert tick.handle_due_jobs(NINE) == 2
        # The first batch (broken, fine) rolled back and ran again one job at a time.
        assert calls == [broken.pk, broken.pk, fine.pk, later.pk]
        assert statuses(broken) == {"T1": S.WAITING}
        assert statuses(fine) == statuses(later) == {"T1": S.READY}
        sent = [c.args[0] for c in self.send.call_args_list]
        assert sorted(m[0] for batch in sent for m in batch) == sorted(
            BatchTask.objects.filter(job__in=[fine, later]).values_list("pk", flat=True)
        )

    def test_it_costs_one_query_when_nothing_is_due(self):
        with self.assertNumQueries(1):
            assert tick.handle_due_jobs(NINE) == 0
        for n in range(20):
            self.make_job(scheduled_start=NINE + dt.timedelta(minutes=n + 1))
            self.make_job(status=S.WITHHOLD, scheduled_start=NINE)
        with self.assertNumQueries(1):
            assert tick.handle_due_jobs(NINE) == 0


class HandleExpiredLeasesTestCase(BaseTestCase):
    def claim(self, max_retries: int) -> BatchTask:
        job = self.make_job(scheduled_start=NINE)
        task = self.make_task(job, "T1", max_retries=max_retries)
        assert transitions.start_job(job_id=job.pk, at=NINE)
        assert transitions.claim_task(
            task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=NINE
        )
        return task

    def test_it_leaves_a_task_with_a_live_lease_alone(self):
        task = self.claim(max_retries=0)
        assert tick.handle_expired_leases(NINE + LEASE) == 0
        task.refresh_from_db()
        assert task.status == S.EXECUTING

    def test_it_retries_a_task_whose_server_was_lost(self):
        task = self.claim(max_retries=1)
        at = NINE + LEASE + dt.timedelta(seconds=1)
        with self.assertLogs("batchadmin.engine.tick", "WARNING"):
            assert tick.handle_expired_leases(at) == 1
        task.refresh_from_db()
        assert task.status == S.READY
        assert task.retries == 1
        assert task.dispatched_at is None
        assert task.ready_at == at + transitions.backoff(1)
        task_run = BatchTaskRun.objects.get(task=task)
        assert task_run.status == S.ERROR
        assert task_run.error_message == SERVER_LOST
        assert task_run.error_message.startswith("Batch server lost")

    def test_it_fails_a_lost_task_without_retries_left(self):
        task = self.claim(max_retries=0)
        with self.assertLogs("batchadmin.engine.tick", "WARNING"):
            assert tick.handle_expired_leases(NINE + LEASE + dt.timedelta(seconds=1)) == 1
        task.refresh_from_db()
        assert task.status == S.ERROR
        assert task.job.status == S.ERROR
        assert BatchTaskRun.objects.get(task=task).error_message.startswith("Batch server lost")

    def test_it_discards_the_late_result_of_the_lost_attempt(self):
        task = self.claim(max_retries=1)
        with self.assertLogs("batchadmin.engine.tick", "WARNING"):
            tick.handle_expired_leases(NINE + LEASE + dt.timedelta(seconds=1))
        # The worker was only slow, not dead, and reports after all.
        assert not transitions.finish_task(task_id=task.pk, attempt=1, outcome=Outcome())
        task.refresh_from_db()
        assert (task.status, task.retries) == (S.READY, 1)

    def test_it_renews_the_leases_of_running_tasks(self):
        task = self.claim(max_retries=0)
        other = self.make_task(task.job, "T2")  # waiting: has no lease to renew
        later = NINE + LEASE / 2
        assert transitions.renew_leases(task_ids=[task.pk, other.pk], at=later) == 1
        task.refresh_from_db()
        assert task.lease_expires_at == later + LEASE
        assert tick.handle_expired_leases(NINE + LEASE + dt.timedelta(seconds=1)) == 0

    def test_it_expires_a_lease_once(self):
        task = self.claim(max_retries=0)
        at = NINE + LEASE + dt.timedelta(seconds=1)
        assert transitions.expire_lease(task_id=task.pk, attempt=1, at=at)
        assert not transitions.expire_lease(task_id=task.pk, attempt=1, at=at)


class HandleReadyTasksTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.nightly = BatchGroup.objects.create(code="nightly")
        self.job = self.make_job(scheduled_start=NINE)
        self.task = self.make_task(self.job, "T1", group=self.nightly)
        start(self.job)
        # A failed attempt waiting for its retry: ready, but no message sent yet.
        BatchTask.objects.filter(pk=self.task.pk).update(
            dispatched_at=None, ready_at=NINE + dt.timedelta(seconds=10), retries=1
        )

    def test_it_sends_a_retry_once_its_backoff_is_over(self):
        at = NINE + dt.timedelta(seconds=10)
        assert tick.handle_ready_tasks(at) == 1
        self.send.assert_called_once_with([(self.task.pk, "batch.nightly", NORMAL_STEP)])
        self.task.refresh_from_db()
        assert self.task.dispatched_at == at

    def test_it_does_not_send_a_retry_during_its_backoff(self):
        assert tick.handle_ready_tasks(NINE + dt.timedelta(seconds=9)) == 0
        self.send.assert_not_called()

    def test_it_sends_a_retry_once(self):
        at = NINE + dt.timedelta(seconds=10)
        assert tick.handle_ready_tasks(at) == 1
        assert tick.handle_ready_tasks(at + dt.timedelta(seconds=1)) == 0
        assert self.send.call_count == 1

    def test_it_sends_every_due_retry_to_its_group_queue(self):
        other = self.make_job(scheduled_start=NINE)
        t2 = self.make_task(other, "T1")
        start(other)
        BatchTask.objects.filter(pk=t2.pk).update(dispatched_at=None, ready_at=NINE)
        assert tick.handle_ready_tasks(NINE + dt.timedelta(minutes=1)) == 2
        (sent,), _ = self.send.call_args
        assert sorted(msg[:2] for msg in sent) == sorted(
            [(self.task.pk, "batch.nightly"), (t2.pk, "batch.default")]
        )


class HandleLostMessagesTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.job = self.make_job(scheduled_start=NINE)
        self.task = self.make_task(self.job, "T1")
        assert transitions.start_job(job_id=self.job.pk, at=NINE)
        self.later = NINE + dt.timedelta(seconds=settings.BATCH_REDISPATCH_AFTER_SECONDS + 1)

    def test_it_resends_a_message_lost_from_an_empty_queue(self):
        with mock.patch.object(broker, "queue_length", return_value=0) as queue_size:
            assert tick.handle_lost_messages(self.later) == 1
        queue_size.assert_called_once_with("batch.default")
        (sent,), _ = self.send.call_args
        assert [msg[:2] for msg in sent] == [(self.task.pk, "batch.default")]
        self.task.refresh_from_db()
        assert self.task.dispatched_at == self.later

    def test_it_does_not_resend_while_the_queue_holds_messages(self):
        with mock.patch.object(broker, "queue_length", return_value=3):
            assert tick.handle_lost_messages(self.later) == 0
        self.send.assert_not_called()

    def test_a_broker_that_is_down_costs_a_warning_not_the_rest_of_the_tick(self):
        # Found by the chaos soak: the queue read raised, and the tick stopped there, so
        # stranded tasks and jobs waited for Redis too.
        down = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379")
        stranded = self.make_job(scheduled_start=NINE)
        self.make_task(stranded, "T1")
        assert transitions.start_job(job_id=stranded.pk, at=NINE)
        BatchTask.objects.filter(job=stranded).update(status=S.ENDED)  # a worker died mid-way
        with (
            mock.patch.object(tick, "close_old_connections"),  # it would end the test's transaction
            mock.patch.object(broker, "queue_length", side_effect=down),
            self.assertLogs("batchadmin.engine.tick", "WARNING") as logs,
        ):
            counts = tick.tick(self.later)
        assert counts["resent"] == 0 and counts["settled"] == 1
        assert "Could not read the queues" in logs.output[0]
        self.send.assert_not_called()

    def test_it_does_not_resend_a_recent_message(self):
        with mock.patch.object(broker, "queue_length", return_value=0) as queue_size:
            assert tick.handle_lost_messages(NINE + dt.timedelta(seconds=1)) == 0
        queue_size.assert_not_called()


class HandleStrandedTestCase(BaseTestCase):
    def test_it_settles_a_running_job_without_open_tasks(self):
        job = self.make_job(scheduled_start=NINE)
        t1 = self.make_task(job, "T1")
        start(job)
        # A worker died between settling its task and settling the job.
        BatchTask.objects.filter(pk=t1.pk).update(status=S.ERROR)
        assert tick.handle_stranded_jobs(NINE + dt.timedelta(minutes=1)) == 1
        job.refresh_from_db()
        assert job.status == S.ERROR
        assert job.ended_at == NINE + dt.timedelta(minutes=1)
        assert BatchJobRun.objects.get(job=job).status == S.ERROR
        assert tick.handle_stranded_jobs(NINE + dt.timedelta(minutes=2)) == 0

    def test_it_settles_a_canceling_job_as_canceled(self):
        job = self.make_job(scheduled_start=NINE)
        t1 = self.make_task(job, "T1")
        start(job)
        assert transitions.claim_task(task_id=t1.pk, server_id=None, hostname="")
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        BatchTask.objects.filter(pk=t1.pk).update(status=S.CANCELED)
        assert tick.handle_stranded_jobs(NINE) == 1
        job.refresh_from_db()
        assert job.status == S.CANCELED

    def test_it_leaves_a_job_with_open_tasks_running(self):
        job = self.make_job(scheduled_start=NINE)
        self.make_task(job, "T1")
        start(job)
        assert tick.handle_stranded_jobs(NINE) == 0
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_it_releases_tasks_left_waiting_after_their_parents_finished(self):
        job = self.make_job(scheduled_start=NINE)
        t1 = self.make_task(job, "T1")
        t2 = self.make_task(job, "T2")
        t3 = self.make_task(job, "T3")
        self.add_condition(t2, t1, "ended")
        self.add_condition(t3, t1, "error")
        start(job)
        # A crash between settling T1 and releasing its dependents.
        BatchTask.objects.filter(pk=t1.pk).update(status=S.ENDED)
        with self.captureOnCommitCallbacks(execute=True):
            assert tick.handle_stranded_tasks() == 2
        assert statuses(job) == {"T1": S.ENDED, "T2": S.READY, "T3": S.NOT_RUN}
        self.send.assert_called_once_with([(t2.pk, "batch.default", NORMAL_STEP)])


class TickTestCase(BaseTestCase):
    def test_it_runs_every_handler(self):
        job = self.make_job(scheduled_start=NINE)
        self.make_task(job, "T1")
        # close_old_connections() would close the test's transaction (autocommit is off in it).
        with (
            mock.patch.object(tick, "close_old_connections"),
            mock.patch.object(broker, "queue_length", return_value=0),
        ):
            counts = tick.tick(NINE)
        assert counts == {
            "withheld": 0,
            "resumed": 0,
            "overlaps": 0,
            "started": 1,
            "queued_started": 0,
            "leases_expired": 0,
            "overdue": 0,
            "dispatched": 0,
            "resent": 0,
            "aged": 0,
            "released": 0,
            "settled": 0,
            "running_long": 0,
            "unserved": 0,
            "deadlines": 0,
            "alerts_resent": 0,
        }
        assert statuses(job) == {"T1": S.READY}

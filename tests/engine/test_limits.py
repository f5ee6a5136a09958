"""Max concurrency of a batch group (D365 batch concurrency control): 0 = no limit, N = at most N
tasks of each job at once, -1 = paused. Dispatch holds tasks back (limits.py); the claim is the
authoritative check, under the job lock."""

from __future__ import annotations

import datetime as dt
import threading
import unittest
from unittest import mock

from django.contrib.auth.models import User
from django.db import connection
from django.test import TransactionTestCase
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.engine import explain, limits, priority, tick, transitions
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, Company
from batchadmin.lib import broker
from batchadmin.servers.models import BatchGroup
from tests.base import HOSTNAME, BaseTestCase, start
from tests.engine.test_explain import ExplainTestCase, texts

S = BatchStatus


def sent_ids(send: mock.Mock) -> list[int]:
    return [msg[0] for call in send.call_args_list for msg in call.args[0]]


class LimitsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.reporting = BatchGroup.objects.create(code="Reporting", max_concurrency=2)
        self.job = self.make_job()
        self.tasks = [self.make_task(self.job, f"T{i}", group=self.reporting) for i in range(5)]

    def set_limit(self, value: int) -> None:
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=value)
        priority.clear_cache()

    def start_job(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            start(self.job)

    def held(self) -> set[str]:
        return set(
            self.job.tasks.filter(status=S.READY, dispatched_at=None).values_list("key", flat=True)
        )

    def claim(self, task: BatchTask) -> transitions.Claim | None:
        return transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)

    def finish(self, task: BatchTask, error: str = "") -> None:
        task.refresh_from_db()
        with self.captureOnCommitCallbacks(execute=True):
            assert transitions.finish_task(
                task_id=task.pk, attempt=task.attempt, outcome=transitions.Outcome(error=error)
            )


class DispatchTestCase(LimitsTestCase):
    def test_it_sends_only_n_tasks_of_a_job_and_holds_the_others(self):
        self.start_job()
        assert sent_ids(self.send) == [t.pk for t in self.tasks[:2]]
        assert self.held() == {"T2", "T3", "T4"}
        assert set(self.job.tasks.values_list("status", flat=True)) == {S.READY}

    def test_finishing_one_sends_exactly_one_more_at_once(self):
        self.start_job()
        assert self.claim(self.tasks[0]) is not None
        assert self.claim(self.tasks[1]) is not None
        self.send.reset_mock()
        self.finish(self.tasks[0])
        assert sent_ids(self.send) == [self.tasks[2].pk]
        assert self.held() == {"T3", "T4"}

    def test_a_failed_attempt_that_retries_frees_its_slot_too(self):
        BatchTask.objects.filter(pk=self.tasks[0].pk).update(max_retries=1)
        self.start_job()
        assert self.claim(self.tasks[0]) is not None
        self.send.reset_mock()
        self.finish(self.tasks[0], error="boom")
        assert sent_ids(self.send) == [self.tasks[2].pk]  # T0 waits for its backoff

    def test_the_limit_is_per_job(self):
        other = self.make_job()
        others = [self.make_task(other, f"O{i}", group=self.reporting) for i in range(3)]
        self.start_job()
        self.send.reset_mock()
        with self.captureOnCommitCallbacks(execute=True):
            start(other)
        assert sent_ids(self.send) == [t.pk for t in others[:2]]

    def test_a_paused_group_sends_nothing_and_the_tick_holds_it(self):
        self.set_limit(-1)
        self.start_job()
        self.send.assert_not_called()
        assert self.held() == {f"T{i}" for i in range(5)}
        assert tick.handle_ready_tasks(now()) == 0
        self.send.assert_not_called()

    def test_unpausing_releases_held_tasks_at_the_next_tick(self):
        self.set_limit(-1)
        self.start_job()
        self.set_limit(0)
        assert tick.handle_ready_tasks(now()) == 5
        assert self.held() == set()

    def test_the_tick_sends_held_tasks_up_to_the_limit(self):
        self.set_limit(-1)
        self.start_job()
        self.set_limit(3)
        assert tick.handle_ready_tasks(now()) == 3
        assert tick.handle_ready_tasks(now()) == 0  # the job is at its limit
        assert self.held() == {"T3", "T4"}

    def test_the_tick_does_not_resend_lost_messages_of_a_paused_group(self):
        self.start_job()
        self.set_limit(-1)
        later = now() + dt.timedelta(hours=1)
        with mock.patch.object(broker, "queue_length", return_value=0):
            assert tick.handle_lost_messages(later) == 0

    def test_unlimited_groups_skip_the_limit_check(self):
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=0)
        priority.clear_cache()
        limits.cached_limits()  # warm, as in a running worker
        with mock.patch.object(limits, "dispatchable") as dispatchable:
            self.start_job()
        dispatchable.assert_not_called()
        assert len(sent_ids(self.send)) == 5


class ClaimTestCase(LimitsTestCase):
    def dispatch_all(self) -> None:
        self.set_limit(0)
        self.start_job()  # every task Ready with a message, as if the limit were set just now

    def test_the_claim_refuses_a_task_past_the_limit_and_holds_it(self):
        self.dispatch_all()
        self.set_limit(2)
        assert self.claim(self.tasks[0]) is not None
        assert self.claim(self.tasks[1]) is not None
        assert self.claim(self.tasks[2]) is None
        assert "T2" in self.held()
        assert BatchTask.objects.get(pk=self.tasks[2].pk).status == S.READY

    def test_the_claim_refuses_every_task_of_a_paused_group(self):
        self.dispatch_all()
        self.set_limit(-1)
        assert self.claim(self.tasks[0]) is None
        assert self.held() == {"T0"}

    def test_a_second_claim_of_a_limited_task_loses(self):
        self.start_job()
        assert self.claim(self.tasks[0]) is not None
        assert self.claim(self.tasks[0]) is None
        assert BatchTask.objects.get(pk=self.tasks[0].pk).dispatched_at is not None

    def test_canceling_tasks_count_as_running(self):
        self.dispatch_all()
        self.set_limit(1)
        assert self.claim(self.tasks[0]) is not None
        BatchTask.objects.filter(pk=self.tasks[0].pk).update(status=S.CANCELING)
        assert self.claim(self.tasks[1]) is None

    @unittest.skipUnless(connection.vendor == "postgresql", "one statement on PostgreSQL")
    def test_a_task_of_an_unlimited_group_is_claimed_in_one_statement(self):
        self.dispatch_all()
        with CaptureQueriesContext(connection) as queries:
            assert self.claim(self.tasks[0]) is not None
        assert len(queries) == 1


class ExplainLimitsTestCase(ExplainTestCase):
    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.reporting = BatchGroup.objects.create(code="Reporting", max_concurrency=2)
        self.server.groups.add(self.reporting)
        self.job = self.make_job(description="Reports")
        self.tasks = [self.make_task(self.job, f"R{i}", group=self.reporting) for i in range(3)]

    def test_a_paused_group_is_the_reason(self):
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_concurrency=-1)
        start(self.job)
        [reason] = self.why(self.tasks[0])
        assert reason.code == "group_paused"
        assert reason.level == explain.WARN
        assert reason.text == (
            "Group Reporting is paused (max concurrency -1): running tasks finish, no new ones "
            "start"
        )

    def test_a_job_at_its_limit_says_how_many_run(self):
        start(self.job)
        for task in self.tasks[:2]:
            transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)
        assert texts(self.why(self.tasks[2])) == (
            "Job concurrency limit reached: 2 of 2 tasks of this job run in group Reporting"
        )

    def test_below_the_limit_nothing_is_said_about_it(self):
        start(self.job)
        transitions.claim_task(
            task_id=self.tasks[0].pk, server_id=self.server.pk, hostname=HOSTNAME
        )
        assert "limit" not in texts(self.why(self.tasks[1]))

    def test_the_running_counts_cost_one_query_for_all_tasks(self):
        start(self.job)
        job = BatchJob.objects.get(pk=self.job.pk)
        with CaptureQueriesContext(connection) as few:
            self.grid(job)
        for i in range(10):
            self.make_task(self.job, f"More{i}", group=self.reporting, status=S.READY)
        with CaptureQueriesContext(connection) as many:
            self.grid(job)
        assert len(many) == len(few)


@unittest.skipUnless(connection.vendor == "postgresql", "row locks need PostgreSQL")
class ConcurrentClaimTestCase(TransactionTestCase):
    """Workers claiming tasks of one job at the same moment, each on its own connection."""

    def setUp(self) -> None:
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.enterContext(mock.patch("batchadmin.engine.dispatch.send", return_value=0))
        user = User.objects.create_user("alice")
        company = Company.objects.create(code="USMF", name="USMF")
        self.group = BatchGroup.objects.create(code="Reporting", max_concurrency=2)
        self.job = BatchJob.objects.create(
            description="Limited",
            status=S.WAITING,
            scheduled_start=now(),
            company=company,
            created_by=user,
        )
        self.tasks = [
            BatchTask.objects.create(
                job=self.job, key=f"T{i}", process="demo.noop", group=self.group
            )
            for i in range(6)
        ]
        assert transitions.start_job(job_id=self.job.pk)
        # Every task Ready with a message, as if the limit had just been set.
        BatchTask.objects.filter(job=self.job).update(dispatched_at=now())

    def test_two_workers_at_once_never_exceed_the_limit(self):
        barrier = threading.Barrier(len(self.tasks))
        won: list[int] = []

        def claim(task_id: int) -> None:
            try:
                barrier.wait()
                run = transitions.claim_task(task_id=task_id, server_id=None, hostname="aos@x")
                if run is not None:
                    won.append(task_id)
            finally:
                connection.close()

        threads = [threading.Thread(target=claim, args=(t.pk,)) for t in self.tasks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 2
        assert BatchTask.objects.filter(job=self.job, status=S.EXECUTING).count() == 2
        assert (
            BatchTask.objects.filter(job=self.job, status=S.READY, dispatched_at=None).count() == 4
        )

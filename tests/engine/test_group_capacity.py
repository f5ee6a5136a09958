"""A batch group's maximum running tasks (issue 14, item 1): at most N tasks of the group run at
once, all jobs and servers together; the claim is exact under races, and held tasks of
different jobs take turns (limits.fair_pick)."""

from __future__ import annotations

import threading
import unittest
from unittest import mock

from django.contrib.auth.models import User
from django.db import connection
from django.test import SimpleTestCase, TransactionTestCase
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.engine import limits, priority, tick, transitions
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, Company
from batchadmin.servers.models import BatchGroup, Priority
from tests.base import HOSTNAME, BaseTestCase, start
from tests.engine.test_explain import ExplainTestCase, texts
from tests.engine.test_limits import sent_ids

S = BatchStatus
C = limits.Candidate


class FairPickTestCase(SimpleTestCase):
    def test_it_takes_turns_between_jobs(self):
        tasks = [C(1, 10, "g", 0), C(2, 10, "g", 0), C(3, 10, "g", 0), C(4, 20, "g", 0)]
        assert [c.task_id for c in limits.fair_pick(tasks, 2, {})] == [1, 4]

    def test_a_job_with_tasks_running_waits_behind_one_without(self):
        tasks = [C(1, 10, "g", 0), C(2, 20, "g", 0)]
        assert [c.task_id for c in limits.fair_pick(tasks, 1, {10: 1})] == [2]

    def test_a_higher_priority_goes_first(self):
        tasks = [C(1, 10, "g", 0, Priority.LOW), C(2, 10, "g", 0, Priority.HIGH)]
        assert [c.task_id for c in limits.fair_pick(tasks, 1, {10: 3})] == [2]

    def test_ties_go_to_the_longest_ready(self):
        tasks = [C(1, 10, "g", 0), C(2, 20, "g", 0)]
        assert [c.task_id for c in limits.fair_pick(tasks, 1, {})] == [1]

    def test_it_respects_the_per_job_limit(self):
        tasks = [C(1, 10, "g", 1), C(2, 10, "g", 1)]
        assert [c.task_id for c in limits.fair_pick(tasks, 2, {}, job_limit=1)] == [1]

    def test_no_free_slot_picks_nothing(self):
        assert limits.fair_pick([C(1, 10, "g", 0)], 0, {}) == []


class GroupCapacityTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.group = BatchGroup.objects.create(code="Integration", max_tasks=2)
        self.jobs = [self.make_job(description=f"J{j}") for j in range(3)]
        self.tasks = {
            job.pk: [self.make_task(job, f"T{i}", group=self.group) for i in range(3)]
            for job in self.jobs
        }

    def start(self, job: BatchJob) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            start(job)

    def claim(self, task: BatchTask) -> transitions.Claim | None:
        return transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)

    def finish(self, task: BatchTask) -> None:
        task.refresh_from_db()
        with self.captureOnCommitCallbacks(execute=True):
            assert transitions.finish_task(
                task_id=task.pk, attempt=task.attempt, outcome=transitions.Outcome()
            )

    def held(self) -> int:
        return BatchTask.objects.filter(
            group=self.group, status=S.READY, dispatched_at=None
        ).count()

    def test_it_sends_no_more_than_the_group_may_run_across_jobs(self):
        for job in self.jobs:
            self.start(job)
        assert len(sent_ids(self.send)) == 2
        assert self.held() == 7

    def test_the_claim_refuses_past_the_maximum_and_holds_the_task(self):
        BatchGroup.objects.filter(pk=self.group.pk).update(max_tasks=0)
        priority.clear_cache()
        for job in self.jobs:
            self.start(job)  # every task sent, as if the maximum were set just now
        BatchGroup.objects.filter(pk=self.group.pk).update(max_tasks=2)
        first, second, third = (self.tasks[job.pk][0] for job in self.jobs)
        assert self.claim(first) is not None
        assert self.claim(second) is not None
        assert self.claim(third) is None
        third.refresh_from_db()
        assert third.status == S.READY
        assert third.dispatched_at is None

    def test_a_finish_sends_the_next_held_task_of_another_job(self):
        for job in self.jobs:
            self.start(job)
        a, b = (BatchTask.objects.get(pk=pk) for pk in sent_ids(self.send))
        assert a.job_id == b.job_id == self.jobs[0].pk  # the first job started first
        assert self.claim(a) is not None
        assert self.claim(b) is not None
        self.send.reset_mock()
        self.finish(a)
        [next_id] = sent_ids(self.send)
        # Jobs 1 and 2 have nothing running: the longest ready of them goes, not job 0's.
        assert BatchTask.objects.get(pk=next_id).job_id == self.jobs[1].pk

    def test_the_tick_fills_free_slots_taking_turns(self):
        BatchGroup.objects.filter(pk=self.group.pk).update(max_tasks=0)
        priority.clear_cache()
        mine = BatchTask.objects.filter(group=self.group)
        mine.update(status=S.READY, ready_at=now(), dispatched_at=None)
        BatchJob.objects.filter(pk__in=[j.pk for j in self.jobs]).update(status=S.EXECUTING)
        BatchGroup.objects.filter(pk=self.group.pk).update(max_tasks=3)
        priority.clear_cache()
        assert tick.handle_ready_tasks(now()) == 3
        sent = mine.filter(dispatched_at__isnull=False)
        assert sorted(sent.values_list("job_id", flat=True)) == sorted(j.pk for j in self.jobs)
        assert tick.handle_ready_tasks(now()) == 0  # the group is full

    def test_an_unlimited_group_claims_in_one_statement(self):
        BatchGroup.objects.filter(pk=self.group.pk).update(max_tasks=0)
        priority.clear_cache()
        self.start(self.jobs[0])
        if connection.vendor != "postgresql":
            return
        with CaptureQueriesContext(connection) as queries:
            assert self.claim(self.tasks[self.jobs[0].pk][0]) is not None
        assert len(queries) == 1


class ExplainGroupCapacityTestCase(ExplainTestCase):
    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.group = BatchGroup.objects.create(code="Integration", max_tasks=2)
        self.server.groups.add(self.group)
        self.job = self.make_job(description="Feeds")
        self.tasks = [self.make_task(self.job, f"F{i}", group=self.group) for i in range(3)]

    def test_a_group_at_its_maximum_says_so(self):
        start(self.job)
        for task in self.tasks[:2]:
            transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)
        assert texts(self.why(self.tasks[2])) == "Group Integration is at its limit: 2 of 2 running"

    def test_below_the_maximum_nothing_is_said(self):
        start(self.job)
        assert "limit" not in texts(self.why(self.tasks[1]))


@unittest.skipUnless(connection.vendor == "postgresql", "row locks need PostgreSQL")
class ConcurrentGroupClaimTestCase(TransactionTestCase):
    """Workers claiming tasks of different jobs of one group at the same moment."""

    def setUp(self) -> None:
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.enterContext(mock.patch("batchadmin.engine.dispatch.send", return_value=0))
        user = User.objects.create_user("alice")
        company = Company.objects.create(code="USMF", name="USMF")
        self.group = BatchGroup.objects.create(code="Integration", max_tasks=2)
        self.tasks: list[BatchTask] = []
        for j in range(3):
            job = BatchJob.objects.create(
                description=f"J{j}",
                status=S.WAITING,
                scheduled_start=now(),
                company=company,
                created_by=user,
            )
            self.tasks += [
                BatchTask.objects.create(
                    job=job, key=f"T{i}", process="demo.noop", group=self.group
                )
                for i in range(2)
            ]
            assert transitions.start_job(job_id=job.pk)
        # Every task Ready with a message, as if the maximum had just been set.
        BatchTask.objects.filter(group=self.group).update(dispatched_at=now())

    def test_workers_of_different_jobs_never_exceed_the_maximum(self):
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
        assert BatchTask.objects.filter(group=self.group, status=S.EXECUTING).count() == 2

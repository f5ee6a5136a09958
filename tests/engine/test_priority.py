"""Scheduling priority (group default, job override), the message's Redis priority step, aging,
and reserved capacity (priority.py)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.test import override_settings
from django.utils.timezone import now

from batchadmin.engine import explain, priority, tick, transitions
from batchadmin.engine.dispatch import NORMAL_STEP
from batchadmin.jobs import forms, io
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from batchadmin.servers.forms import GroupForm
from batchadmin.servers.models import BatchGroup, BatchServerReplica, Priority, ReservedCapacity
from tests.base import HOSTNAME, BaseTestCase, start
from tests.engine.test_explain import ExplainTestCase, texts

S = BatchStatus
P = Priority


def steps(send_calls: Sequence[Any]) -> dict[int, int]:
    """Task id -> priority step of every message sent."""
    return {msg[0]: msg[2] for call in send_calls for msg in call.args[0]}


class StepTestCase(BaseTestCase):
    def test_higher_priorities_get_lower_steps_which_redis_serves_first(self):
        order = [P.RESERVED, P.CRITICAL, P.HIGH, P.NORMAL, P.LOW]
        assert [priority.step(p) for p in order] == [0, 2, 4, 6, 8]
        assert priority.step(P.NORMAL) == NORMAL_STEP

    def test_the_broker_reads_every_step(self):
        from django.conf import settings

        steps: Any = settings.CELERY_BROKER_TRANSPORT_OPTIONS["priority_steps"]
        assert set(priority.STEPS.values()) <= set(steps)
        assert steps == list(range(10))

    @override_settings(BATCH_PRIORITY_AGING_SECONDS=60)
    def test_a_waiting_task_moves_up_one_step_per_aging_period(self):
        assert priority.step(P.LOW, 59) == 8
        assert priority.step(P.LOW, 60) == 7
        assert priority.step(P.LOW, 4 * 60) == priority.step(P.HIGH)
        assert priority.step(P.LOW, 5 * 60) < priority.step(P.HIGH)  # ahead of fresh High
        assert priority.step(P.LOW, 3600) == 0

    @override_settings(BATCH_PRIORITY_AGING_SECONDS=0)
    def test_aging_off_keeps_the_step(self):
        assert priority.step(P.LOW, 3600) == 8

    def test_the_job_overrides_the_groups_priority(self):
        assert priority.effective(P.LOW, False, P.HIGH) == P.HIGH
        assert priority.effective(P.LOW, True, P.HIGH) == P.LOW

    def test_reserved_threads_are_rounded_up(self):
        assert priority.kept_threads(120, ReservedCapacity.HIGH) == 30  # D365's example
        assert priority.kept_threads(4, ReservedCapacity.LOW) == 1
        assert priority.kept_threads(4, ReservedCapacity.NONE) == 0
        assert priority.usable(4, ReservedCapacity.HIGH) == 3


class EffectivePriorityTestCase(BaseTestCase):
    def test_python_the_queryset_and_the_claims_sql_agree(self):
        """One rule in three languages: priority.effective(), the QuerySet annotation, and
        sql.EFFECTIVE_PRIORITY in the claim's hand-written statements."""
        from django.db import connection

        from batchadmin.engine import sql

        cases = []
        for group_default in (Priority.LOW, Priority.CRITICAL):
            group = BatchGroup.objects.create(
                code=f"G{group_default}", default_priority=group_default
            )
            for job_priority in (Priority.NORMAL, Priority.RESERVED):
                for overridden in (False, True):
                    job = self.make_job(priority=job_priority, priority_overridden=overridden)
                    task = self.make_task(job, "T1", group=group)
                    cases.append(
                        (task.pk, priority.effective(job_priority, overridden, group_default))
                    )
        annotated = dict(
            BatchTask.objects.with_effective_priority().values_list("pk", "effective_priority")
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT t.id, {sql.EFFECTIVE_PRIORITY} FROM jobs_batchtask t "
                "JOIN jobs_batchjob j ON j.id = t.job_id JOIN servers_batchgroup g "
                "ON g.id = t.group_id"
            )
            raw = dict(cursor.fetchall())
        for pk, expected in cases:
            assert annotated[pk] == raw[pk] == expected, pk


class MessageStepTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.urgent = BatchGroup.objects.create(code="Urgent", default_priority=P.CRITICAL)

    def test_each_task_takes_its_groups_priority_unless_the_job_overrides_it(self):
        job = self.make_job(priority=P.LOW)  # not overridden: the groups decide
        normal = self.make_task(job, "T1")
        urgent = self.make_task(job, "T2", group=self.urgent)
        override = self.make_job(priority=P.LOW, priority_overridden=True)
        low = self.make_task(override, "T1", group=self.urgent)
        with self.captureOnCommitCallbacks(execute=True):
            start(job)
            start(override)
        assert steps(self.send.call_args_list) == {normal.pk: 6, urgent.pk: 2, low.pk: 8}

    def test_a_released_dependent_gets_its_jobs_priority(self):
        job = self.make_job(priority=P.HIGH, priority_overridden=True)
        t1 = self.make_task(job, "T1")
        t2 = self.make_task(job, "T2", group=self.urgent)
        self.add_condition(t2, t1)
        start(job)
        t1.refresh_from_db()
        run = transitions.claim_task(task_id=t1.pk, server_id=self.server.pk, hostname=HOSTNAME)
        assert run is not None
        self.send.reset_mock()
        with self.captureOnCommitCallbacks(execute=True):
            transitions.finish_task(
                task_id=t1.pk, attempt=run.attempt, outcome=transitions.Outcome()
            )
        assert steps(self.send.call_args_list) == {t2.pk: 4}

    def test_a_held_task_released_by_max_concurrency_keeps_its_priority(self):
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        BatchGroup.objects.filter(pk=self.urgent.pk).update(max_concurrency=1)
        job = self.make_job()
        t1, t2 = (self.make_task(job, f"T{i}", group=self.urgent) for i in (1, 2))
        start(job)
        run = transitions.claim_task(task_id=t1.pk, server_id=self.server.pk, hostname=HOSTNAME)
        assert run is not None
        self.send.reset_mock()
        with self.captureOnCommitCallbacks(execute=True):
            transitions.finish_task(
                task_id=t1.pk, attempt=run.attempt, outcome=transitions.Outcome()
            )
        assert steps(self.send.call_args_list) == {t2.pk: 2}


@override_settings(BATCH_PRIORITY_AGING_SECONDS=60)
class AgingTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(priority=P.LOW, priority_overridden=True)
        self.task = self.make_task(self.job, "T1")
        start(self.job)
        self.t0 = BatchTask.objects.get(pk=self.task.pk).ready_at
        assert self.t0 is not None
        self.send.reset_mock()

    def at(self, seconds: float) -> dt.datetime:
        assert self.t0 is not None
        return self.t0 + dt.timedelta(seconds=seconds)

    def test_the_tick_resends_a_waiting_task_one_step_higher_each_period(self):
        assert tick.handle_aging(self.at(30)) == 0
        assert tick.handle_aging(self.at(61)) == 1
        assert steps(self.send.call_args_list) == {self.task.pk: 7}
        assert tick.handle_aging(self.at(90)) == 0  # not again within the period
        assert tick.handle_aging(self.at(125)) == 1
        assert steps(self.send.call_args_list[-1:]) == {self.task.pk: 6}

    def test_it_stops_at_the_top_step(self):
        assert tick.handle_aging(self.at(8 * 60 + 1)) == 1
        assert steps(self.send.call_args_list) == {self.task.pk: 0}
        assert tick.handle_aging(self.at(20 * 60)) == 0

    def test_a_reserved_capacity_task_is_never_resent(self):
        BatchJob.objects.filter(pk=self.job.pk).update(priority=P.RESERVED)
        assert tick.handle_aging(self.at(600)) == 0

    def test_a_started_or_held_task_is_left_alone(self):
        BatchTask.objects.filter(pk=self.task.pk).update(dispatched_at=None)
        assert tick.handle_aging(self.at(600)) == 0
        BatchTask.objects.filter(pk=self.task.pk).update(status=S.EXECUTING, dispatched_at=now())
        assert tick.handle_aging(self.at(600)) == 0

    @override_settings(BATCH_PRIORITY_AGING_SECONDS=0)
    def test_zero_turns_aging_off(self):
        assert tick.handle_aging(self.at(600)) == 0


class ReservedCapacityTestCase(BaseTestCase):
    """Group Batch reserves 25% of aos1's 4 threads: 3 for any task, 1 for Reserved capacity."""

    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.batch = BatchGroup.objects.create(code="Batch", reserved_capacity=25)
        self.server.groups.add(self.batch)
        BatchServerReplica.objects.create(
            server=self.server, hostname=HOSTNAME, concurrency=4, last_heartbeat=now()
        )
        self.job = self.make_job()
        self.tasks = [self.make_task(self.job, f"T{i}", group=self.batch) for i in range(5)]
        self.vip = self.make_job(priority=P.RESERVED, priority_overridden=True)
        self.vip_task = self.make_task(self.vip, "V1", group=self.batch)
        start(self.job)
        start(self.vip)

    def claim(self, task: BatchTask) -> bool:
        run = transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)
        return run is not None

    def test_other_tasks_take_only_the_shared_threads(self):
        assert [self.claim(t) for t in self.tasks[:4]] == [True, True, True, False]
        held = BatchTask.objects.get(pk=self.tasks[3].pk)
        assert (held.status, held.dispatched_at) == (S.READY, None)
        assert self.claim(self.vip_task)  # the kept thread

    def test_the_tick_sends_a_held_task_only_when_a_shared_thread_is_free(self):
        for t in self.tasks[:4]:
            self.claim(t)
        BatchTask.objects.filter(pk=self.tasks[4].pk).update(dispatched_at=None)  # also held
        at = now() + dt.timedelta(seconds=1)
        self.send.reset_mock()
        assert tick.handle_ready_tasks(at) == 0  # no spinning while the group is full
        task = BatchTask.objects.get(pk=self.tasks[0].pk)
        transitions.finish_task(
            task_id=task.pk, attempt=task.attempt, outcome=transitions.Outcome()
        )
        assert tick.handle_ready_tasks(at) == 1
        assert len(self.send.call_args.args[0]) == 1
        assert self.claim(self.tasks[3])

    def test_a_group_without_reserved_capacity_claims_in_one_statement(self):
        BatchGroup.objects.filter(pk=self.batch.pk).update(reserved_capacity=0)
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as queries:
            assert self.claim(self.tasks[0])
        # Never the locked fallback (it starts by locking the job row).
        assert not any("(SELECT job_id FROM" in q["sql"] for q in queries)
        if connection.vendor == "postgresql":
            assert len(queries) == 1

    def test_without_a_known_thread_nothing_is_kept(self):
        BatchServerReplica.objects.all().delete()
        assert all(self.claim(t) for t in self.tasks)


class ExplainPriorityTestCase(ExplainTestCase):
    def setUp(self) -> None:
        super().setUp()
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)

    def test_it_says_how_many_higher_priority_tasks_are_queued(self):
        low = self.make_job(priority=P.LOW, priority_overridden=True)
        waiting = self.make_task(low, "L1")
        high = self.make_job(priority=P.HIGH, priority_overridden=True)
        for i in range(3):
            self.make_task(high, f"H{i}")
        start(low)
        start(high)
        assert "Waiting for a thread: 3 higher-priority tasks are queued for group default" in (
            texts(self.why(waiting))
        )

    def test_it_names_the_reserved_share_when_the_shared_threads_are_busy(self):
        BatchGroup.objects.filter(pk=self.default.pk).update(reserved_capacity=25)
        job = self.make_job()
        tasks = [self.make_task(job, f"T{i}") for i in range(4)]
        start(job)
        for t in tasks[:3]:
            transitions.claim_task(task_id=t.pk, server_id=self.server.pk, hostname=HOSTNAME)
        reasons = self.why(tasks[3])
        assert reasons[0].code == "reserved_capacity"
        assert reasons[0].text == (
            "Reserved capacity: 25% of group default's threads (1 of 4) are kept for Reserved "
            "capacity jobs, and the other 3 are busy"
        )
        assert explain.reserved_capacity_kept in explain.TASK_RULES


class FormAndImportTestCase(BaseTestCase):
    def header(self, chosen: str) -> forms.JobForm:
        data = {
            "description": "Month-end close",
            "scheduled_start": "2030-01-02T03:04",
            "priority": chosen,
            "company": str(self.usmf.pk),
            "save_history": "always",
        }
        return forms.JobForm(data, instance=self.make_job(), user=self.alice)

    def test_the_first_choice_leaves_the_priority_to_the_groups(self):
        form = self.header(forms.GROUP_PRIORITY)
        assert form.is_valid(), form.errors
        job = form.save_header()
        job.refresh_from_db()
        assert not job.priority_overridden

    def test_a_chosen_priority_overrides_the_groups(self):
        form = self.header(str(P.CRITICAL.value))
        assert form.is_valid(), form.errors
        job = form.save_header()
        job.refresh_from_db()
        assert (job.priority, job.priority_overridden) == (P.CRITICAL, True)
        again = forms.JobForm(instance=job, user=self.alice)
        assert again.initial["priority"] == P.CRITICAL
        assert "Batch group&#x27;s priority" in str(again["priority"])

    def test_the_group_form_sets_the_default_priority_and_reserved_capacity(self):
        form = GroupForm({"code": "Nightly", "default_priority": "10", "reserved_capacity": "15"})
        assert form.is_valid(), form.errors
        group = form.save()
        assert (group.default_priority, group.reserved_capacity) == (P.LOW, 15)

    def test_import_treats_a_given_priority_as_overridden(self):
        base = {"description": "Imported", "tasks": [{"key": "T1", "process": "demo.noop"}]}
        [given] = io.import_data(base | {"priority": "high"})
        [group] = io.import_data(base | {"priority": "group"})
        [absent] = io.import_data(base)
        assert (given.priority, given.priority_overridden) == (P.HIGH, True)
        assert not group.priority_overridden
        assert not absent.priority_overridden
        assert "priority" not in io.export_job(absent)
        assert io.export_job(given)["priority"] == "high"

    def test_import_sets_a_groups_priority(self):
        io.import_data({"groups": [{"code": "Nightly", "priority": "critical"}], "jobs": []})
        assert BatchGroup.objects.get(code="Nightly").default_priority == P.CRITICAL


class MigrationTestCase(BaseTestCase):
    def test_jobs_with_a_priority_of_their_own_keep_it_by_overriding(self):
        from importlib import import_module

        from django.apps import apps

        migration = import_module("batchadmin.jobs.migrations.0007_priority_overridden")
        high = self.make_job(priority=P.HIGH)
        normal = self.make_job()
        migration.mark_overridden(apps, None)
        high.refresh_from_db()
        normal.refresh_from_db()
        assert (high.priority_overridden, normal.priority_overridden) == (True, False)

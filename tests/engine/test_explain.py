"""Why is this not running? The explainer's rules against real rows, and the job form showing
them (task lines, the header, the diagram's live poll) within a fixed number of queries."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any
from unittest import mock
from zoneinfo import ZoneInfo

import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from batchadmin.engine import beat, explain, transitions, world
from batchadmin.jobs import task_grid
from batchadmin.jobs.models import ActivePeriod, BatchJob, BatchStatus, BatchTask
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
)
from tests import isolation
from tests.base import HOSTNAME, BaseTestCase, start

S = BatchStatus
UTC = dt.UTC
NOON = dt.datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
REDIS_URL = isolation.E2E_REDIS_URL  # the run's own Redis db (tests/isolation.py)


def codes(reasons: list[explain.Reason]) -> list[str]:
    return [r.code for r in reasons]


def texts(reasons: list[explain.Reason]) -> str:
    return " | ".join(r.text for r in reasons)


class ExplainTestCase(BaseTestCase):
    """Noon UTC, server aos1 (default group) online with 4 threads, nothing queued."""

    def setUp(self) -> None:
        super().setUp()
        self.enterContext(time_machine.travel(NOON, tick=False))
        self.queues = self.enterContext(
            mock.patch.object(world, "queue_sizes", side_effect=lambda gs: {g.pk: 0 for g in gs})
        )
        self.default = BatchGroup.objects.default()
        self.replica = BatchServerReplica.objects.create(
            server=self.server, hostname=HOSTNAME, concurrency=4, busy=0, last_heartbeat=NOON
        )

    def make_job(self, **overrides: Any) -> BatchJob:
        """A job saved an hour ago: it became due at its start (see JustDueTestCase)."""
        job = super().make_job(**overrides)
        BatchJob.objects.filter(pk=job.pk).update(modified=NOON - dt.timedelta(hours=1))
        return job

    def grid(self, job: BatchJob) -> task_grid.Grid:
        job.refresh_from_db()
        return task_grid.load(job)

    def why(self, task: BatchTask) -> list[explain.Reason]:
        grid = self.grid(BatchJob.objects.get(pk=task.job_id))
        return next(r.why for r in grid.rows if r.task.pk == task.pk)


class JobReasonsTestCase(ExplainTestCase):
    def test_it_says_a_withhold_job_must_be_set_to_waiting(self):
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(job, "T1")
        grid = self.grid(job)
        assert codes(grid.job_why) == ["job_withhold"]
        assert grid.job_why[0].text == (
            "The job is Withhold: change its status to Waiting to run it"
        )
        assert texts(self.why(task)) == "Waits for the job, which is Withhold"

    def test_it_says_when_a_waiting_job_starts_in_the_viewers_zone(self):
        job = self.make_job(scheduled_start=NOON + dt.timedelta(hours=9))
        task = self.make_task(job, "T1")
        with timezone.override(ZoneInfo("Europe/Oslo")):
            grid = self.grid(job)
            assert texts(grid.job_why) == "The job starts at 22:00 Europe/Oslo"
            assert texts(self.why(task)) == "Waits for the job, which starts at 22:00 Europe/Oslo"

    def test_a_triggered_job_without_recurrence_waits_for_the_job_it_follows(self):
        parent = self.make_job(description="Parent", status=S.WITHHOLD)
        job = self.make_job(scheduled_start=NOON - dt.timedelta(hours=1), after_job=parent)
        task = self.make_task(job, "T1")
        grid = self.grid(job)
        assert codes(grid.job_why) == ["waits_for_job"]  # not "due": it has no time of its own
        assert grid.job_why[0].text == (
            f"Waits for job {parent.pk} to end: it runs after each run of job {parent.pk} "
            "that ends Ended"
        )
        assert texts(self.why(task)) == f"Waits for the job, which waits for job {parent.pk} to end"

    def test_another_day_carries_the_date(self):
        job = self.make_job(scheduled_start=NOON + dt.timedelta(days=2, hours=9))
        assert texts(self.grid(job).job_why) == "The job starts at Thu 2026-03-12 21:00 UTC"

    def test_a_job_just_due_is_left_to_the_tick(self):
        job = self.make_job(scheduled_start=NOON - dt.timedelta(seconds=3))
        self.make_task(job, "T1")
        grid = self.grid(job)
        assert codes(grid.job_why) == ["due"]
        assert grid.job_why[0].level == explain.INFO

    def test_a_job_due_long_ago_with_beat_silent_blames_beat(self):
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(
            last_run_at=NOON - dt.timedelta(minutes=20), enabled=True
        )
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=4))
        [reason] = self.grid(job).job_why
        assert reason.code == "beat_down"
        assert reason.level == explain.DANGER
        assert reason.text == (
            "Due since 11:56 UTC (4 min 00 s) and not started: the scheduler (celery beat) "
            "seems to be down; its release tick last ran at 11:40 UTC"
        )

    def test_a_disabled_tick_is_named(self):
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(enabled=False)
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=1))
        assert codes(self.grid(job).job_why) == ["beat_disabled"]
        assert "disabled in Periodic tasks" in texts(self.grid(job).job_why)

    def test_a_missing_tick_is_named(self):
        PeriodicTask.objects.filter(task=beat.TICK_TASK).delete()
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=1))
        assert codes(self.grid(job).job_why) == ["beat_missing"]

    def test_beat_that_ran_recently_gets_no_blame(self):
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(
            last_run_at=NOON - dt.timedelta(seconds=2), enabled=True
        )
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=1))
        [reason] = self.grid(job).job_why
        assert reason.code == "not_started"
        assert "check that it runs and read its log" in reason.text

    def test_a_start_just_moved_into_the_past_never_blames_beat(self):
        # beat ticks every second; its liveness row is written at most every 5 s.
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(
            last_run_at=NOON - dt.timedelta(seconds=4), enabled=True
        )
        job = self.make_job(scheduled_start=NOON - dt.timedelta(hours=2))
        self.make_task(job, "T1")
        # The header was saved 3 s ago with a start two hours back.
        BatchJob.objects.filter(pk=job.pk).update(modified=NOON - dt.timedelta(seconds=3))
        assert codes(self.grid(job).job_why) == ["due"]
        # Once beat's record is stale and the job has been due a while, beat is to blame.
        with time_machine.travel(NOON + dt.timedelta(seconds=40), tick=False):
            assert "beat_down" in codes(self.grid(job).job_why)

    def test_a_job_set_waiting_with_a_past_start_is_just_due(self):
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(
            last_run_at=NOON - dt.timedelta(seconds=2), enabled=True
        )
        job = self.make_job(status=S.WITHHOLD, scheduled_start=NOON - dt.timedelta(hours=3))
        self.make_task(job, "T1")
        assert transitions.change_status(job_id=job.pk, to=S.WAITING, by_id=self.alice.pk)
        [reason] = self.grid(job).job_why
        assert reason.code == "due" and reason.level == explain.INFO

    def test_outside_its_active_period_it_says_when_the_period_opens(self):
        night = ActivePeriod.objects.create(
            code="Night", start_time=dt.time(22), end_time=dt.time(6), time_zone="UTC"
        )
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=5), active_period=night)
        task = self.make_task(job, "T1")
        grid = self.grid(job)
        assert codes(grid.job_why) == ["outside_active_period"]
        assert grid.job_why[0].text == (
            "Outside active period Night, 22:00 to 06:00 (next day) UTC; it opens at 22:00 UTC"
        )
        assert texts(self.why(task)) == (
            "Waits for the job, which starts at 22:00 UTC when active period Night opens"
        )

    def test_a_start_the_tick_moved_to_the_opening_is_still_the_period(self):
        night = ActivePeriod.objects.create(
            code="Night", start_time=dt.time(22), end_time=dt.time(6), time_zone="UTC"
        )
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=5), active_period=night)
        assert not transitions.start_job(job_id=job.pk, at=NOON)  # moves the start to 22:00
        assert codes(self.grid(job).job_why) == ["outside_active_period"]

    def test_inside_its_active_period_the_period_says_nothing(self):
        office = ActivePeriod.objects.create(
            code="Office", start_time=dt.time(8), end_time=dt.time(18), time_zone="UTC"
        )
        job = self.make_job(scheduled_start=NOON + dt.timedelta(hours=1), active_period=office)
        assert codes(self.grid(job).job_why) == ["scheduled"]

    def test_it_warns_that_a_group_of_its_tasks_has_no_server(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        job = self.make_job(status=S.WITHHOLD)
        self.make_task(job, "T1")
        self.make_task(job, "T2", group=reporting)
        grid = self.grid(job)
        assert codes(grid.job_why) == ["job_withhold", "groups_unserved"]
        assert grid.job_why[1].text == (
            "When it starts, its tasks in group Reporting will not run: no online batch server "
            "serves it"
        )

    def test_running_and_finished_jobs_need_no_explanation(self):
        for status in (S.EXECUTING, S.ENDED, S.ERROR, S.CANCELED):
            job = self.make_job(status=status)
            assert self.grid(job).job_why == []


class ConditionReasonsTestCase(ExplainTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job()
        self.post = self.make_task(self.job, "T3", description="Post invoices")
        self.settle = self.make_task(self.job, "T4", description="Settle payments")
        self.report = self.make_task(self.job, "T5", description="Report")

    def test_it_names_the_task_it_waits_for_and_the_status_it_needs(self):
        self.add_condition(self.report, self.post)
        start(self.job)
        BatchTask.objects.filter(pk=self.post.pk).update(status=S.EXECUTING)
        assert texts(self.why(self.report)) == (
            "Waiting for task T3 'Post invoices' (needs Ended, it is Executing)"
        )

    def test_all_lists_the_open_conditions_and_counts_those_met(self):
        self.add_condition(self.report, self.post)
        self.add_condition(self.report, self.settle, "ended_or_error")
        extra = self.make_task(self.job, "T6", description="Extra")
        self.add_condition(self.report, extra)
        start(self.job)
        BatchTask.objects.filter(pk=extra.pk).update(status=S.ENDED)
        assert texts(self.why(self.report)) == (
            "Waiting for all of 2 tasks: task T3 'Post invoices' (needs Ended, it is Ready); "
            "task T4 'Settle payments' (needs Ended or error, it is Ready) (1 of 3 conditions met)"
        )

    def test_any_says_one_is_enough(self):
        self.add_condition(self.report, self.post)
        self.add_condition(self.report, self.settle, "error")
        BatchTask.objects.filter(pk=self.report.pk).update(condition_type="any")
        start(self.job)
        assert texts(self.why(self.report)) == (
            "Waiting for any one of 2 tasks: task T3 'Post invoices' (needs Ended, it is Ready); "
            "task T4 'Settle payments' (needs Error, it is Ready)"
        )

    def test_a_condition_that_can_no_longer_hold_is_left_to_the_tick(self):
        # Parent Error, condition "Ended": the task is Didn't run as soon as the engine looks.
        self.add_condition(self.report, self.post)
        start(self.job)
        BatchTask.objects.filter(pk=self.post.pk).update(status=S.ERROR)
        [reason] = self.why(self.report)
        assert reason.code == "stranded"
        assert "can no longer be met" in reason.text

    def test_a_waiting_task_also_hears_about_its_groups_server(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        BatchTask.objects.filter(pk=self.report.pk).update(group=reporting)
        self.add_condition(self.report, self.post)
        start(self.job)
        assert codes(self.why(self.report)) == ["waiting_for_task", "no_server"]

    def test_tasks_that_run_or_ran_say_nothing(self):
        start(self.job)
        for status in (S.EXECUTING, S.ENDED, S.ERROR, S.NOT_RUN):
            BatchTask.objects.filter(pk=self.post.pk).update(status=status)
            assert self.why(self.post) == []


class ReadyReasonsTestCase(ExplainTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job()
        self.task = self.make_task(self.job, "T1", description="Fetch statements")

    def test_a_ready_task_says_it_is_queued_and_how_long_the_queue_is(self):
        start(self.job)
        self.queues.side_effect = lambda gs: {g.pk: 12 for g in gs}
        assert texts(self.why(self.task)) == "Queued for group default; 12 tasks in its queue"

    def test_an_empty_queue_means_a_server_is_taking_it(self):
        start(self.job)
        assert texts(self.why(self.task)) == "Queued for group default: a batch server is taking it"

    def test_with_the_broker_down_it_says_nothing_about_the_queue(self):
        start(self.job)
        self.queues.side_effect = lambda gs: {g.pk: None for g in gs}
        assert texts(self.why(self.task)) == "Queued for group default"

    def test_it_asks_the_broker_once_per_group_with_queued_tasks(self):
        for i in range(5):
            self.make_task(self.job, f"X{i}")
        start(self.job)
        self.grid(self.job)
        [call] = self.queues.call_args_list
        assert [g.code for g in call.args[0]] == ["default"]

    def test_a_job_with_nothing_queued_asks_for_no_queue(self):
        self.grid(self.job)  # Waiting job: nothing Ready
        self.queues.assert_called_once_with([])

    def test_in_its_retry_backoff_it_says_which_retry_and_from_when(self):
        BatchTask.objects.filter(pk=self.task.pk).update(max_retries=3)
        start(self.job)
        for attempt, failed_at in ((1, NOON), (2, NOON + dt.timedelta(seconds=1))):
            claimed = transitions.claim_task(
                task_id=self.task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=failed_at
            )
            assert claimed is not None and claimed.attempt == attempt
            assert transitions.finish_task(
                task_id=self.task.pk,
                attempt=attempt,
                outcome=transitions.Outcome(error="boom"),
                at=failed_at,
            )
            BatchTask.objects.filter(pk=self.task.pk).update(ready_at=failed_at)
        BatchTask.objects.filter(pk=self.task.pk).update(ready_at=NOON + dt.timedelta(seconds=190))
        assert texts(self.why(self.task)) == ("Retry 2 of 3 after an error; not before 12:03:10")

    def test_a_group_without_any_server_is_named(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        BatchTask.objects.filter(pk=self.task.pk).update(group=reporting)
        start(self.job)
        [reason] = self.why(self.task)
        assert reason.code == "no_server"
        assert reason.level == explain.DANGER
        assert reason.text == (
            "No batch server serves group Reporting: add the group to a server on the Batch "
            "groups page"
        )

    def test_a_group_whose_servers_are_offline_names_them(self):
        self.replica.last_heartbeat = NOON - dt.timedelta(minutes=10)
        self.replica.save()
        start(self.job)
        assert texts(self.why(self.task)) == (
            "No online batch server serves group default: aos1 is offline"
        )

    def test_a_disabled_server_does_not_count(self):
        BatchServer.objects.filter(pk=self.server.pk).update(enabled=False)
        start(self.job)
        assert codes(self.why(self.task)) == ["no_server"]

    def test_a_server_outside_its_schedule_says_until_when(self):
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(20), end_time=dt.time(7, 30), max_threads=8
        )
        start(self.job)
        [reason] = self.why(self.task)
        assert reason.code == "server_schedule"
        assert reason.text == "Server aos1 takes no tasks until 20:00 UTC (server schedule)"
        with timezone.override(ZoneInfo("America/New_York")):
            assert texts(self.why(self.task)) == (
                "Server aos1 takes no tasks until 16:00 America/New York (server schedule)"
            )

    def test_a_window_with_zero_threads_is_closed_too(self):
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(8), end_time=dt.time(18), max_threads=0
        )
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(18), end_time=dt.time(8), max_threads=4
        )
        start(self.job)
        assert texts(self.why(self.task)) == (
            "Server aos1 takes no tasks until 18:00 UTC (server schedule)"
        )

    def test_all_threads_busy_says_so_with_the_servers_figures(self):
        self.replica.busy = 4
        self.replica.save()
        start(self.job)
        self.queues.side_effect = lambda gs: {g.pk: 7 for g in gs}
        [reason] = self.why(self.task)
        assert reason.code == "threads_busy"
        assert reason.text == (
            "All 4 threads of the servers serving group default are busy (aos1 4/4); "
            "7 tasks in its queue"
        )

    def test_the_schedule_caps_the_threads(self):
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(8), end_time=dt.time(18), max_threads=2
        )
        self.replica.busy = 2
        self.replica.save()
        start(self.job)
        assert codes(self.why(self.task)) == ["threads_busy"]

    def test_a_free_thread_means_queued(self):
        self.replica.busy = 3
        self.replica.save()
        start(self.job)
        assert codes(self.why(self.task)) == ["queued"]

    def test_the_explainer_is_a_list_of_rules_to_extend(self):
        # The scheduling controls of a later issue (group paused, job concurrency) are rules.
        def paused(view: explain.TaskView, world: explain.World) -> explain.Reason | None:
            return explain.Reason("group_paused", "Group default is paused", explain.WARN)

        start(self.job)
        with mock.patch.object(explain, "TASK_RULES", (*explain.TASK_RULES, paused)):
            assert codes(self.why(self.task)) == ["group_paused"]


class QueueSizesTestCase(BaseTestCase):
    def test_it_returns_none_at_once_when_the_broker_is_down(self):
        group = BatchGroup.objects.default()
        began = time.monotonic()
        assert world.queue_sizes([group], broker_url="redis://127.0.0.1:1/0") == {group.pk: None}
        # No retries: far below kombu's default of several seconds (generous for a busy box).
        assert time.monotonic() - began < 5

    def test_it_counts_the_messages_in_a_groups_queue(self):
        from kombu import Connection

        group = BatchGroup.objects.create(code="ExplainQueueTest")
        empty = BatchGroup.objects.create(code="ExplainEmptyTest")
        with Connection(REDIS_URL) as conn:
            queue = conn.SimpleQueue("batch.ExplainQueueTest")
            try:
                for i in range(3):
                    queue.put({"n": i})
                sizes = world.queue_sizes([group, empty], broker_url=REDIS_URL)
            finally:
                queue.clear()
                queue.close()
        assert sizes == {group.pk: 3, empty.pk: 0}


class JobFormTestCase(ExplainTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def test_the_header_says_why_a_withhold_job_is_not_running(self):
        job = self.make_job(status=S.WITHHOLD)
        self.make_task(job, "T1")
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        header = html.split('id="job-why"')[1].split('class="card job-header"')[0]
        assert "Why is this job not running?" in header
        assert "The job is Withhold: change its status to Waiting to run it" in header

    def test_each_waiting_line_says_why_under_its_status(self):
        job = self.make_job()
        parent = self.make_task(job, "T1", description="Post invoices")
        child = self.make_task(job, "T2")
        self.add_condition(child, parent)
        start(job)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        line = html.split(f'id="task-why-{child.pk}"')[1].split("</div>")[0]
        assert "Waiting for task T1 &#x27;Post invoices&#x27; (needs Ended, it is Ready)" in line
        assert 'id="job-why"' in html  # empty, so the poll can fill it

    def test_the_diagram_poll_refreshes_the_reasons_out_of_band(self):
        job = self.make_job()
        task = self.make_task(job, "T1")
        start(job)
        r = self.client.get(
            f"/jobs/{job.pk}/?poll=1&editable=0",
            headers={"HX-Request": "true", "HX-Target": "job-diagram"},
        )
        html = r.content.decode()
        assert f'<div id="task-why-{task.pk}" class="why" hx-swap-oob="true">' in html
        assert "Queued for group default" in html
        assert '<div id="job-why" hx-swap-oob="true">' in html

    def test_the_group_warning_is_not_said_twice(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        job = self.make_job()
        self.make_task(job, "T1", group=reporting)
        start(job)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert "No batch server serves group Reporting" in html
        assert "⚠ no batch server serves this group" not in html

    def test_a_job_of_200_tasks_costs_the_same_queries_as_one_of_2(self):
        def page_queries(n: int) -> int:
            job = self.make_job(description=f"{n} tasks")
            tasks = [self.make_task(job, f"T{i}") for i in range(n)]
            for parent, child in zip(tasks, tasks[1:], strict=False):
                self.add_condition(child, parent)
            start(job)
            self.client.get(f"/jobs/{job.pk}/")  # the session's first request reads more
            with CaptureQueriesContext(connection) as ctx:
                # Every line, not only the first page of them, so each explanation is rendered.
                r = self.client.get(f"/jobs/{job.pk}/?tasks=all")
            assert r.status_code == 200
            assert r.content.decode().count("Waiting for task T") == n - 1
            return len(ctx.captured_queries)

        small = page_queries(2)
        big = page_queries(200)
        assert big == small
        assert big <= 22, big  # 22: the live version (jobs/live.py), the jobs this one triggers

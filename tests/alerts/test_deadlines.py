"""Deadline alerts (alerts/deadlines.py): the tick's check once per run and kind, the missed
alert of a run that ends late, who gets them, and the workspace's "late or at risk" tile."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import time_machine
from django.test import override_settings

from batchadmin.alerts import deadlines, delivery
from batchadmin.alerts.models import AlertEvent, AlertKind, AlertRule, BatchJobAlert, Notification
from batchadmin.engine import signals, transitions
from batchadmin.jobs import io
from batchadmin.jobs.forms import JobForm
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus
from tests.base import BaseTestCase

S = BatchStatus
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


class DeadlineCheckTestCase(BaseTestCase):
    def job(self, **overrides: object) -> BatchJob:
        return self.make_job(**{"scheduled_start": NINE, "deadline_minutes": 60} | overrides)

    def test_a_job_that_never_starts_is_at_risk_then_missed_once_each(self):
        job = self.job(active_period=None)
        assert deadlines.check_deadlines(NINE + 4 * MIN) == 0
        assert deadlines.check_deadlines(NINE + 5 * MIN) == 1  # not started 5 min after
        assert deadlines.check_deadlines(NINE + 6 * MIN) == 0  # once per run
        assert deadlines.check_deadlines(NINE + 61 * MIN) == 1
        assert deadlines.check_deadlines(NINE + 90 * MIN) == 0
        at_risk, missed = AlertEvent.objects.order_by("created")
        assert (at_risk.kind, missed.kind) == (AlertKind.AT_RISK, AlertKind.MISSED)
        assert missed.key == f"deadline:{job.pk}:2025-03-01T09:00:00+00:00:missed"
        assert missed.job_run_id is None  # no run ever started
        assert missed.details["reason"] == "not started 1 min 00 s after its deadline 10:00 UTC"
        assert missed.details["deadline_words"] == "must have ended within 1 h"

    def test_it_watches_waiting_and_running_jobs_only(self):
        self.job(status=S.WITHHOLD)
        self.job(status=S.ENDED)
        self.make_job(scheduled_start=NINE)  # no deadline
        assert deadlines.check_deadlines(NINE + 90 * MIN) == 0

    def test_a_run_whose_tasks_never_start_is_not_started(self):
        job = self.job()
        self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk, at=NINE)
        assert deadlines.check_deadlines(NINE + 5 * MIN) == 1
        event = AlertEvent.objects.get()
        assert event.job_run_id == BatchJob.objects.get(pk=job.pk).current_run_id
        assert event.details["reason"].startswith(
            "not started 5 min 00 s after its scheduled start"
        )

    def test_a_running_job_past_its_usual_duration_is_at_risk(self):
        job = self.job(status=S.EXECUTING, started_at=NINE)
        for day in range(1, 6):
            start = NINE - dt.timedelta(days=day)
            BatchJobRun.objects.create(
                job=job,
                status=S.ENDED,
                scheduled_start=start,
                started_at=start,
                ended_at=start + 20 * MIN,
            )
        run = BatchJobRun.objects.create(
            job=job, status=S.EXECUTING, scheduled_start=NINE, started_at=NINE
        )
        BatchJob.objects.filter(pk=job.pk).update(current_run=run)
        task = self.make_task(job, "T1", status=S.EXECUTING)
        run.task_runs.create(task=task, status=S.EXECUTING, started_at=NINE)
        assert deadlines.check_deadlines(NINE + 30 * MIN) == 0  # over, but 30 min left
        assert deadlines.check_deadlines(NINE + 41 * MIN) == 1
        assert AlertEvent.objects.get().details["reason"] == (
            "running 41 min 00 s, longer than usual (20 min 00 s), and 19 min 00 s left before 10:00 UTC"
        )

    def test_the_check_costs_a_few_queries_whatever_the_number_of_jobs(self):
        for _ in range(5):
            self.job()
        # The jobs, their usual durations; then the keys already raised, and one insert each.
        with self.assertNumQueries(2):
            assert deadlines.check_deadlines(NINE + 1 * MIN) == 0
        with self.assertNumQueries(3 + 5):
            assert deadlines.check_deadlines(NINE + 61 * MIN) == 5

    @override_settings(BATCH_DEADLINE_CHECK_SECONDS=30)
    def test_the_tick_runs_it_throttled(self):
        self.job()
        deadlines.CHECK.reset()

        def ticked(at: dt.datetime) -> int:
            counts: dict[str, int] = {}
            for _, more in signals.ticked.send(None, at=at):
                counts.update(cast(dict[str, int], more))
            return counts["deadlines"]

        assert ticked(NINE + 61 * MIN) == 1
        self.job(scheduled_start=NINE + MIN)
        assert ticked(NINE + 61 * MIN + dt.timedelta(seconds=20)) == 0  # throttled: 30 s
        assert ticked(NINE + 62 * MIN) == 1


class MissedOnSettleTestCase(BaseTestCase):
    def run_job(self, *, ends: dt.datetime, fail: bool = False) -> BatchJob:
        job = self.make_job(scheduled_start=NINE, deadline_time=dt.time(9, 30))
        task = self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk, at=NINE)
        attempt = transitions.claim_task(
            task_id=task.pk, server_id=self.server.pk, hostname="h", at=NINE
        )
        assert attempt is not None
        outcome = (
            transitions.Outcome(error="boom", retryable=False) if fail else transitions.Outcome()
        )
        assert transitions.finish_task(task_id=task.pk, attempt=1, outcome=outcome, at=ends)
        return job

    def test_a_run_that_ends_after_its_deadline_missed_it(self):
        job = self.run_job(ends=NINE + 31 * MIN)
        event = AlertEvent.objects.get(kind=AlertKind.MISSED)
        assert event.job_run_id == BatchJob.objects.get(pk=job.pk).current_run_id
        assert event.details["reason"] == "ended Ended at 09:31 UTC, after its deadline 09:30 UTC"
        # The check knows it: no second "missed" for the run.
        assert deadlines.check_deadlines(NINE + 40 * MIN) == 0

    def test_a_run_that_ends_in_time_did_not(self):
        self.run_job(ends=NINE + 29 * MIN, fail=True)
        assert not AlertEvent.objects.filter(kind=AlertKind.MISSED).exists()


class DeadlineDeliveryTestCase(BaseTestCase):
    def test_subscribers_of_the_job_and_rules_get_it(self):
        job = self.make_job(scheduled_start=NINE, deadline_minutes=10)
        self.make_task(job, "T1")
        BatchJobAlert.objects.create(job=job, user=self.dave, deadline=True, popup=True)
        BatchJobAlert.objects.create(job=job, user=self.bob, error=True, popup=True)
        AlertRule.objects.create(user=self.alice, deadline=True, error=False, email=True)
        assert deadlines.check_deadlines(NINE + 11 * MIN) == 1
        event = AlertEvent.objects.get()
        result = delivery.deliver(event.pk)
        assert result is not None and result.notified == 2
        assert set(Notification.objects.values_list("user__username", flat=True)) == {
            "alice",
            "dave",
        }
        message = delivery.build_message(event, Notification.objects.get(user=self.alice))
        assert message is not None
        assert message.subject == f"Batch job {job.pk} missed its deadline: Nightly settlement"
        assert "Why:       not started 1 min 00 s after its deadline 09:10 UTC" in message.body

    def test_the_bell_shows_the_reason(self):
        job = self.make_job(scheduled_start=NINE, deadline_minutes=10)
        BatchJobAlert.objects.create(job=job, user=self.alice, deadline=True, popup=True)
        deadlines.check_deadlines(NINE + 11 * MIN)
        delivery.deliver(AlertEvent.objects.get().pk)
        self.client.force_login(self.alice)
        html = self.client.get("/alerts/notifications/").content.decode()
        assert "Deadline missed" in html and "not started 1 min 00 s after its deadline" in html


class DeadlineTileTestCase(BaseTestCase):
    def test_the_workspace_counts_late_and_at_risk_jobs_and_lists_them(self):
        with time_machine.travel(NINE + 61 * MIN, tick=False):
            late = self.make_job(scheduled_start=NINE, deadline_minutes=60, description="Late one")
            self.make_job(
                scheduled_start=NINE + 50 * MIN,
                deadline_minutes=60,
                description="Risky",
                created_by=self.dave,
            )
            self.make_job(scheduled_start=NINE + 60 * MIN, deadline_minutes=60)  # on track
            self.client.force_login(self.alice)
            html = self.client.get("/").content.decode()
            assert "Late or at risk" in html
            assert "1 past the deadline, 1 at risk of missing it" in html
            assert f"Job {late.pk}: Late one" in html and "Risky" in html
            # A batch user sees the counts of every job, and only their own in the list.
            self.client.force_login(self.dave)
            html = self.client.get(
                "/", headers={"HX-Request": "true", "HX-Target": "workspace-live"}
            ).content.decode()
            assert "1 past the deadline, 1 at risk of missing it" in html
            assert "Late one" not in html and "Risky" in html


class DeadlineFormAndFileTestCase(BaseTestCase):
    def test_the_job_form_takes_one_kind_of_deadline(self):
        job = self.make_job()
        data = {"description": "x", "scheduled_start": "2025-03-01 09:00", "save_history": "always"}
        form = JobForm(
            data | {"deadline_time": "06:00", "deadline_minutes": "30"},
            instance=job,
            user=self.alice,
        )
        assert not form.is_valid()
        assert "not both" in form.errors["deadline_minutes"][0]
        form = JobForm(data | {"deadline_time": "06:00"}, instance=job, user=self.alice)
        assert form.is_valid(), form.errors
        assert form.save_header().deadline_time == dt.time(6)

    def test_import_and_export_carry_the_deadline(self):
        before = BatchJob.objects.count()
        good: list[dict[str, Any]] = [{"at": "06:00"}, {"within_minutes": 120}]
        for deadline in good:
            data: dict[str, Any] = {"description": "d", "deadline": deadline, "tasks": []}
            [job] = io.import_data(data)
            assert io.export_job(job)["deadline"] == deadline
        [job] = io.import_data({"description": "none", "tasks": []})
        assert "deadline" not in io.export_job(job)
        bad: list[tuple[dict[str, Any], str]] = [
            ({"at": "25:00"}, "deadline at '25:00' is not a time"),
            ({"within_minutes": 0}, "within_minutes must be a whole number from 1 to 10080"),
            ({"at": "06:00", "within_minutes": 5}, 'deadline is {"at": "HH:MM"}'),
        ]
        for wrong, message in bad:
            with self.subTest(message):
                try:
                    io.import_data({"description": "d", "deadline": wrong, "tasks": []})
                except io.ImportFailure as exc:
                    assert message in str(exc)
                else:
                    raise AssertionError("imported")
        assert BatchJob.objects.count() == before + 3

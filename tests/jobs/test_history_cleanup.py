"""The batch job history clean-up: jobs.history.clean_up, the "history.cleanup" batch process and
the daily job a migration seeds."""

from __future__ import annotations

import datetime as dt
import importlib
from io import StringIO
from typing import Any
from unittest import mock

import pytest
import time_machine
from django.apps import apps
from django.core.management import call_command

from batchadmin.alerts.models import AlertEvent, AlertKind, Notification
from batchadmin.jobs import history
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    MissedOccurrence,
    SaveHistory,
    StatusChange,
)
from batchadmin.processes import maintenance, registry
from batchadmin.servers.models import BatchGroup
from tests.base import BaseTestCase, drain, start

S = BatchStatus
UTC = dt.UTC
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
LIMIT = NOW - dt.timedelta(days=30)  # keep_days 30
OLD = NOW - dt.timedelta(days=40)
RECENT = NOW - dt.timedelta(days=10)
seed_migration = importlib.import_module("batchadmin.jobs.migrations.0005_seed_history_cleanup")


class CleanupTestCase(BaseTestCase):
    def make_run(
        self,
        job: BatchJob,
        ended: dt.datetime | None,
        *,
        status: str = S.ENDED,
        attempts: int = 1,
        lines: int = 2,
    ) -> BatchJobRun:
        """A run of ``job`` (None: still running) with ``attempts`` attempts of its first task,
        each with ``lines`` log lines."""
        began = (ended or NOW) - dt.timedelta(minutes=5)
        run = BatchJobRun.objects.create(
            job=job,
            status=status if ended else S.EXECUTING,
            scheduled_start=began,
            started_at=began,
            ended_at=ended,
        )
        task = job.tasks.first() or self.make_task(job, "T1")
        for attempt in range(1, attempts + 1):
            task_run = BatchTaskRun.objects.create(
                job_run=run, task=task, attempt=attempt, status=run.status, ended_at=ended
            )
            BatchLogEntry.objects.bulk_create(
                BatchLogEntry(task_run=task_run, message=f"line {n}") for n in range(lines)
            )
        return run

    def ids(self, model: Any, **filters: Any) -> set[int]:
        return set(model.objects.filter(**filters).values_list("pk", flat=True))


class DeleteRunsTestCase(CleanupTestCase):
    def test_it_deletes_runs_that_ended_before_the_limit_with_attempts_and_lines(self):
        job = self.make_job(description="Invoice posting", status=S.ENDED)
        old = self.make_run(job, OLD, attempts=2, lines=3)
        recent = self.make_run(job, RECENT)
        result = history.clean_up(before=LIMIT)
        assert self.ids(BatchJobRun, job=job) == {recent.pk}
        assert not BatchTaskRun.objects.filter(job_run_id=old.pk).exists()
        assert not BatchLogEntry.objects.filter(task_run__job_run_id=old.pk).exists()
        assert BatchLogEntry.objects.filter(task_run__job_run=recent).count() == 2
        assert (result.runs, result.task_runs, result.log_lines) == (1, 2, 6)
        assert not result.canceled
        assert result.describe() == (
            "Deleted 1 job run (2 task attempts, 6 log lines) that ended before "
            "2026-05-02 12:00 UTC."
        )
        job.refresh_from_db()
        assert job.status == S.ENDED  # the job itself stays

    def test_it_never_deletes_a_run_in_progress(self):
        job = self.make_job(status=S.EXECUTING)
        running = self.make_run(job, None)
        BatchJobRun.objects.filter(pk=running.pk).update(started_at=NOW - dt.timedelta(days=90))
        BatchJob.objects.filter(pk=job.pk).update(current_run=running)
        history.clean_up(before=LIMIT)
        assert BatchJobRun.objects.filter(pk=running.pk).exists()
        # Even one that an odd clock gave an end: it is the running job's current run.
        BatchJobRun.objects.filter(pk=running.pk).update(ended_at=OLD)
        history.clean_up(before=LIMIT)
        assert BatchJobRun.objects.filter(pk=running.pk).exists()

    def test_the_job_forgets_a_last_run_that_was_deleted(self):
        job = self.make_job(status=S.ERROR)
        run = self.make_run(job, OLD, status=S.ERROR)
        BatchJob.objects.filter(pk=job.pk).update(current_run=run, started_at=OLD, ended_at=OLD)
        history.clean_up(before=LIMIT)
        job.refresh_from_db()
        assert job.current_run is None
        assert (job.status, job.ended_at) == (S.ERROR, OLD)

    def test_it_deletes_only_the_statuses_asked_for(self):
        job = self.make_job(status=S.ENDED)
        ended = self.make_run(job, OLD, status=S.ENDED)
        failed = self.make_run(job, OLD, status=S.ERROR)
        canceled = self.make_run(job, OLD, status=S.CANCELED)
        result = history.clean_up(before=LIMIT, statuses=[S.ERROR, S.CANCELED])
        assert self.ids(BatchJobRun, job=job) == {ended.pk}
        assert result.runs == 2
        assert not BatchJobRun.objects.filter(pk__in=[failed.pk, canceled.pk]).exists()

    def test_it_deletes_only_runs_of_jobs_whose_description_matches(self):
        invoices = self.make_job(description="Nightly INVOICE posting")
        payroll = self.make_job(description="Payroll")
        self.make_run(invoices, OLD)
        kept = self.make_run(payroll, OLD)
        history.clean_up(before=LIMIT, description="invoice")
        assert not BatchJobRun.objects.filter(job=invoices).exists()
        assert self.ids(BatchJobRun, job=payroll) == {kept.pk}

    def test_it_works_in_chunks_and_stops_between_them(self):
        job = self.make_job()
        runs = [self.make_run(job, OLD - dt.timedelta(minutes=n)) for n in range(5)]
        asked: list[int] = []

        def should_stop() -> bool:
            asked.append(BatchJobRun.objects.filter(job=job).count())
            return len(asked) > 1  # after the first chunk

        with mock.patch.object(history, "RUNS_PER_CHUNK", 2):
            result = history.clean_up(before=LIMIT, should_stop=should_stop)
        assert result.canceled
        assert asked == [5, 3]  # asked before each chunk
        assert result.runs == 2
        assert self.ids(BatchJobRun, job=job) == {
            r.pk for r in sorted(runs, key=lambda r: r.pk)[2:]
        }

    def test_it_reports_progress_up_to_100(self):
        job = self.make_job()
        for n in range(4):
            self.make_run(job, OLD - dt.timedelta(minutes=n))
        seen: list[int] = []
        with mock.patch.object(history, "RUNS_PER_CHUNK", 1):
            history.clean_up(before=LIMIT, progress=seen.append)
        assert seen == [25, 50, 75, 99, 100]

    def test_a_chunk_holds_at_most_the_attempt_budget_but_at_least_one_run(self):
        job = self.make_job()
        small = [self.make_run(job, OLD, attempts=2, lines=0) for _ in range(3)]
        big = self.make_run(job, OLD, attempts=7, lines=0)
        with mock.patch.object(history, "TASK_RUNS_PER_CHUNK", 5):
            assert history._within_budget([r.pk for r in small]) == [small[0].pk, small[1].pk]
            assert history._within_budget([big.pk, small[0].pk]) == [big.pk]
            result = history.clean_up(before=LIMIT)
        assert (result.runs, result.task_runs) == (4, 13)
        assert not BatchJobRun.objects.filter(job=job).exists()


class OtherRecordsTestCase(CleanupTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(description="Invoice posting", status=S.ENDED)
        self.other = self.make_job(description="Payroll", status=S.ENDED)

    def change(self, job: BatchJob, at: dt.datetime) -> StatusChange:
        return StatusChange.objects.create(
            job=job, old_status=S.EXECUTING, new_status=S.ENDED, at=at
        )

    def missed(self, job: BatchJob, at: dt.datetime) -> MissedOccurrence:
        return MissedOccurrence.objects.create(
            job=job,
            scheduled_start=at,
            last_scheduled_start=at,
            reason=MissedOccurrence.Reason.RUNNING,
            recorded_at=at,
        )

    def event(
        self, job: BatchJob, at: dt.datetime, *, processed: bool = True, email: str = "sent"
    ) -> AlertEvent:
        event = AlertEvent.objects.create(
            job=job,
            kind=AlertKind.ENDED,
            key=f"test:{job.pk}:{at.isoformat()}:{processed}:{email}",
            created=at,
            processed_at=at if processed else None,
        )
        Notification.objects.create(event=event, user=self.alice, email=email, created=at)
        return event

    def test_it_deletes_status_changes_missed_runs_and_processed_alerts_before_the_limit(self):
        old_change, new_change = self.change(self.job, OLD), self.change(self.job, RECENT)
        old_missed, new_missed = self.missed(self.job, OLD), self.missed(self.job, RECENT)
        old_event, new_event = self.event(self.job, OLD), self.event(self.job, RECENT)
        unprocessed = self.event(self.job, OLD, processed=False)
        mailing = self.event(self.job, OLD, email=Notification.Email.PENDING)
        result = history.clean_up(before=LIMIT)
        assert self.ids(StatusChange, job=self.job) == {new_change.pk}
        assert self.ids(MissedOccurrence, job=self.job) == {new_missed.pk}
        # Not yet delivered, or an e-mail still being retried: the event stays.
        assert self.ids(AlertEvent, job=self.job) == {new_event.pk, unprocessed.pk, mailing.pk}
        assert not Notification.objects.filter(event_id=old_event.pk).exists()
        assert (result.status_changes, result.missed, result.alert_events) == (1, 1, 1)
        assert result.deleted["alerts.Notification"] == 1
        assert result.describe().endswith(
            ", and 1 status change, 1 missed-occurrence record, 1 processed alert event "
            "from before then."
        )
        assert old_change.pk not in self.ids(StatusChange)
        assert old_missed.pk not in self.ids(MissedOccurrence)

    def test_it_keeps_them_when_told_to(self):
        change, missed, event = (
            self.change(self.job, OLD),
            self.missed(self.job, OLD),
            self.event(self.job, OLD),
        )
        history.clean_up(before=LIMIT, other_records=False)
        assert StatusChange.objects.filter(pk=change.pk).exists()
        assert MissedOccurrence.objects.filter(pk=missed.pk).exists()
        assert AlertEvent.objects.filter(pk=event.pk).exists()

    def test_the_description_filter_applies_to_them_the_status_filter_does_not(self):
        mine, theirs = self.change(self.job, OLD), self.change(self.other, OLD)
        history.clean_up(before=LIMIT, statuses=[S.ERROR], description="invoice")
        assert not StatusChange.objects.filter(pk=mine.pk).exists()
        assert StatusChange.objects.filter(pk=theirs.pk).exists()

    def test_a_stop_before_them_leaves_them(self):
        change = self.change(self.job, OLD)
        result = history.clean_up(before=LIMIT, should_stop=lambda: True)
        assert result.canceled
        assert StatusChange.objects.filter(pk=change.pk).exists()


class ProcessTestCase(CleanupTestCase):
    def test_it_is_registered_with_its_parameters(self):
        process = registry.get("history.cleanup")
        assert process.label == "Batch job history clean-up"
        assert process.clean_parameters({}) == {
            "keep_days": 30,
            "statuses": [],
            "description": "",
            "other_records": True,
            "audit_keep_days": None,
        }
        assert process.clean_parameters({"keep_days": "7", "statuses": ["error"]}) == {
            "keep_days": 7,
            "statuses": ["error"],
            "description": "",
            "other_records": True,
            "audit_keep_days": None,
        }

    def test_it_refuses_bad_parameters(self):
        process = registry.get("history.cleanup")
        table: list[tuple[dict[str, Any], str]] = [
            ({"keep_days": 0}, "keep_days: Ensure this value is greater than or equal to 1."),
            ({"keep_days": "a month"}, "keep_days: Enter a whole number."),
            (
                {"statuses": ["executing"]},
                "statuses: Select a valid choice. executing is not one of the available choices.",
            ),
            ({"description": "x" * 201}, "description: Ensure this value has at most 200"),
        ]
        for data, message in table:
            with self.subTest(message):
                with pytest.raises(registry.ParameterError) as excinfo:
                    process.clean_parameters(data)
                assert message in excinfo.value.describe()

    def test_the_task_line_saves_its_parameters_from_the_form(self):
        job = self.make_job(status=S.WITHHOLD)
        self.client.force_login(self.alice)
        data = {
            "description": "Clean up",
            "process": "history.cleanup",
            "param-keep_days": "90",
            "param-statuses": ["ended", "canceled"],
            "param-description": "invoice",
            # "param-other_records" unticked: a browser posts nothing for it
            "company": "",
            "group": str(BatchGroup.objects.default().pk),
            "max_retries": "0",
            "condition_type": "all",
            "cond-TOTAL_FORMS": "0",
            "cond-INITIAL_FORMS": "0",
        }
        r = self.client.post(f"/jobs/{job.pk}/tasks/new/", data)
        assert r.status_code == 302
        assert job.tasks.get().parameters == {
            "keep_days": 90,
            "statuses": ["ended", "canceled"],
            "description": "invoice",
            "other_records": False,
            "audit_keep_days": None,  # the audit trail is kept unless the managers say
        }

    def test_it_runs_as_a_batch_job_and_logs_what_it_deleted(self):
        with time_machine.travel(NOW, tick=False):
            old_job = self.make_job(description="Invoice posting", status=S.ENDED)
            self.make_run(old_job, OLD, attempts=2, lines=5)
            kept = self.make_run(old_job, RECENT)
            job = self.make_job(description="Batch job history clean-up")
            self.make_task(job, "cleanup", process="history.cleanup", parameters={"keep_days": 30})
            start(job)
            drain(job)
        assert job.status == S.ENDED
        assert self.ids(BatchJobRun, job=old_job) == {kept.pk}
        lines = list(
            BatchLogEntry.objects.filter(task_run__task__job=job)
            .order_by("pk")
            .values_list("message", flat=True)
        )
        assert lines == [
            "Deleting history that ended before 2026-05-02 12:00 UTC.",
            "Deleted 1 job run (2 task attempts, 10 log lines) that ended before "
            "2026-05-02 12:00 UTC.",
        ]
        # Its own run (in progress while it ran) is kept: it is this job's history.
        assert BatchJobRun.objects.filter(job=job).count() == 1

    def test_it_names_the_filters_in_its_log(self):
        ctx = mock.Mock()
        ctx.cancel_requested.return_value = False
        with time_machine.travel(NOW, tick=False):
            maintenance.history_cleanup(
                ctx,
                keep_days=30,
                statuses=["error", "canceled"],
                description="inv",
                other_records=False,
            )
        assert ctx.info.call_args_list[0] == mock.call(
            "Deleting history that ended before 2026-05-02 12:00 UTC: runs that ended Error or "
            "Canceled; jobs whose description contains 'inv'."
        )
        ctx.progress.assert_called_with(100)

    def test_a_cancel_stops_it_with_a_warning(self):
        job = self.make_job()
        run = self.make_run(job, OLD)
        ctx = mock.Mock()
        ctx.cancel_requested.return_value = True
        with time_machine.travel(NOW, tick=False):
            maintenance.history_cleanup(
                ctx, keep_days=30, statuses=[], description="", other_records=True
            )
        ctx.warning.assert_called_once_with(
            "Canceled. Deleted 0 job runs (0 task attempts, 0 log lines) that ended before "
            "2026-05-02 12:00 UTC. The rest is left for the next run."
        )
        assert BatchJobRun.objects.filter(pk=run.pk).exists()


class SeedTestCase(BaseTestCase):
    def seeded(self) -> list[BatchJob]:
        return list(BatchJob.objects.filter(tasks__process=history.CLEANUP_PROCESS))

    def reseed(self, at: dt.datetime) -> BatchJob:
        BatchJob.objects.filter(tasks__process=history.CLEANUP_PROCESS).delete()
        with time_machine.travel(at, tick=False):
            seed_migration.seed(apps, None)
        [job] = self.seeded()
        return job

    def test_it_seeds_a_daily_job_at_two_in_the_night_utc(self):
        job = self.reseed(NOW)
        assert job.description == "Batch job history clean-up"
        assert job.status == S.WAITING
        assert job.save_history == SaveHistory.ERRORS
        assert job.scheduled_start == dt.datetime(2026, 6, 2, 2, 0, tzinfo=UTC)
        task = job.tasks.get()
        assert task.group == BatchGroup.objects.default()
        # What the parameter form would store: the task runs as it is.
        process = registry.get(task.process)
        # (The audit limit came later: left out, it is empty and the audit trail is kept.)
        assert process.clean_parameters(task.parameters) == task.parameters | {
            "audit_keep_days": None
        }
        recurrence = job.recurrence
        assert recurrence.describe().startswith("Every day at 02:00")
        assert recurrence.next_occurrence(job.scheduled_start) == dt.datetime(
            2026, 6, 3, 2, 0, tzinfo=UTC
        )

    def test_before_two_it_starts_the_same_night(self):
        job = self.reseed(dt.datetime(2026, 6, 1, 1, 59, tzinfo=UTC))
        assert job.scheduled_start == dt.datetime(2026, 6, 1, 2, 0, tzinfo=UTC)

    def test_it_seeds_once_and_unseeds(self):
        self.reseed(NOW)
        seed_migration.seed(apps, None)
        assert len(self.seeded()) == 1
        seed_migration.unseed(apps, None)
        assert self.seeded() == []

    def test_it_leaves_a_clean_up_job_an_operator_made(self):
        BatchJob.objects.filter(tasks__process=history.CLEANUP_PROCESS).delete()
        mine = self.make_job(description="My clean-up")
        self.make_task(mine, "T1", process=history.CLEANUP_PROCESS)
        seed_migration.seed(apps, None)
        assert self.seeded() == [mine]

    def test_demo_data_neither_counts_nor_copies_it(self):
        # Only the seeded job: demo_data still adds its demo night.
        BatchJob.objects.exclude(tasks__process=history.CLEANUP_PROCESS).delete()
        self.reseed(NOW)
        out = StringIO()
        call_command("demo_data", stdout=out)
        assert "Demo data: created jobs" in out.getvalue()
        assert len(self.seeded()) == 1
        assert BatchTask.objects.exclude(process=history.CLEANUP_PROCESS).exists()
        out = StringIO()
        call_command("demo_data", stdout=out)
        assert "jobs exist already, none added" in out.getvalue()
        assert len(self.seeded()) == 1

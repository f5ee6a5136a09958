"""The overlap policy of a recurring job (issue 14, item 4): what an occurrence that comes while
the job still runs does. skip (today's behaviour, recorded as missed), buffer_one (run as soon
as the current run ends) or cancel_running (cancel the running one, with the reason in the
history, and start)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from batchadmin.engine import tick, transitions
from batchadmin.engine.transitions import Outcome
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    MissedOccurrence,
    StatusChange,
)
from tests.base import HOSTNAME
from tests.engine.test_recurrence import NINE, RecurrenceTestCase

S = BatchStatus
Overlap = BatchRecurrence.Overlap
HOUR = dt.timedelta(hours=1)
MINUTE = dt.timedelta(minutes=1)


class OverlapTestCase(RecurrenceTestCase):
    def hourly(self, overlap: str, **overrides: Any) -> BatchJob:
        return self.make_recurring(unit=BatchRecurrence.Unit.HOURS, overlap=overlap, **overrides)

    def start_and_claim(self, job: BatchJob, at: dt.datetime) -> BatchTask:
        assert transitions.start_job(job_id=job.pk, at=at)
        task = BatchTask.objects.get(job=job)
        claimed = transitions.claim_task(
            task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=at
        )
        assert claimed is not None
        return BatchTask.objects.get(pk=task.pk)

    def finish(self, task: BatchTask, at: dt.datetime, **outcome: Any) -> None:
        assert transitions.finish_task(
            task_id=task.pk, attempt=task.attempt, outcome=Outcome(**outcome), at=at
        )

    def last_reason(self, job: BatchJob) -> str:
        reason: str = job.status_changes.order_by("-at", "-pk").values_list("reason", flat=True)[0]
        return reason

    def missed(self, job: BatchJob) -> list[tuple[dt.datetime, int]]:
        return list(
            MissedOccurrence.objects.filter(job=job).values_list("scheduled_start", "occurrences")
        )


class SkipTestCase(OverlapTestCase):
    def test_occurrences_during_the_run_are_missed_and_the_next_one_waits(self):
        job = self.hourly(Overlap.SKIP)
        task = self.start_and_claim(job, NINE)
        self.finish(task, NINE + 2 * HOUR + 5 * MINUTE)  # 10:00 and 11:00 came meanwhile
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, NINE + 3 * HOUR)
        assert self.missed(job) == [(NINE + HOUR, 2)]


class BufferOneTestCase(OverlapTestCase):
    def test_the_latest_occurrence_runs_as_soon_as_the_run_ends(self):
        job = self.hourly(Overlap.BUFFER_ONE)
        task = self.start_and_claim(job, NINE)
        ended = NINE + 2 * HOUR + 5 * MINUTE
        self.finish(task, ended)
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, ended)
        assert self.missed(job) == [(NINE + HOUR, 1)]  # 10:00; 11:00 is the one buffered
        assert self.last_reason(job) == (
            "Overlap policy: the occurrence of 2025-03-03 11:00 UTC came while the job ran; "
            "it runs now"
        )
        assert tick.handle_due_jobs(ended + dt.timedelta(seconds=1)) == 1
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert BatchJobRun.objects.filter(job=job).count() == 2

    def test_a_run_shorter_than_the_interval_changes_nothing(self):
        job = self.hourly(Overlap.BUFFER_ONE)
        task = self.start_and_claim(job, NINE)
        self.finish(task, NINE + 10 * MINUTE)
        job.refresh_from_db()
        assert job.scheduled_start == NINE + HOUR
        assert self.missed(job) == []

    def test_an_error_run_buffers_too(self):
        job = self.hourly(Overlap.BUFFER_ONE)
        task = self.start_and_claim(job, NINE)
        self.finish(task, NINE + 2 * HOUR, error="boom")
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, NINE + 2 * HOUR)

    def test_a_range_that_is_over_buffers_nothing(self):
        job = self.hourly(Overlap.BUFFER_ONE, end_after=1)
        task = self.start_and_claim(job, NINE)
        self.finish(task, NINE + 2 * HOUR, error="boom")
        job.refresh_from_db()
        assert job.status == S.ERROR  # the one run of the range has been made


class CancelRunningTestCase(OverlapTestCase):
    def test_the_next_occurrence_cancels_the_run_with_the_reason_and_starts(self):
        job = self.hourly(Overlap.CANCEL_RUNNING)
        task = self.start_and_claim(job, NINE)
        assert BatchRecurrence.objects.get(job=job).overlap_at == NINE + HOUR
        assert tick.handle_overlaps(NINE + 30 * MINUTE) == 0
        assert tick.handle_overlaps(NINE + HOUR) == 1
        job.refresh_from_db()
        assert job.status == S.CANCELING
        change = StatusChange.objects.filter(job=job, new_status=S.CANCELING).get()
        assert change.reason == (
            "Overlap policy: the occurrence of 2025-03-03 10:00 UTC came while this run still "
            "executed; canceled to start it."
        )
        assert tick.handle_overlaps(NINE + HOUR) == 0  # once
        # The process sees the cancel and stops.
        task.refresh_from_db()
        stopped = NINE + HOUR + 3 * dt.timedelta(seconds=1)
        self.finish(task, stopped, error="Canceled", canceled=True)
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, stopped)
        first = BatchJobRun.objects.filter(job=job).get()
        assert first.status == S.CANCELED
        recurring = BatchRecurrence.objects.get(job=job)
        assert (recurring.overlap_at, recurring.overlap_canceled) == (None, False)
        assert tick.handle_due_jobs(stopped + dt.timedelta(seconds=1)) == 1
        assert BatchJobRun.objects.filter(job=job).count() == 2

    def test_an_operators_cancel_still_ends_canceled(self):
        job = self.hourly(Overlap.CANCEL_RUNNING)
        task = self.start_and_claim(job, NINE)
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        task.refresh_from_db()
        self.finish(task, NINE + 2 * HOUR, error="Canceled", canceled=True)
        job.refresh_from_db()
        assert job.status == S.CANCELED

    def test_a_paused_recurrence_is_not_canceled(self):
        job = self.hourly(Overlap.CANCEL_RUNNING)
        self.start_and_claim(job, NINE)
        assert transitions.pause_recurrence(
            job_id=job.pk, by_id=self.alice.pk, reason="freeze", at=NINE + MINUTE
        )
        assert tick.handle_overlaps(NINE + HOUR) == 0
        assert BatchJob.objects.get(pk=job.pk).status == S.EXECUTING


class CancelRunningMinutesTestCase(OverlapTestCase):
    def test_every_minute_with_an_end(self):
        job = self.make_recurring(
            unit=BatchRecurrence.Unit.MINUTES, overlap=Overlap.CANCEL_RUNNING, end_after=2
        )
        self.start_and_claim(job, NINE + dt.timedelta(milliseconds=500))
        assert BatchRecurrence.objects.get(job=job).overlap_at == NINE + MINUTE
        assert tick.handle_overlaps(NINE + MINUTE + dt.timedelta(milliseconds=500)) == 1

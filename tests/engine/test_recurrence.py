"""Recurring jobs and active periods in the engine: transitions.start_job, the settle step and
the tick (docs/architecture.md, section 5)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import time_machine
from django.test import override_settings
from django.utils.timezone import now

from batchadmin.engine import tick, transitions
from batchadmin.engine.transitions import Outcome
from batchadmin.jobs.models import (
    ActivePeriod,
    BatchJob,
    BatchJobRun,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    MissedOccurrence,
    StatusChange,
)
from tests.base import HOSTNAME, BaseTestCase

S = BatchStatus
UTC = dt.UTC
NINE = dt.datetime(2025, 3, 3, 9, 0, tzinfo=UTC)  # a Monday
MINUTE = dt.timedelta(minutes=1)
Missed = BatchRecurrence.Missed
Reason = MissedOccurrence.Reason


class RecurrenceTestCase(BaseTestCase):
    def make_recurring(self, **overrides: Any) -> BatchJob:
        """A waiting job with one task that recurs every day at 09:00 UTC from NINE."""
        job = self.make_job(scheduled_start=overrides.pop("scheduled_start", NINE))
        self.make_task(job, "T1")
        defaults: dict[str, Any] = {
            "job": job,
            "start_date": NINE.date(),
            "start_time": NINE.time(),
            "time_zone": "UTC",
            "unit": BatchRecurrence.Unit.DAYS,
        }
        BatchRecurrence.objects.create(**dict(defaults, **overrides))
        return job

    def run_once(
        self, job: BatchJob, at: dt.datetime, *, takes: dt.timedelta = MINUTE, error: str = ""
    ) -> None:
        """Start ``job`` at ``at`` and run its tasks, each taking ``takes``, as a worker would."""
        assert transitions.start_job(job_id=job.pk, at=at), "the job did not start"
        self.finish_tasks(job, at, takes=takes, error=error)

    def finish_tasks(
        self, job: BatchJob, at: dt.datetime, *, takes: dt.timedelta = MINUTE, error: str = ""
    ) -> None:
        for task in BatchTask.objects.filter(job=job, status=S.READY):
            claimed = transitions.claim_task(
                task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=at
            )
            assert claimed is not None
            assert transitions.finish_task(
                task_id=task.pk,
                attempt=claimed.attempt,
                outcome=Outcome(error=error),
                at=at + takes,
            )
        job.refresh_from_db()

    def moves(self, job: BatchJob) -> list[tuple[str, str]]:
        return list(job.status_changes.order_by("at", "pk").values_list("old_status", "new_status"))


class BackToWaitingTestCase(RecurrenceTestCase):
    def test_it_returns_to_waiting_with_the_next_occurrence_after_ended(self):
        job = self.make_recurring()
        self.run_once(job, NINE)
        assert job.status == S.WAITING
        assert job.scheduled_start == NINE + dt.timedelta(days=1)
        assert job.tasks.get().status == S.WAITING  # reset for the next run
        run = BatchJobRun.objects.get()
        assert (run.status, run.scheduled_start, run.ended_at) == (S.ENDED, NINE, NINE + MINUTE)
        assert self.moves(job) == [
            (S.WAITING, S.EXECUTING),
            (S.EXECUTING, S.ENDED),  # what alerts on "ended" read
            (S.ENDED, S.WAITING),
        ]
        back = job.status_changes.order_by("at", "pk").last()
        assert back is not None
        assert back.reason == "Recurrence: next run 2025-03-04 09:00 UTC"

    def test_it_returns_to_waiting_after_error_too(self):
        job = self.make_recurring()
        self.run_once(job, NINE, error="RuntimeError: boom")
        assert job.status == S.WAITING
        assert job.scheduled_start == NINE + dt.timedelta(days=1)
        assert BatchJobRun.objects.get().status == S.ERROR
        task = job.tasks.get()
        assert (task.status, task.retries) == (S.WAITING, 0)

    def test_it_keeps_a_canceled_job_canceled(self):
        job = self.make_job(scheduled_start=NINE)
        self.make_task(job, "T1")
        BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="UTC"
        )
        assert transitions.start_job(job_id=job.pk, at=NINE)
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.CANCELED
        assert job.scheduled_start == NINE

    def test_it_writes_one_history_row_per_run(self):
        job = self.make_recurring()
        for day in range(3):
            self.run_once(job, NINE + dt.timedelta(days=day, seconds=1))
        runs = BatchJobRun.objects.filter(job=job).order_by("started_at")
        assert [r.scheduled_start for r in runs] == [NINE + dt.timedelta(days=d) for d in range(3)]
        assert {r.status for r in runs} == {S.ENDED}
        assert job.recurrence.runs == 3

    def test_it_stops_after_n_runs(self):
        job = self.make_recurring(end_after=2)
        self.run_once(job, NINE)
        assert job.status == S.WAITING
        self.run_once(job, job.scheduled_start)
        assert job.status == S.ENDED  # the range is over: the job keeps its final status
        assert job.recurrence.runs == 2
        assert job.recurrence.describe() == "Every day at 09:00 UTC, no runs left"
        assert not transitions.start_job(job_id=job.pk, at=NINE + dt.timedelta(days=5))

    def test_it_stops_after_the_end_date(self):
        job = self.make_recurring(end_by=NINE.date() + dt.timedelta(days=1))
        self.run_once(job, NINE)
        self.run_once(job, NINE + dt.timedelta(days=1))
        assert job.status == S.ENDED
        assert BatchJobRun.objects.filter(job=job).count() == 2

    def test_it_counts_a_run_that_ran_again_by_hand(self):
        job = self.make_recurring(end_after=1)
        self.run_once(job, NINE)
        assert job.status == S.ENDED
        assert transitions.release_job(job_id=job.pk, by_id=self.alice.pk)
        self.run_once(job, NINE + dt.timedelta(hours=1))
        assert job.status == S.ENDED  # run again by hand; the range stays over
        assert job.recurrence.runs == 2

    def test_it_leaves_jobs_without_recurrence_alone(self):
        job = self.make_job(scheduled_start=NINE)
        self.make_task(job, "T1")
        self.run_once(job, NINE)
        assert job.status == S.ENDED
        assert self.moves(job)[-1] == (S.EXECUTING, S.ENDED)


class MissedRunsTestCase(RecurrenceTestCase):
    def test_it_records_occurrences_missed_while_the_job_ran_and_does_not_replay_them(self):
        job = self.make_recurring(unit=BatchRecurrence.Unit.MINUTES)
        self.run_once(job, NINE, takes=dt.timedelta(seconds=150))
        assert job.scheduled_start == NINE + 3 * MINUTE  # 09:03, the first after 09:02:30
        missed = MissedOccurrence.objects.get()
        assert (missed.scheduled_start, missed.last_scheduled_start, missed.occurrences) == (
            NINE + MINUTE,
            NINE + 2 * MINUTE,
            2,
        )
        assert missed.reason == Reason.RUNNING

    def test_it_runs_a_late_job_once_then_follows_the_pattern(self):
        """Missed policy "run once now" (the default): servers were down from 09:00 to 09:10."""
        job = self.make_recurring(unit=BatchRecurrence.Unit.MINUTES)
        late = NINE + dt.timedelta(minutes=10, seconds=20)
        self.run_once(job, late, takes=dt.timedelta(seconds=5))
        run = BatchJobRun.objects.get()
        assert (run.scheduled_start, run.started_at) == (NINE, late)  # D365's OrigStartDateTime
        assert job.scheduled_start == NINE + 11 * MINUTE
        assert not MissedOccurrence.objects.exists()  # the late run stands for them

    def test_it_skips_a_late_job_to_the_next_occurrence(self):
        job = self.make_recurring(unit=BatchRecurrence.Unit.MINUTES, missed=Missed.SKIP)
        late = NINE + dt.timedelta(minutes=11, seconds=30)  # 30 s after the latest, 09:11
        with override_settings(BATCH_RECURRENCE_GRACE_SECONDS=20):
            assert not transitions.start_job(job_id=job.pk, at=late)
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert job.scheduled_start == NINE + 12 * MINUTE
        missed = MissedOccurrence.objects.get()
        assert (missed.scheduled_start, missed.last_scheduled_start, missed.occurrences) == (
            NINE,
            NINE + 11 * MINUTE,
            12,
        )
        assert missed.reason == Reason.LATE
        assert not BatchJobRun.objects.exists()
        self.run_once(job, NINE + 12 * MINUTE)
        assert BatchJobRun.objects.get().scheduled_start == NINE + 12 * MINUTE

    def test_it_starts_a_skipping_job_for_an_occurrence_within_the_grace(self):
        job = self.make_recurring(unit=BatchRecurrence.Unit.MINUTES, missed=Missed.SKIP)
        at = NINE + dt.timedelta(minutes=10, seconds=20)
        with override_settings(BATCH_RECURRENCE_GRACE_SECONDS=60):
            assert transitions.start_job(job_id=job.pk, at=at)
        assert BatchJobRun.objects.get().scheduled_start == NINE + 10 * MINUTE
        missed = MissedOccurrence.objects.get()
        assert (missed.scheduled_start, missed.last_scheduled_start, missed.occurrences) == (
            NINE,
            NINE + 9 * MINUTE,
            10,
        )

    def test_it_starts_a_skipping_job_on_time_without_recording_anything(self):
        job = self.make_recurring(missed=Missed.SKIP)
        assert transitions.start_job(job_id=job.pk, at=NINE + dt.timedelta(seconds=1))
        assert not MissedOccurrence.objects.exists()

    def test_it_starts_a_skipping_job_at_a_start_set_by_hand(self):
        job = self.make_recurring(missed=Missed.SKIP, scheduled_start=NINE + dt.timedelta(hours=3))
        assert transitions.start_job(job_id=job.pk, at=NINE + dt.timedelta(hours=5))
        assert not MissedOccurrence.objects.exists()

    def test_it_withholds_a_skipping_job_whose_last_occurrence_was_missed(self):
        job = self.make_recurring(missed=Missed.SKIP, end_by=NINE.date())
        assert not transitions.start_job(job_id=job.pk, at=NINE + dt.timedelta(hours=2))
        job.refresh_from_db()
        assert job.status == S.WITHHOLD
        change = StatusChange.objects.get(job=job)
        assert change.reason == "Recurrence over: its last run was missed."
        assert MissedOccurrence.objects.get().occurrences == 1

    def test_it_runs_every_minute_for_an_hour_a_job_that_takes_90_seconds(self):
        """Never two runs at once, no missed minute replayed, every start on a minute.

        The tick runs every second; between the moments simulated here (each minute, and
        each end of a run) it has nothing to do, so skipping them changes nothing.
        """
        job = self.make_recurring(unit=BatchRecurrence.Unit.MINUTES)
        task = job.tasks.get()
        takes = dt.timedelta(seconds=90)
        finish_at: dt.datetime | None = None
        events = sorted({NINE + n * MINUTE for n in range(60)})
        starts: list[dt.datetime] = []
        while events:
            at = events.pop(0)
            if finish_at is not None and at >= finish_at:
                # The worker finishes (before the tick of that second).
                at = finish_at
                attempt = BatchTask.objects.get(pk=task.pk).attempt
                with time_machine.travel(at, tick=False):
                    assert transitions.finish_task(
                        task_id=task.pk, attempt=attempt, outcome=Outcome(), at=now()
                    )
                finish_at = None
            with time_machine.travel(at, tick=False), self.captureOnCommitCallbacks(execute=True):
                started = tick.handle_due_jobs(now())
            if started:
                assert finish_at is None, f"started again at {at} while running"
                starts.append(at)
                with time_machine.travel(at, tick=False):
                    assert transitions.claim_task(
                        task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=now()
                    )
                finish_at = at + takes
                events = sorted({*events, finish_at})
        assert starts == [NINE + 2 * n * MINUTE for n in range(30)]  # 09:00, 09:02, ... 09:58
        assert all(s.second == 0 and s.microsecond == 0 for s in starts)
        assert BatchJobRun.objects.filter(job=job).count() == 30
        missed = MissedOccurrence.objects.filter(job=job).order_by("scheduled_start")
        assert [m.scheduled_start for m in missed] == [
            NINE + (2 * n + 1) * MINUTE for n in range(30)
        ]  # 09:01 ... 09:59, each while the run before it was still going
        assert {(m.occurrences, m.reason) for m in missed} == {(1, Reason.RUNNING)}
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, NINE + 60 * MINUTE)


class ChangeWhileWaitingTestCase(RecurrenceTestCase):
    def test_it_takes_a_changed_recurrence_for_the_next_run(self):
        job = self.make_recurring()
        self.run_once(job, NINE)
        assert job.scheduled_start == NINE + dt.timedelta(days=1)
        BatchRecurrence.objects.filter(job=job).update(start_time=dt.time(7, 0))
        assert transitions.reschedule_job(job_id=job.pk, at=NINE + dt.timedelta(hours=1))
        job.refresh_from_db()
        assert job.scheduled_start == NINE + dt.timedelta(days=1, hours=-2)  # 07:00 tomorrow

    def test_it_takes_a_change_made_while_running_when_the_run_ends(self):
        job = self.make_recurring()
        assert transitions.start_job(job_id=job.pk, at=NINE)
        BatchRecurrence.objects.filter(job=job).update(unit=BatchRecurrence.Unit.HOURS)
        assert not transitions.reschedule_job(job_id=job.pk, at=NINE)
        self.finish_tasks(job, NINE, takes=dt.timedelta(minutes=5))
        assert job.scheduled_start == NINE + dt.timedelta(hours=1)

    def test_it_schedules_a_new_recurrence_from_now_not_from_the_past(self):
        job = self.make_job(status=S.WITHHOLD, scheduled_start=NINE)
        BatchRecurrence.objects.create(
            job=job,
            start_date=dt.date(2025, 1, 1),
            start_time=dt.time(22, 0),
            time_zone="Europe/Oslo",
            unit=BatchRecurrence.Unit.WEEKS,
            weekdays=["thu"],
        )
        assert transitions.reschedule_job(job_id=job.pk, at=NINE)
        job.refresh_from_db()
        assert job.scheduled_start == dt.datetime(2025, 3, 6, 21, 0, tzinfo=UTC)  # Thursday
        assert job.status == S.WITHHOLD


class ActivePeriodTestCase(RecurrenceTestCase):
    night: ActivePeriod

    @classmethod
    def setUpTestData(cls):
        super().setUpTestData()
        cls.night = ActivePeriod.objects.create(
            code="Night",
            start_time=dt.time(18, 0),
            end_time=dt.time(8, 0),
            time_zone="Europe/Oslo",
        )

    def test_it_defers_a_job_outside_its_period_to_the_opening(self):
        job = self.make_job(scheduled_start=NINE, active_period=self.night)
        self.make_task(job, "T1")
        opening = dt.datetime(2025, 3, 3, 17, 0, tzinfo=UTC)  # 18:00 in Oslo
        assert tick.handle_due_jobs(NINE) == 0
        job.refresh_from_db()
        assert (job.status, job.scheduled_start) == (S.WAITING, opening)
        # The tick does not look at it again until then: one query, nothing due.
        with self.assertNumQueries(1):
            assert tick.handle_due_jobs(opening - dt.timedelta(seconds=1)) == 0
        assert tick.handle_due_jobs(opening) == 1
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_it_starts_a_job_inside_its_period_at_once(self):
        job = self.make_job(
            scheduled_start=NINE - dt.timedelta(hours=3), active_period=self.night
        )  # 07:00 in Oslo
        assert transitions.start_job(job_id=job.pk, at=NINE - dt.timedelta(hours=3))

    def test_it_runs_an_hourly_job_only_at_night(self):
        """D365's example: every hour, but only between 18:00 and 08:00."""
        job = self.make_recurring(unit=BatchRecurrence.Unit.HOURS)
        BatchJob.objects.filter(pk=job.pk).update(active_period=self.night)
        starts = []
        at = NINE
        for _ in range(40):
            at = max(at, BatchJob.objects.get(pk=job.pk).scheduled_start)
            if transitions.start_job(job_id=job.pk, at=at):
                starts.append(at)
                self.finish_tasks(job, at, takes=dt.timedelta(minutes=5))
            if at > NINE + dt.timedelta(days=1):
                break
        local = [s.astimezone(ZoneInfo("Europe/Oslo")).strftime("%H:%M") for s in starts]
        # 09:00 UTC is 10:00 in Oslo: the 10:00 ... 17:00 occurrences wait for 18:00 and run
        # once then; from there every hour until 07:00, then 08:00 waits for the evening.
        assert local == [f"{h:02}:00" for h in [*range(18, 24), *range(0, 8), 18]]


class BrokenRecurrenceTestCase(RecurrenceTestCase):
    def test_it_ends_a_job_whose_recurrence_was_edited_into_nonsense(self):
        job = self.make_recurring(unit=BatchRecurrence.Unit.WEEKS)
        BatchRecurrence.objects.filter(job=job).update(weekdays=["funday"])
        with self.assertLogs("batchadmin.engine.transitions", "ERROR") as logs:
            self.run_once(job, NINE)
        assert "invalid recurrence, no further runs" in logs.output[0]
        assert job.status == S.ENDED  # the task's finish still went through

    def test_it_starts_a_skipping_job_with_a_broken_recurrence_as_scheduled(self):
        job = self.make_recurring(missed=Missed.SKIP)
        BatchRecurrence.objects.filter(job=job).update(time_zone="Mars/Olympus")
        with self.assertLogs("batchadmin.engine.transitions", "ERROR"):
            assert transitions.start_job(job_id=job.pk, at=NINE + dt.timedelta(hours=5))

    def test_it_says_what_is_wrong_with_it_in_the_job_list(self):
        job = self.make_recurring()
        BatchRecurrence.objects.filter(job=job).update(time_zone="Mars/Olympus")
        assert BatchRecurrence.objects.get(job=job).describe() == (
            "Invalid recurrence: Unknown time zone 'Mars/Olympus'."
        )

"""Skip a task (transitions.skip_task) on the D365 walkthrough, and the job's resume.

T1 ──ended or error──> T2 ──ended──> T3 ──ended──┐
                        │             └──error──> T6
                        ├──ended──> T4 ──ended──┴──> T7 (All: T3 and T4 Ended)
                        └──error──> T5
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import time_machine
from django.test import override_settings

from batchadmin.alerts.models import AlertEvent
from batchadmin.audit.models import AuditEntry
from batchadmin.engine import tick, transitions
from batchadmin.engine.transitions import Refused
from batchadmin.jobs import task_grid
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    StatusChange,
)
from tests.base import BaseTestCase, drain, run, start, statuses
from tests.engine.walkthrough import FAIL, make_walkthrough

S = BatchStatus
Trigger = BatchJobRun.Trigger


def skip(
    task: BatchTask, reason: str = "fixed by hand in the ledger", by_id: int | None = None
) -> bool:
    return transitions.skip_task(task_id=task.pk, reason=reason, by_id=by_id)


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class SkipFinishedRunTestCase(BaseTestCase):
    def failed_walkthrough(self, **overrides: Any) -> tuple[BatchJob, dict[str, BatchTask]]:
        job, tasks = make_walkthrough(self, overrides={"T2": FAIL, **overrides})
        start(job)
        drain(job)
        assert job.status == S.ERROR
        return job, tasks

    def test_it_resumes_the_job_and_releases_what_had_not_run(self):
        job, tasks = self.failed_walkthrough()
        t1_end = BatchTask.objects.get(pk=tasks["T1"].pk).ended_at
        assert skip(tasks["T2"], by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert statuses(job) == {
            "T1": S.ENDED,  # kept
            "T2": S.SKIPPED,
            "T3": S.READY,  # T2 Skipped counts as Ended
            "T4": S.READY,
            "T5": S.ENDED,  # kept: it ran when T2 failed
            "T6": S.WAITING,
            "T7": S.WAITING,
        }
        drain(job)
        assert job.status == S.ENDED  # a skipped task never fails the job
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.SKIPPED,
            "T3": S.ENDED,
            "T4": S.ENDED,
            "T5": S.ENDED,
            "T6": S.NOT_RUN,
            "T7": S.ENDED,
        }
        assert BatchTask.objects.get(pk=tasks["T1"].pk).ended_at == t1_end
        assert BatchTaskRun.objects.filter(task=tasks["T1"], attempt__gt=0).count() == 1

    def test_it_resumes_in_a_new_run_that_says_why(self):
        job, tasks = self.failed_walkthrough()
        assert skip(tasks["T2"], "posted by hand", by_id=self.alice.pk)
        drain(job)
        first, second = BatchJobRun.objects.filter(job=job).order_by("started_at", "pk")
        assert (first.status, second.status) == (S.ERROR, S.ENDED)  # the record stays true
        assert (second.trigger, second.started_by) == (Trigger.RESUME, self.alice)
        assert second.note == "Resumed after task T2 was skipped: posted by hand"
        rows = {r.task.key: (r.attempt, r.status) for r in second.task_runs.select_related("task")}
        assert rows["T1"] == (0, S.ENDED)  # kept from the first run
        assert rows["T2"] == (0, S.SKIPPED)
        assert rows["T3"] == (1, S.ENDED)
        skipped = second.task_runs.get(task=tasks["T2"])
        assert skipped.error_message == "Skipped by alice: posted by hand"
        change = StatusChange.objects.filter(job=job, new_status=S.EXECUTING).latest("pk")
        assert (change.old_status, change.by) == (S.ERROR, self.alice)

    def test_it_writes_one_alert_event_per_run_and_final_status(self):
        job, tasks = self.failed_walkthrough()
        assert skip(tasks["T2"])
        drain(job)
        first, second = BatchJobRun.objects.filter(job=job).order_by("started_at", "pk")
        events = sorted(AlertEvent.objects.filter(job=job).values_list("key", flat=True))
        assert events == sorted([f"run:{first.pk}:error", f"run:{second.pk}:ended"])

    def test_a_resumed_run_that_fails_again_alerts_again(self):
        job, tasks = self.failed_walkthrough(T4=FAIL)  # T4 fails only once T2 is out of the way
        assert skip(tasks["T2"])
        drain(job)
        assert job.status == S.ERROR
        assert statuses(job)["T7"] == S.NOT_RUN
        assert AlertEvent.objects.filter(job=job, kind="error").count() == 2  # one per run

    def test_it_applies_all_to_a_skipped_parent(self):
        # T3 fails: T6 runs its error branch, T7 (All of T3 and T4 Ended) does not run.
        job, tasks = make_walkthrough(self, overrides={"T3": FAIL})
        start(job)
        drain(job)
        assert (job.status, statuses(job)["T6"], statuses(job)["T7"]) == (
            S.ERROR,
            S.ENDED,
            S.NOT_RUN,
        )
        assert skip(tasks["T3"])
        job.refresh_from_db()
        assert statuses(job)["T7"] == S.READY  # All: T3 Skipped and T4 Ended
        assert statuses(job)["T6"] == S.ENDED  # kept; its condition was T3 Error
        drain(job)
        assert job.status == S.ENDED
        assert BatchTaskRun.objects.filter(task=tasks["T6"], attempt__gt=0).count() == 1

    def test_it_applies_any_to_a_skipped_parent(self):
        # T7 Any: T2 fails, so neither T3 nor T4 runs and T7 does not either.
        job, tasks = make_walkthrough(
            self, overrides={"T2": FAIL, "T3": FAIL, "T7": {"condition_type": "any"}}
        )
        start(job)
        drain(job)
        assert statuses(job)["T7"] == S.NOT_RUN
        assert skip(tasks["T2"])
        job.refresh_from_db()
        drain(job)
        # T3 fails this time, T4 ends: Any is met by T4, and T6 takes T3's error branch.
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.SKIPPED,
            "T3": S.ERROR,
            "T4": S.ENDED,
            "T5": S.ENDED,
            "T6": S.ENDED,
            "T7": S.ENDED,
        }
        assert job.status == S.ERROR  # T3 failed in the resumed run
        assert skip(tasks["T3"])  # and is skipped too: nothing is left to run
        job.refresh_from_db()
        assert job.status == S.ENDED
        assert BatchJobRun.objects.filter(job=job).count() == 3

    def test_it_skips_a_failure_the_job_ignored_and_runs_what_followed_it(self):
        job, tasks = make_walkthrough(self, overrides={"T2": {**FAIL, "ignore_failure": True}})
        start(job)
        drain(job)
        assert job.status == S.ENDED  # ignore task failure
        assert statuses(job)["T3"] == S.NOT_RUN
        assert skip(tasks["T2"])
        drain(job)
        assert job.status == S.ENDED
        assert statuses(job)["T7"] == S.ENDED

    def test_it_refuses_a_task_that_did_not_fail(self):
        job, tasks = self.failed_walkthrough()
        for key in ("T1", "T3"):  # Ended, Didn't run
            with self.assertRaisesMessage(Refused, f"Task {key} is"):
                skip(tasks[key])
        job.refresh_from_db()
        assert job.status == S.ERROR
        assert not AuditEntry.objects.exists()

    def test_it_needs_a_reason(self):
        job, tasks = self.failed_walkthrough()
        with self.assertRaisesMessage(Refused, "reason"):
            skip(tasks["T2"], "   ")
        assert statuses(job)["T2"] == S.ERROR

    def test_it_records_the_skip_with_its_reason_in_the_audit_trail(self):
        job, tasks = self.failed_walkthrough()
        assert skip(tasks["T2"], "posted by hand", by_id=self.alice.pk)
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert (entry.action, entry.username, entry.target) == ("skip", "alice", "task T2")
        assert (entry.reason, entry.changes) == ("posted by hand", {"Status": ["Error", "Skipped"]})


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class SkipWhileRunningTestCase(BaseTestCase):
    def test_it_skips_a_failed_task_while_the_job_runs(self):
        job, tasks = make_walkthrough(self, overrides={"T2": FAIL})
        start(job)
        assert run(tasks["T1"]) and run(tasks["T2"])
        assert statuses(job)["T5"] == S.READY  # the error branch is under way
        assert skip(tasks["T2"])
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert (statuses(job)["T3"], statuses(job)["T4"]) == (S.READY, S.READY)
        drain(job)
        assert job.status == S.ENDED
        assert statuses(job)["T5"] == S.ENDED  # it had started: it keeps its course
        assert BatchJobRun.objects.filter(job=job).count() == 1
        rows = list(
            BatchTaskRun.objects.filter(task=tasks["T2"])
            .order_by("attempt")
            .values_list("attempt", "status")
        )
        assert rows == [(1, S.ERROR), (2, S.SKIPPED)]  # the skip follows the failed attempt

    def test_it_skips_a_waiting_task_and_counts_it_as_ended(self):
        job, tasks = make_walkthrough(self)
        start(job)
        assert skip(tasks["T3"])
        assert statuses(job)["T3"] == S.SKIPPED
        drain(job)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ENDED,
            "T3": S.SKIPPED,
            "T4": S.ENDED,
            "T5": S.NOT_RUN,
            "T6": S.NOT_RUN,  # it waited for T3 in Error
            "T7": S.ENDED,  # All: T3 Skipped, T4 Ended
        }
        assert job.status == S.ENDED
        row = BatchTaskRun.objects.get(task=tasks["T3"])
        assert (row.attempt, row.status) == (0, S.SKIPPED)

    def test_it_skips_a_ready_task_and_the_claim_finds_nothing_to_do(self):
        job, tasks = make_walkthrough(self)
        start(job)
        assert skip(tasks["T1"])
        assert not run(tasks["T1"])  # its message arrives late: the claim loses
        assert statuses(job)["T2"] == S.READY  # Ended or error: Skipped counts as Ended
        drain(job)
        assert job.status == S.ENDED

    def test_it_ends_the_job_when_the_last_open_task_is_skipped(self):
        job = self.make_job()
        only = self.make_task(job, "T1")
        start(job)
        assert skip(only)
        job.refresh_from_db()
        assert job.status == S.ENDED
        assert BatchJobRun.objects.get(job=job).status == S.ENDED

    def test_it_refuses_a_running_task(self):
        job, tasks = make_walkthrough(self)
        start(job)
        assert transitions.claim_task(task_id=tasks["T1"].pk, server_id=None, hostname="h")
        with self.assertRaisesMessage(Refused, "Task T1 is Executing"):
            skip(tasks["T1"])

    def test_it_refuses_while_the_job_is_canceled(self):
        job, tasks = make_walkthrough(self)
        start(job)
        assert transitions.claim_task(task_id=tasks["T1"].pk, server_id=None, hostname="h")
        assert transitions.cancel_job(job_id=job.pk, by_id=None)
        with self.assertRaisesMessage(Refused, "being canceled"):
            skip(tasks["T3"])

    def test_a_second_skip_of_the_same_task_is_refused(self):
        job, tasks = make_walkthrough(self)
        start(job)
        assert skip(tasks["T1"])
        with self.assertRaisesMessage(Refused, "Task T1 is Skipped"):
            skip(tasks["T1"])
        assert AuditEntry.objects.filter(job_id=job.pk).count() == 1


class SkipBeforeTheStartTestCase(BaseTestCase):
    def test_it_skips_a_waiting_task_in_the_next_run_only(self):
        job, tasks = make_walkthrough(self, status=S.WITHHOLD)
        assert skip(tasks["T2"], "not this time", by_id=self.alice.pk)
        assert statuses(job)["T2"] == S.SKIPPED
        BatchJob.objects.filter(pk=job.pk).update(status=S.WAITING)
        start(job)
        # T1 runs; T3, T4 wait for T1 through T2, which is Skipped: they are Ready at once.
        assert (statuses(job)["T1"], statuses(job)["T3"]) == (S.READY, S.READY)
        drain(job)
        assert job.status == S.ENDED
        assert BatchTaskRun.objects.get(task=tasks["T2"]).error_message == (
            "Skipped by alice: not this time"
        )
        # The next run starts from scratch: Change status to Waiting resets every task.
        assert transitions.release_job(job_id=job.pk, by_id=None)
        assert statuses(job)["T2"] == S.WAITING

    def test_it_refuses_a_task_already_skipped(self):
        job, tasks = make_walkthrough(self, status=S.WITHHOLD)
        assert skip(tasks["T2"])
        with self.assertRaisesMessage(Refused, "Task T2 is Skipped"):
            skip(tasks["T2"])


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class SkipInARecurringJobTestCase(BaseTestCase):
    def test_it_resumes_the_failed_run_and_keeps_the_schedule(self):
        """A recurring job went back to Waiting after its run failed: skipping the failed
        task resumes that run now (read back from its history), and the job returns to its
        next occurrence without using up a run."""
        nine = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
        tomorrow = nine + dt.timedelta(days=1)
        job, tasks = make_walkthrough(self, overrides={"T2": FAIL}, scheduled_start=nine)
        BatchRecurrence.objects.create(
            job=job, start_date=nine.date(), start_time=nine.time(), time_zone="UTC", end_after=3
        )
        with time_machine.travel(nine, tick=True):
            start(job)
            drain(job)
            assert (job.status, job.scheduled_start) == (S.WAITING, tomorrow)
            assert set(statuses(job).values()) == {S.WAITING}  # reset for the next run
        with time_machine.travel(nine + dt.timedelta(hours=2), tick=True):
            assert skip(tasks["T2"], by_id=self.alice.pk)
            job.refresh_from_db()
            assert job.status == S.EXECUTING
            assert statuses(job)["T1"] == S.ENDED  # the failed run's result, read back
            assert statuses(job)["T3"] == S.READY
            drain(job)
        assert (job.status, job.scheduled_start) == (S.WAITING, tomorrow)
        job.recurrence.refresh_from_db()
        assert job.recurrence.runs == 1  # "end after 3" still has 2 to go
        second = BatchJobRun.objects.filter(job=job).latest("started_at")
        assert (second.trigger, second.status) == (Trigger.RESUME, S.ENDED)
        assert tick.handle_due_jobs(tomorrow - dt.timedelta(seconds=1)) == 0
        assert tick.handle_due_jobs(tomorrow) == 1


class SkippedShowsWhereStatusesShowTestCase(BaseTestCase):
    def test_the_task_line_says_who_skipped_it_and_why(self):
        job, tasks = make_walkthrough(self, status=S.WITHHOLD)
        assert skip(tasks["T2"], "not tonight", by_id=self.alice.pk)
        rows = {row.task.key: row for row in task_grid.load(job).rows}
        assert [r.text for r in rows["T2"].why] == ["Skipped by alice: not tonight"]
        assert rows["T3"].task.status == S.WAITING

    def test_the_job_page_and_the_diagram_show_the_skipped_badge(self):
        job, tasks = make_walkthrough(self, status=S.WITHHOLD)
        assert skip(tasks["T2"], "not tonight")
        self.client.force_login(self.bob)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert '<span class="badge status-skipped">Skipped</span>' in html
        assert 'class="node n-skipped"' in html

    def test_metrics_count_skipped_tasks(self):
        job, tasks = make_walkthrough(self, status=S.WITHHOLD)
        assert skip(tasks["T2"], "not tonight")
        body = self.client.get("/metrics").content.decode()
        assert 'batchadmin_tasks{status="skipped"} 1.0' in body

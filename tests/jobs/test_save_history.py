"""Save job to history (D365's LogLevel): what a finished run keeps, and what pages say."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any
from unittest import mock

from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import SimpleTestCase

from batchadmin.alerts.models import AlertEvent, AlertKind
from batchadmin.engine import transitions
from batchadmin.engine.transitions import Outcome
from batchadmin.jobs import history
from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchRecurrence,
    BatchStatus,
    BatchTaskRun,
    SaveHistory,
    StatusChange,
)
from tests.base import HOSTNAME, BaseTestCase, drain, start
from tests.jobs.form_base import HTMX, FormTestCase, squash

S = BatchStatus
H = SaveHistory
NINE = dt.datetime(2025, 3, 3, 9, 0, tzinfo=dt.UTC)
NEVER_NOTE = "History is not saved for this job (Save job to history: Never)."
ERRORS_NOTE = (
    "Only runs that end in Error are saved for this job (Save job to history: Errors only)."
)


class KeepsHistoryTestCase(SimpleTestCase):
    def test_it_follows_the_d365_rule(self):
        table = {
            (H.ALWAYS, S.ENDED): True,
            (H.ALWAYS, S.ERROR): True,
            (H.ALWAYS, S.CANCELED): True,
            (H.ERRORS, S.ENDED): False,
            (H.ERRORS, S.ERROR): True,
            (H.ERRORS, S.CANCELED): False,
            (H.NEVER, S.ENDED): False,
            (H.NEVER, S.ERROR): False,
            (H.NEVER, S.CANCELED): False,
        }
        for (policy, final), keeps in table.items():
            assert history.keeps_history(policy, final) is keeps, (policy, final)

    def test_only_jobs_that_drop_runs_get_a_note(self):
        assert history.not_saved_note(BatchJob(save_history=H.ALWAYS)) == ""
        assert history.not_saved_note(BatchJob(save_history=H.ERRORS)) == ERRORS_NOTE
        assert history.not_saved_note(BatchJob(save_history=H.NEVER)) == NEVER_NOTE


class SavePolicyTestCase(BaseTestCase):
    def run_job(self, save_history: str, *, fail: bool = False, **overrides: Any) -> BatchJob:
        """One run of a job whose T1 writes three log lines and whose T2 fails if ``fail``."""
        job = self.make_job(save_history=save_history, **overrides)
        self.make_task(job, "T1", process="demo.log", parameters={"lines": 3}, position=1)
        process = {"process": "demo.fail", "parameters": {"message": "Ledger locked"}}
        self.make_task(job, "T2", position=2, **(process if fail else {}))
        start(job)
        drain(job)
        return job

    def history_rows(self, job: BatchJob) -> tuple[int, int, int]:
        return (
            BatchJobRun.objects.filter(job=job).count(),
            BatchTaskRun.objects.filter(task__job=job).count(),
            BatchLogEntry.objects.filter(task_run__task__job=job).count(),
        )

    def test_always_keeps_the_run_its_attempts_and_log_lines(self):
        for fail in (False, True):
            with self.subTest(fail=fail):
                job = self.run_job(H.ALWAYS, fail=fail)
                assert job.status == (S.ERROR if fail else S.ENDED)
                # T2's failure writes its error as a log line too.
                assert self.history_rows(job) == (1, 2, 4 if fail else 3)
                assert job.current_run == BatchJobRun.objects.get(job=job)

    def test_errors_only_keeps_only_runs_that_end_in_error(self):
        ended = self.run_job(H.ERRORS)
        assert ended.status == S.ENDED
        assert self.history_rows(ended) == (0, 0, 0)
        failed = self.run_job(H.ERRORS, fail=True)
        assert failed.status == S.ERROR
        assert self.history_rows(failed) == (1, 2, 4)
        assert BatchJobRun.objects.get(job=failed).status == S.ERROR

    def test_errors_only_drops_a_canceled_run(self):
        job = self.make_job(save_history=H.ERRORS)
        self.make_task(job, "T1")
        start(job)  # T1 is Ready, not claimed: canceling makes it Didn't run and ends the job
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.CANCELED
        assert self.history_rows(job) == (0, 0, 0)

    def test_never_keeps_none_and_the_job_row_keeps_its_times(self):
        for fail in (False, True):
            with self.subTest(fail=fail):
                job = self.run_job(H.NEVER, fail=fail)
                assert job.status == (S.ERROR if fail else S.ENDED)
                assert self.history_rows(job) == (0, 0, 0)
                assert job.started_at is not None
                assert job.ended_at is not None and job.ended_at >= job.started_at
                assert job.current_run is None
                # The tasks keep their own status until the job runs again.
                assert dict(job.tasks.values_list("key", "status")) == {
                    "T1": S.ENDED,
                    "T2": S.ERROR if fail else S.ENDED,
                }

    def test_the_status_changes_stay_without_the_run(self):
        job = self.run_job(H.NEVER)
        changes = list(job.status_changes.order_by("at", "pk"))
        assert [(c.old_status, c.new_status) for c in changes] == [
            (S.WAITING, S.EXECUTING),
            (S.EXECUTING, S.ENDED),
        ]
        assert all(c.job_run_id is None for c in changes)

    def test_the_alert_event_keeps_its_snapshot(self):
        job = self.run_job(H.NEVER, fail=True, critical=True)
        event = AlertEvent.objects.get(job=job)
        assert event.kind == AlertKind.ERROR
        assert event.job_run_id is None  # the run is gone; the event is not
        assert event.details["status"] == S.ERROR
        assert event.details["critical"] is True
        assert event.details["failed_count"] == 1
        assert event.details["failed_tasks"] == [
            {"key": "T2", "description": "Task T2", "error": "DemoFailure: Ledger locked"}
        ]

    def test_a_recurring_job_that_saves_nothing_goes_back_to_waiting(self):
        job = self.make_job(scheduled_start=NINE, save_history=H.NEVER)
        task = self.make_task(job, "T1")
        BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="UTC"
        )
        for day in range(2):
            at = NINE + dt.timedelta(days=day)
            assert transitions.start_job(job_id=job.pk, at=at)
            claimed = transitions.claim_task(
                task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=at
            )
            assert claimed is not None
            assert transitions.finish_task(
                task_id=task.pk,
                attempt=claimed.attempt,
                outcome=Outcome(),
                at=at + dt.timedelta(minutes=1),
            )
            job.refresh_from_db()
            assert job.status == S.WAITING
            assert job.scheduled_start == at + dt.timedelta(days=1)
            assert job.current_run is None
            assert job.tasks.get().status == S.WAITING
        assert not BatchJobRun.objects.filter(job=job).exists()
        back = StatusChange.objects.filter(job=job, new_status=S.WAITING).order_by("pk")
        assert [c.job_run_id for c in back] == [None, None]
        assert back.last().reason == "Recurrence: next run 2025-03-05 09:00 UTC"  # type: ignore[union-attr]
        assert job.recurrence.runs == 2


class WaitTestCase(BaseTestCase):
    def test_batch_wait_sees_the_end_of_a_run_that_was_not_saved(self):
        job = self.make_job(save_history=H.NEVER)
        self.make_task(job, "T1", process="demo.fail", parameters={"message": "no"})
        out = StringIO()

        def run_it(seconds: float) -> None:
            start(job)
            drain(job)

        with mock.patch("batchadmin.jobs.management.commands.batch.time.sleep") as sleep:
            sleep.side_effect = run_it
            call_command("batch", "wait", str(job.pk), stdout=out)
        assert out.getvalue() == "error\n"
        assert not BatchJobRun.objects.filter(job=job).exists()


class HistoryPageTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login(self.alice)

    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/history/"

    def run_job(self, save_history: str, *, fail: bool = False) -> BatchJob:
        job = self.make_job(save_history=save_history, description="Invoice posting")
        if fail:
            self.make_task(job, "T1", process="demo.fail", parameters={"message": "x"})
        else:
            self.make_task(job, "T1")
        start(job)
        drain(job)
        return job

    def test_a_job_that_saves_nothing_says_so_with_its_last_run(self):
        job = self.run_job(H.NEVER)
        r = self.client.get(self.url(job))
        assert r.status_code == 200
        html = squash(r.content.decode())
        assert 'id="no-runs"' in html
        assert f"<strong>{NEVER_NOTE}</strong>" in html
        assert f"The last run started {job.started_at:%Y-%m-%d %H:%M:%S}" in html
        assert f"and ended {job.ended_at:%Y-%m-%d %H:%M:%S}" in html
        assert "This job has not run yet." not in html
        assert "Change Save job to history in the header of" in html
        # The head shows the last start from the job row.
        assert f"{job.started_at:%Y-%m-%d %H:%M:%S} · " in html
        assert "(not saved)" in html

    def test_errors_only_explains_why_a_run_is_missing(self):
        job = self.run_job(H.ERRORS)
        html = squash(self.client.get(self.url(job)).content.decode())
        assert "No run of this job is in its history." in html
        assert ERRORS_NOTE in html

    def test_errors_only_shows_the_runs_that_failed(self):
        job = self.run_job(H.ERRORS, fail=True)
        html = squash(self.client.get(self.url(job)).content.decode())
        run = BatchJobRun.objects.get(job=job)
        assert f'id="run-{run.pk}"' in html
        assert 'id="no-runs"' not in html
        # The head says why the other runs are missing, and where to change it.
        assert f'<p class="note" id="history-not-saved"> {ERRORS_NOTE}' in html
        assert "Change it in the header of" in html

    def test_a_job_that_never_ran_says_runs_will_not_be_kept(self):
        job = self.make_job(save_history=H.NEVER, status=S.WITHHOLD)
        html = squash(self.client.get(self.url(job)).content.decode())
        assert "This job has not run yet." in html
        assert NEVER_NOTE in html

    def test_a_job_that_saves_everything_has_no_note(self):
        job = self.run_job(H.ALWAYS)
        html = self.client.get(self.url(job)).content.decode()
        assert "history-not-saved" not in html
        assert 'id="no-runs"' not in html

    def test_the_polled_run_that_was_dropped_says_so_and_stops_polling(self):
        job = self.make_job(save_history=H.NEVER)
        self.make_task(job, "T1")
        start(job)
        run_pk = job.current_run_id
        assert run_pk is not None
        drain(job)
        r = self.client.get(f"{self.url(job)}{run_pk}/", headers=HTMX)
        assert r.status_code == 286
        html = squash(r.content.decode())
        assert f'id="run-{run_pk}"' in html
        assert f"This run is over and is not in the history. {NEVER_NOTE}" in html
        # Without htmx: the history page.
        self.assertRedirects(self.client.get(f"{self.url(job)}{run_pk}/"), self.url(job))

    def test_the_head_redraws_the_runs_when_the_run_it_showed_is_gone(self):
        job = self.make_job(save_history=H.NEVER)
        self.make_task(job, "T1")
        start(job)
        run_pk = job.current_run_id
        drain(job)
        r = self.client.get(
            f"{self.url(job)}?latest={run_pk}", headers={**HTMX, "HX-Target": "history-head"}
        )
        assert "history-changed" in r.headers["HX-Trigger"]
        # The job is over, but the head keeps polling: it may be run again from elsewhere.
        assert r.status_code == 200


class JobHeaderTestCase(FormTestCase):
    def header_data(self, **overrides: str) -> dict[str, str]:
        data = {
            "description": "Nightly settlement",
            "scheduled_start": "2030-01-02T03:04",
            "run_as": "",
            "priority": "20",
            "company": str(self.usmf.pk),
            "save_history": "errors",
            "critical": "on",
        }
        return data | overrides

    def test_the_header_offers_both_with_help(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.alice)
        html = squash(self.client.get(f"/jobs/{job.pk}/").content.decode())
        assert '<label for="id_save_history">Save job to history</label>' in html
        assert '<option value="errors">Errors only</option>' in html
        assert "Always keeps every run; Errors only keeps runs that end in Error" in html
        assert '<label for="id_critical">Critical job</label>' in html
        assert "every batch manager is alerted" in html

    def test_a_manager_sets_both(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.alice)
        r = self.client.post(
            f"/jobs/{job.pk}/", self.header_data(), headers=self.htmx("job-header")
        )
        assert "Saved." in r.content.decode()
        job.refresh_from_db()
        assert (job.save_history, job.critical) == (H.ERRORS, True)
        assert 'class="badge critical-job"' in r.content.decode()
        self.client.post(f"/jobs/{job.pk}/", self.header_data(save_history="never", critical=""))
        job.refresh_from_db()
        assert (job.save_history, job.critical) == (H.NEVER, False)

    def test_a_batch_user_sets_save_history_but_not_critical(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)
        self.client.post(f"/jobs/{job.pk}/", self.header_data(save_history="never"))
        job.refresh_from_db()
        assert (job.save_history, job.critical) == (H.NEVER, False)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert "Only a batch job manager can change it." in html
        # A critical job set by a manager stays critical when its owner saves the header.
        BatchJob.objects.filter(pk=job.pk).update(critical=True)
        self.client.post(f"/jobs/{job.pk}/", self.header_data(critical=""))
        job.refresh_from_db()
        assert job.critical is True

    def test_an_invalid_choice_is_shown_at_the_field(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.alice)
        r = self.client.post(
            f"/jobs/{job.pk}/", self.header_data(save_history="sometimes"), headers=self.htmx()
        )
        assert "Select a valid choice. sometimes is not one of the available choices." in (
            r.content.decode()
        )
        job.refresh_from_db()
        assert job.save_history == H.ALWAYS

    def test_a_new_job_takes_both(self):
        self.login(self.alice)
        data = self.header_data(description="Month-end close")
        del data["company"]
        r = self.client.post("/jobs/new/", data)
        job = BatchJob.objects.get(description="Month-end close")
        self.assertRedirects(r, f"/jobs/{job.pk}/")
        assert (job.save_history, job.critical) == (H.ERRORS, True)

    def test_the_job_list_marks_critical_jobs(self):
        critical = self.make_job(description="Payroll", critical=True, created_by=self.dave)
        plain = self.make_job(description="Cleanup", created_by=self.dave)
        self.login(self.dave)
        html = self.client.get("/jobs/").content.decode()
        row = html[html.index(f'id="job-{critical.pk}"') :]
        row = row[: row.index("</tr>")]
        assert ">Critical job</span>" in row
        row = html[html.index(f'id="job-{plain.pk}"') :]
        assert ">Critical job</span>" not in row[: row.index("</tr>")]
        # The live refresh of the table carries it too.
        polled = self.client.get(
            "/jobs/?poll=1&v=stale", headers={"HX-Request": "true", "HX-Target": "job-table"}
        ).content.decode()
        assert "<html" not in polled and ">Critical job</span>" in polled


class AdminTestCase(BaseTestCase):
    def test_the_job_admin_lists_and_filters_both(self):
        root = User.objects.create_superuser("root", "root@example.org", "password")
        self.client.force_login(root)
        self.make_job(save_history=H.NEVER, critical=True)
        html = self.client.get("/admin/jobs/batchjob/").content.decode()
        assert "Save job to history" in html
        assert "Critical job" in html
        r = self.client.get("/admin/jobs/batchjob/?save_history__exact=never&critical__exact=1")
        assert r.status_code == 200

from __future__ import annotations

import datetime as dt

import pytest
from django.test import override_settings

from batchadmin.alerts.models import BatchJobAlert
from batchadmin.jobs import copying
from batchadmin.jobs.models import (
    BatchJob,
    BatchRecurrence,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    Company,
    Priority,
    SaveHistory,
)
from batchadmin.processes.registry import ProcessNotAllowed
from batchadmin.servers.models import BatchGroup
from tests.base import drain, start
from tests.jobs.form_base import FormTestCase

S = BatchStatus
START = dt.datetime(2030, 3, 4, 5, 6, tzinfo=dt.UTC)


class CopyServiceTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.demf = Company.objects.create(code="DEMF", name="Contoso Germany")
        self.other = Company.objects.create(code="GBSI", name="Contoso UK")
        self.reporting = BatchGroup.objects.create(code="Reporting")
        self.source, self.tasks = self.make_walkthrough(priority=Priority.HIGH, run_as=self.dave)
        BatchTask.objects.filter(pk=self.tasks["T1"].pk).update(
            process="demo.sleep",
            parameters={"seconds": 0},
            ignore_failure=True,
            max_retries=4,
            group=self.reporting,
            company=self.usmf,
        )
        BatchTask.objects.filter(pk=self.tasks["T2"].pk).update(company=self.other)
        BatchTask.objects.filter(pk=self.tasks["T7"].pk).update(condition_type="any")
        BatchJobAlert.objects.create(job=self.source, user=self.alice, error=True, email=True)
        BatchJobAlert.objects.create(job=self.source, user=self.dave, ended=True)
        BatchRecurrence.objects.create(
            job=self.source,
            start_date=dt.date(2030, 1, 6),
            start_time=dt.time(22, 0),
            time_zone="Europe/Oslo",
            unit=BatchRecurrence.Unit.WEEKS,
            every=2,
            weekdays=["mon", "thu"],
            end_after=10,
            runs=3,
        )

    def copy(self, **overrides: object) -> BatchJob:
        arguments: dict[str, object] = {
            "by": self.dave,
            "description": "Settlement DEMF",
            "company": self.demf,
            "scheduled_start": START,
            "run_as": None,
        }
        return copying.copy_job(self.source, **(arguments | overrides))  # type: ignore[arg-type]

    def test_it_copies_the_header_as_chosen_and_starts_in_withhold(self):
        copy = self.copy()
        assert copy.pk != self.source.pk
        assert (
            copy.description,
            copy.status,
            copy.priority,
            copy.scheduled_start,
            copy.company,
            copy.created_by,
            copy.run_as,
        ) == ("Settlement DEMF", S.WITHHOLD, Priority.HIGH, START, self.demf, self.dave, None)

    def test_it_copies_save_job_to_history_and_critical(self):
        BatchJob.objects.filter(pk=self.source.pk).update(
            save_history=SaveHistory.ERRORS, critical=True
        )
        self.source.refresh_from_db()
        copy = self.copy(by=self.alice)
        assert (copy.save_history, copy.critical) == (SaveHistory.ERRORS, True)

    def test_a_batch_users_copy_is_not_critical(self):
        # Critical alerts every manager: a manager's choice, not carried into a user's copy.
        BatchJob.objects.filter(pk=self.source.pk).update(critical=True)
        self.source.refresh_from_db()
        assert self.copy().critical is False

    def test_it_follows_the_job_the_source_follows(self):
        parent = self.make_job(description="Import orders")
        BatchJob.objects.filter(pk=self.source.pk).update(after_job=parent, after_status="error")
        self.source.refresh_from_db()
        copy = self.copy()
        assert (copy.after_job_id, copy.after_status) == (parent.pk, "error")

    def test_it_copies_every_task_with_its_parameters(self):
        copy = self.copy()
        fields = [
            "key",
            "description",
            "process",
            "parameters",
            "group",
            "ignore_failure",
            "max_retries",
            "condition_type",
            "position",
        ]
        assert list(copy.tasks.order_by("position").values_list(*fields)) == list(
            self.source.tasks.order_by("position").values_list(*fields)
        )
        assert set(copy.tasks.values_list("status", flat=True)) == {S.WAITING}

    def test_tasks_in_the_jobs_company_move_to_the_copys_company(self):
        companies = dict(self.copy().tasks.values_list("key", "company__code"))
        assert companies["T1"] == "DEMF"  # ran in the job's company
        assert companies["T2"] == "GBSI"  # had a company of its own
        assert companies["T3"] is None  # follows the job's company

    def test_it_copies_the_conditions_between_the_new_tasks(self):
        copy = self.copy()

        def conditions(job: BatchJob) -> set[tuple[str, str, str]]:
            return set(
                BatchTaskCondition.objects.filter(task__job=job).values_list(
                    "task__key", "depends_on__key", "expected_status"
                )
            )

        assert conditions(copy) == conditions(self.source)
        assert len(conditions(copy)) == 7
        assert not BatchTaskCondition.objects.filter(task__job=copy).exclude(depends_on__job=copy)

    def alerts(self, copy: BatchJob) -> dict[str, str]:
        return {
            a.user.username: a.describe()
            for a in BatchJobAlert.objects.filter(job=copy).select_related("user")
        }

    def test_a_managers_copy_has_the_alerts_of_every_user(self):
        copy = self.copy(by=self.alice)
        assert self.alerts(copy) == {"alice": "Error (popup, e-mail)", "dave": "Ended (popup)"}

    def test_a_batch_users_copy_has_only_their_own_alerts(self):
        # Alice's e-mail subscription is hers: dave's copy must not mail her about his job.
        assert self.alerts(self.copy()) == {"dave": "Ended (popup)"}

    def test_it_refuses_a_process_the_copier_may_not_run(self):
        BatchTask.objects.filter(pk=self.tasks["T3"].pk).update(process="history.cleanup")
        jobs = BatchJob.objects.count()
        with pytest.raises(ProcessNotAllowed) as excinfo:
            self.copy()
        assert str(excinfo.value) == (
            "Not copied: User dave may not run the batch process history.cleanup (only a Batch "
            "job manager may run it)."
        )
        assert BatchJob.objects.count() == jobs
        assert self.copy(by=self.alice).tasks.filter(process="history.cleanup").exists()

    def test_it_refuses_a_process_the_copys_run_by_may_not_run(self):
        BatchTask.objects.filter(pk=self.tasks["T3"].pk).update(process="history.cleanup")
        with pytest.raises(ProcessNotAllowed, match="User dave may not run"):
            self.copy(by=self.alice, run_as=self.dave)

    @override_settings(BATCH_USER_MAX_TIME_LIMIT=3600)
    def test_a_batch_users_copy_keeps_its_time_limits_under_the_ceiling(self):
        BatchTask.objects.filter(pk=self.tasks["T1"].pk).update(time_limit=7 * 24 * 3600)
        BatchTask.objects.filter(pk=self.tasks["T2"].pk).update(time_limit=60)
        limits = dict(self.copy().tasks.values_list("key", "time_limit"))
        # T3 had none: the 6 h default is above the ceiling too.
        assert (limits["T1"], limits["T2"], limits["T3"]) == (3600, 60, 3600)
        limits = dict(self.copy(by=self.alice).tasks.values_list("key", "time_limit"))
        assert (limits["T1"], limits["T3"]) == (7 * 24 * 3600, None)

    def test_it_copies_the_recurrence_with_a_fresh_run_count(self):
        recurrence = self.copy().get_recurrence()
        assert recurrence is not None
        assert (
            recurrence.unit,
            recurrence.every,
            recurrence.weekdays,
            recurrence.time_zone,
            recurrence.end_after,
            recurrence.runs,
        ) == ("weeks", 2, ["mon", "thu"], "Europe/Oslo", 10, 0)

    def test_it_copies_the_overlap_policy_but_not_a_pause(self):
        BatchRecurrence.objects.filter(job=self.source).update(
            overlap=BatchRecurrence.Overlap.BUFFER_ONE,
            paused_at=START,
            paused_by=self.alice,
            pause_reason="freeze",
            overlap_at=START,
        )
        self.source.refresh_from_db()
        recurrence = self.copy().get_recurrence()
        assert recurrence is not None
        assert recurrence.overlap == BatchRecurrence.Overlap.BUFFER_ONE
        assert not recurrence.is_paused()
        assert (recurrence.pause_reason, recurrence.overlap_at) == ("", None)

    def test_the_source_is_left_as_it_was(self):
        before = list(self.source.tasks.values_list("pk", "key", "status"))
        self.copy()
        assert list(self.source.tasks.values_list("pk", "key", "status")) == before
        assert self.source.alerts.count() == 2

    def test_the_copy_runs_like_the_source(self):
        copy = self.copy(scheduled_start=START - dt.timedelta(days=3650))
        BatchJob.objects.filter(pk=copy.pk).update(status=S.WAITING)
        copy.refresh_from_db()
        start(copy)
        drain(copy)
        # Recurring: the job itself is back to Waiting for its next run.
        assert copy.runs.get().status == S.ENDED


class CopyDialogTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job, _ = self.make_walkthrough(created_by=self.dave, run_as=self.bob)
        self.login(self.dave)
        # The jobs there are before the test (the database may hold seeded ones).
        self.jobs = BatchJob.objects.count()

    def url(self, job: BatchJob | None = None) -> str:
        return f"/jobs/{(job or self.job).pk}/copy/"

    def data(self, **overrides: str) -> dict[str, str]:
        return {
            "description": "Copy of the walkthrough",
            "company": str(self.usmf.pk),
            "scheduled_start": "2030-03-04T05:06",
            "run_as": "",
        } | overrides

    def test_it_is_a_dialog_fragment_for_htmx_and_a_page_without(self):
        r = self.client.get(self.url(), headers=self.htmx("dialog"))
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="copy-form"' in html
        assert "with its tasks (7), their parameters and conditions" in " ".join(html.split())
        assert "<html" in self.client.get(self.url()).content.decode()

    def test_it_copies_and_goes_to_the_copy(self):
        r = self.client.post(self.url(), self.data(), headers=self.htmx("dialog"))
        copy = BatchJob.objects.get(description="Copy of the walkthrough")
        assert r.headers["HX-Redirect"] == f"/jobs/{copy.pk}/"
        assert (copy.status, copy.tasks.count(), copy.created_by) == (S.WITHHOLD, 7, self.dave)
        assert copy.scheduled_start == START
        page = self.client.get(f"/jobs/{copy.pk}/").content.decode()
        assert f"Copied job {self.job.pk} to job {copy.pk}, which is in Withhold" in page

    def test_it_redirects_without_htmx(self):
        r = self.client.post(self.url(), self.data())
        copy = BatchJob.objects.get(description="Copy of the walkthrough")
        self.assertRedirects(r, f"/jobs/{copy.pk}/")

    def test_only_a_manager_chooses_run_by(self):
        self.client.post(self.url(), self.data(run_as=str(self.alice.pk)))
        assert BatchJob.objects.get(description="Copy of the walkthrough").run_as is None
        self.login(self.alice)
        self.client.post(self.url(), self.data(description="By a manager", run_as=str(self.bob.pk)))
        assert BatchJob.objects.get(description="By a manager").run_as == self.bob

    def test_a_manager_starts_from_the_sources_run_by(self):
        self.login(self.alice)
        html = self.client.get(self.url(), headers=self.htmx()).content.decode()
        assert f'<option value="{self.bob.pk}" selected>bob</option>' in html

    def test_it_shows_errors_at_the_field_and_keeps_the_input(self):
        r = self.client.post(
            self.url(), self.data(description="", scheduled_start="soon"), headers=self.htmx()
        )
        html = r.content.decode()
        assert "This field is required." in html
        assert "Enter a date and time as 2026-12-03 18:30." in html
        assert 'value="soon"' in html
        assert BatchJob.objects.count() == self.jobs

    def test_a_viewer_cannot_copy(self):
        self.login(self.bob)
        assert self.client.get(self.url()).status_code == 404
        assert self.client.post(self.url(), self.data()).status_code == 404
        assert BatchJob.objects.count() == self.jobs

    def test_it_says_why_when_a_process_may_not_be_copied(self):
        BatchTask.objects.filter(job=self.job, key="T2").update(process="history.cleanup")
        r = self.client.post(self.url(), self.data(), headers=self.htmx("dialog"))
        assert r.status_code == 200
        assert "User dave may not run the batch process history.cleanup" in r.content.decode()
        assert BatchJob.objects.count() == self.jobs

    def test_a_batch_user_cannot_copy_the_jobs_of_others(self):
        job = self.make_job(created_by=self.alice)
        assert self.client.get(self.url(job)).status_code == 404
        assert self.client.post(self.url(job), self.data()).status_code == 404
        assert BatchJob.objects.count() == self.jobs + 1

"""The task's time limit in the task grid, import/export and copy."""

from __future__ import annotations

import datetime as dt

import pytest

from batchadmin.jobs import copying, io
from batchadmin.jobs.models import BatchStatus, BatchTask
from tests.jobs.form_base import FormTestCase
from tests.jobs.test_import_export import job_data
from tests.jobs.test_import_export import task_data as import_task
from tests.jobs.test_task_grid import task_data

S = BatchStatus


class TimeLimitGridTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)

    def test_a_line_saves_its_time_limit_and_the_row_shows_it(self):
        url = f"/jobs/{self.job.pk}/tasks/new/"
        r = self.client.post(url, task_data(time_limit="5400"), headers=self.htmx("task-new"))
        assert r.status_code == 200
        task = BatchTask.objects.get(job=self.job)
        assert task.time_limit == 5400
        assert "· time limit 1 h 30 min" in r.content.decode()

    def test_an_empty_time_limit_means_the_default_and_is_not_shown(self):
        url = f"/jobs/{self.job.pk}/tasks/new/"
        r = self.client.post(url, task_data(time_limit=""), headers=self.htmx("task-new"))
        assert BatchTask.objects.get(job=self.job).time_limit is None
        assert "time limit" not in r.content.decode()

    def test_the_editor_offers_it_and_refuses_zero(self):
        task = self.make_task(self.job, "T1", time_limit=60)
        edit = f"/jobs/{self.job.pk}/tasks/{task.pk}/edit/"
        html = self.client.get(edit, headers=self.htmx(f"task-{task.pk}")).content.decode()
        assert 'name="time_limit"' in html
        assert "Empty: the default, 6 h." in html
        assert 'value="60"' in html
        r = self.client.post(edit, task_data(time_limit="0"), headers=self.htmx(f"task-{task.pk}"))
        assert "Ensure this value is greater than or equal to 1." in r.content.decode()
        task.refresh_from_db()
        assert task.time_limit == 60

    def test_a_copy_keeps_it(self):
        self.make_task(self.job, "T1", time_limit=120)
        copy = copying.copy_job(
            self.job,
            by=self.dave,
            description="Copy",
            company=None,
            scheduled_start=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
            run_as=None,
        )
        assert copy.tasks.get().time_limit == 120


class TimeLimitImportExportTestCase(FormTestCase):
    def test_it_imports_and_exports_seconds(self):
        data = job_data(tasks=[import_task("T1", time_limit=3600), import_task("T2")])
        [job] = io.import_data(data, user=self.alice)
        limits = dict(job.tasks.values_list("key", "time_limit"))
        assert limits == {"T1": 3600, "T2": None}
        exported = io.export_job(job)
        assert exported["tasks"][0]["time_limit"] == 3600
        assert "time_limit" not in exported["tasks"][1]  # the default is left out

    def test_it_accepts_null_for_the_default(self):
        [job] = io.import_data(job_data(tasks=[import_task("T1", time_limit=None)]))
        assert job.tasks.get().time_limit is None

    def test_it_refuses_a_bad_time_limit(self):
        for bad in (0, -5, 604801, 1.5, "1h", True):
            with pytest.raises(io.ImportFailure) as excinfo:
                io.import_data(job_data(tasks=[import_task("T1", time_limit=bad)]))
            assert str(excinfo.value).endswith(
                "task 'T1': time_limit must be a whole number of seconds from 1 to 604800 "
                f"(7 days), or null for the default, got {bad!r}."
            )

"""Task grid lines (issue 17.8): parameters in short, the last attempt's start and end,
server and log; task IDs named in the grid as in import files."""

from __future__ import annotations

import datetime as dt

from batchadmin.jobs.models import BatchJobRun, BatchStatus, BatchTask, BatchTaskRun
from tests.base import drain, start
from tests.jobs.form_base import FormTestCase
from tests.jobs.test_task_grid import task_data

S = BatchStatus


class TaskLineTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login(self.alice)

    def test_a_line_shows_parameters_last_times_server_and_log(self):
        job = self.make_job()
        task = self.make_task(
            job, "T1", process="demo.log", parameters={"lines": 2, "note": "x" * 40}
        )
        start(job)
        drain(job)
        attempt = BatchTaskRun.objects.get(task=task)
        task.refresh_from_db()
        assert task.started_at is not None
        # A short attempt: its times read to the millisecond.
        started = task.started_at.replace(microsecond=250_000)
        BatchTask.objects.filter(pk=task.pk).update(
            started_at=started, ended_at=started + dt.timedelta(milliseconds=500)
        )
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert "lines=2" in html
        assert "note=xxxxxxxxxxxxxxxxxxxxxxx…" in html  # a long value is cut
        assert ".250</span>" in html
        assert ".750</span>" in html
        assert self.server.name in html
        run = BatchJobRun.objects.get(job=job)
        assert f"/jobs/{job.pk}/history/{run.pk}/log/?task_run={attempt.pk}" in html

    def test_a_line_that_never_ran_has_no_log_link(self):
        job = self.make_job(status=S.WITHHOLD)
        self.make_task(job, "T1")
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert "/log/?task_run=" not in html

    def test_a_new_task_takes_the_id_typed_in_the_grid(self):
        job = self.make_job(status=S.WITHHOLD)
        r = self.client.post(
            f"/jobs/{job.pk}/tasks/new/", task_data(key=" post-invoices "), headers=self.htmx()
        )
        assert r.status_code == 200
        assert BatchTask.objects.get(job=job).key == "post-invoices"
        # Left empty: the next free Tn.
        self.client.post(f"/jobs/{job.pk}/tasks/new/", task_data(key=""), headers=self.htmx())
        assert set(job.tasks.values_list("key", flat=True)) == {"post-invoices", "T1"}

    def test_a_task_can_be_renamed_and_keeps_its_conditions(self):
        job = self.make_job(status=S.WITHHOLD)
        t1 = self.make_task(job, "T1")
        t2 = self.make_task(job, "T2")
        self.add_condition(t2, t1)
        r = self.client.post(
            f"/jobs/{job.pk}/tasks/{t1.pk}/edit/", task_data(key="extract"), headers=self.htmx()
        )
        assert r.status_code == 200
        t1.refresh_from_db()
        assert t1.key == "extract"
        assert list(t2.conditions.values_list("depends_on_id", flat=True)) == [t1.pk]
        # The edit form shows the ID to change.
        html = self.client.get(
            f"/jobs/{job.pk}/tasks/{t1.pk}/edit/", headers=self.htmx()
        ).content.decode()
        assert 'name="key" value="extract"' in html

    def test_a_taken_id_is_refused_with_a_message(self):
        job = self.make_job(status=S.WITHHOLD)
        self.make_task(job, "T1")
        t2 = self.make_task(job, "T2")
        r = self.client.post(
            f"/jobs/{job.pk}/tasks/{t2.pk}/edit/", task_data(key="T1"), headers=self.htmx()
        )
        assert "Task ID T1 is already used in this job: choose another." in r.content.decode()
        t2.refresh_from_db()
        assert t2.key == "T2"
        r = self.client.post(
            f"/jobs/{job.pk}/tasks/new/", task_data(key="x" * 51), headers=self.htmx()
        )
        assert "at most 50 characters" in r.content.decode()
        assert job.tasks.count() == 2

from __future__ import annotations

import datetime as dt
import re

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from batchadmin.engine import transitions
from batchadmin.jobs import run_grid
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, BatchTaskRun
from tests.base import BaseTestCase, drain, start

S = BatchStatus
HTMX = {"HX-Request": "true", "HX-Target": "job-runs"}


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class RunGridTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def two_runs(self) -> BatchJob:
        """Run 1: T1 ends, T2 fails. Run 2 (rerun of the failed): T2 fails again, T1 kept."""
        job = self.make_job(description="Invoice posting")
        self.make_task(job, "T1", position=1)
        self.make_task(
            job, "T2", process="demo.fail", parameters={"message": "Ledger locked"}, position=2
        )
        start(job)
        drain(job)
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=True)
        drain(job)
        assert job.status == S.ERROR
        return job

    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/runs/"

    def test_it_draws_a_column_per_run_and_a_cell_per_task(self):
        job = self.two_runs()
        grid = run_grid.load_grid(job)
        runs = list(BatchJobRun.objects.filter(job=job).order_by("started_at", "pk"))
        assert [c.run.pk for c in grid.columns] == [r.pk for r in runs]  # oldest first
        assert [c.number for c in grid.columns] == [1, 2]
        t1, t2 = grid.rows
        assert [c.status if c else None for c in t1.cells] == [S.ENDED, S.ENDED]
        assert t1.cells[1] is not None and t1.cells[1].kept  # not run again in the rerun
        assert [c.status if c else None for c in t2.cells] == [S.ERROR, S.ERROR]

    def test_the_cells_link_to_the_attempts_log(self):
        job = self.two_runs()
        html = self.client.get(self.url(job), headers=HTMX).content.decode()
        assert "<html" not in html
        assert 'id="job-runs"' in html
        for attempt in BatchTaskRun.objects.filter(job_run__job=job).exclude(started_at=None):
            assert f"/history/{attempt.job_run_id}/log/?task_run={attempt.pk}" in html
        assert 'class="rg-cell status-error' in html
        assert 'class="rg-cell status-ended kept"' in html

    def test_it_draws_the_gantt_of_the_latest_run_or_the_chosen_one(self):
        job = self.two_runs()
        first, second = BatchJobRun.objects.filter(job=job).order_by("started_at", "pk")
        html = self.client.get(self.url(job), headers=HTMX).content.decode()
        assert f"Gantt of run {second.pk}" in html
        html = self.client.get(self.url(job), {"run": first.pk}, headers=HTMX).content.decode()
        assert f"Gantt of run {first.pk}" in html
        assert html.count('class="gantt-bar') == 2  # T1 and T2 in the first run
        assert self.server.name in html  # the server of each attempt
        # A run of another job is not found.
        other = self.make_job()
        assert self.client.get(self.url(other), {"run": first.pk}).status_code == 404

    def test_the_gantt_places_attempts_on_one_axis_with_their_wait(self):
        job = self.two_runs()
        run = BatchJobRun.objects.filter(job=job).order_by("started_at", "pk").first()
        assert run is not None
        base = run.started_at
        attempts = {a.task.key: a for a in BatchTaskRun.objects.filter(job_run=run)}
        # T1 waits 1 s, runs 2 s; T2 is ready when T1 is, starts at 3 s and runs 1 s.
        for key, ready, started, ended in (("T1", 0, 1, 3), ("T2", 0, 3, 4)):
            BatchTaskRun.objects.filter(pk=attempts[key].pk).update(
                ready_at=base + dt.timedelta(seconds=ready),
                started_at=base + dt.timedelta(seconds=started),
                ended_at=base + dt.timedelta(seconds=ended),
            )
        BatchJobRun.objects.filter(pk=run.pk).update(ended_at=base + dt.timedelta(seconds=4))
        run.refresh_from_db()
        gantt = run_grid.load_gantt(run)
        (t1,), (t2,) = (row.bars for row in gantt.rows)
        assert (t1.wait_left, t1.wait_width, t1.left, t1.width) == (0, 25, 25, 50)
        assert (t2.wait_left, t2.wait_width, t2.left, t2.width) == (0, 75, 75, 25)
        assert t1.wait == "1.0 s"
        assert t2.took == "1.0 s"
        assert gantt.span == "4.0 s"
        # A short run's axis reads in milliseconds.
        assert re.search(r":\d\d\.\d{3}$", gantt.ticks[1].label)

    def test_the_job_page_loads_the_section(self):
        job = self.two_runs()
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert 'id="job-runs"' in html
        assert f'hx-get="/jobs/{job.pk}/runs/"' in html
        # Without htmx the section is a page of its own.
        r = self.client.get(self.url(job))
        assert r.status_code == 200
        assert "<html" in r.content.decode()

    def test_it_is_role_checked(self):
        job = self.two_runs()
        self.client.force_login(self.dave)  # a batch user who neither created nor runs it
        assert self.client.get(self.url(job)).status_code == 404
        self.client.force_login(self.bob)  # a viewer
        assert self.client.get(self.url(job)).status_code == 200

    def test_it_polls_while_the_tab_is_visible_and_keeps_the_chosen_run(self):
        job = self.two_runs()
        first = BatchJobRun.objects.filter(job=job).order_by("started_at", "pk").first()
        assert first is not None
        html = self.client.get(self.url(job), {"run": first.pk}, headers=HTMX).content.decode()
        assert "visibilityState" in html
        assert f'hx-get="/jobs/{job.pk}/runs/?run={first.pk}"' in html

    def test_the_query_count_does_not_grow_with_runs_or_tasks(self):
        job = self.two_runs()

        def count() -> int:
            with CaptureQueriesContext(connection) as ctx:
                assert self.client.get(self.url(job), headers=HTMX).status_code == 200
            return len(ctx.captured_queries)

        count()  # the first request of the session reads what later ones have cached
        before = count()
        for key in ("T3", "T4", "T5"):
            self.make_task(job, key, position=9)
        assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=False)
        drain(job)
        assert count() == before

from __future__ import annotations

import datetime as dt
from typing import Any

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.jobs import filters, inquiries
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.servers.models import BatchGroup, BatchServer
from tests.base import BaseTestCase, drain, start

S = BatchStatus
HTMX = {"HX-Request": "true"}
RUNS = "/jobs/history/"
ATTEMPTS = "/jobs/tasks/"


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class InquiryTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def failing_job(self, description: str = "Invoice posting", **overrides: Any) -> BatchJob:
        """One run: T1 ends, T2 fails with "Ledger locked"."""
        job = self.make_job(description=description, **overrides)
        self.make_task(job, "T1", process="demo.log", parameters={"lines": 1}, position=1)
        self.make_task(
            job, "T2", process="demo.fail", parameters={"message": "Ledger locked"}, position=2
        )
        start(job)
        drain(job)
        assert job.status == S.ERROR
        return job

    def ending_job(self, description: str = "Nightly settlement", **overrides: Any) -> BatchJob:
        job = self.make_job(description=description, **overrides)
        self.make_task(job, "T1", position=1)
        start(job)
        drain(job)
        assert job.status == S.ENDED
        return job

    # --- Batch job history ---------------------------------------------------------------

    def test_it_lists_every_run_of_every_job_with_links(self):
        failed = self.failing_job()
        ended = self.ending_job()
        r = self.client.get(RUNS)
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" in html
        for job in (failed, ended):
            run = BatchJobRun.objects.get(job=job)
            assert f'id="run-{run.pk}"' in html
            assert f"/jobs/{job.pk}/history/{run.pk}/log/" in html
            assert f'href="/jobs/{job.pk}/"' in html
        assert "1 Error" in html  # the failed run's summary of its tasks
        assert "retr" not in html  # no attempt was retried

    def test_a_run_counts_a_retried_task_once_and_its_retries(self):
        job = self.make_job()
        self.make_task(job, "T1", process="demo.flaky", parameters={"failures": 1}, max_retries=1)
        start(job)
        drain(job)
        html = self.client.get(RUNS).content.decode()
        assert "1 Ended" in html
        assert "1 Error" not in html
        assert "1 retry" in html

    def test_it_filters_runs_by_status_and_error_text(self):
        failed = self.failing_job()
        ended = self.ending_job()
        html = self.client.get(RUNS, {"status": "error"}).content.decode()
        assert f"/jobs/{failed.pk}/history/" in html
        assert f'href="/jobs/{ended.pk}/"' not in html
        html = self.client.get(RUNS, {"error": "ledger LOCK"}).content.decode()
        assert f'href="/jobs/{failed.pk}/"' in html
        assert f'href="/jobs/{ended.pk}/"' not in html
        html = self.client.get(RUNS, {"error": "nothing like it"}).content.decode()
        assert "No runs match." in html

    def test_it_filters_runs_by_group_server_process_company_run_by_and_time(self):
        failed = self.failing_job(run_as=self.bob)
        ended = self.ending_job()
        other = BatchGroup.objects.create(code="other", description="Other")
        for params, shown in (
            ({"process": "demo.fail"}, [failed]),
            ({"group": BatchGroup.objects.default().pk}, [failed, ended]),
            ({"group": other.pk}, []),
            ({"server": self.server.pk}, [failed, ended]),
            ({"company": self.usmf.pk}, [failed, ended]),
            ({"run_by": self.bob.pk}, [failed]),
            ({"job": failed.pk}, [failed]),
            ({"description": "invoice"}, [failed]),
            ({"started_after": (now() + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")}, []),
            (
                {"started_before": (now() + dt.timedelta(hours=1)).strftime("%Y-%m-%d %H:%M")},
                [failed, ended],
            ),
        ):
            html = self.client.get(RUNS, params).content.decode()
            for job in (failed, ended):
                assert (f'href="/jobs/{job.pk}/"' in html) == (job in shown), (params, job)

    def test_it_refuses_a_bad_filter_with_a_message(self):
        self.ending_job()
        r = self.client.get(RUNS, {"started_after": "yesterday-ish"})
        assert r.status_code == 200
        html = r.content.decode()
        assert "Enter a date and time as 2026-12-03 18:30." in html
        assert "No runs match." in html

    def test_it_sorts_runs(self):
        first = self.ending_job("Aaa")
        second = self.ending_job("Zzz")
        html = self.client.get(RUNS).content.decode()
        assert html.index(f'href="/jobs/{second.pk}/"') < html.index(f'href="/jobs/{first.pk}/"')
        html = self.client.get(RUNS, {"o": "description"}).content.decode()
        assert html.index(f'href="/jobs/{first.pk}/"') < html.index(f'href="/jobs/{second.pk}/"')
        html = self.client.get(RUNS, {"o": "-description"}).content.decode()
        assert html.index(f'href="/jobs/{second.pk}/"') < html.index(f'href="/jobs/{first.pk}/"')

    def test_it_sorts_runs_and_attempts_by_duration(self):
        short = self.ending_job("Short")
        long = self.ending_job("Long")
        run = BatchJobRun.objects.get(job=long)
        BatchJobRun.objects.filter(pk=run.pk).update(
            ended_at=run.started_at + dt.timedelta(hours=1)
        )
        attempt = BatchTaskRun.objects.get(job_run=run)
        assert attempt.started_at is not None
        BatchTaskRun.objects.filter(pk=attempt.pk).update(
            ended_at=attempt.started_at + dt.timedelta(hours=1)
        )
        for url in (RUNS, ATTEMPTS):
            html = self.client.get(url, {"o": "-duration"}).content.decode()
            assert html.index(f'href="/jobs/{long.pk}/') < html.index(f'href="/jobs/{short.pk}/'), (
                url
            )
            html = self.client.get(url, {"o": "duration"}).content.decode()
            assert html.index(f'href="/jobs/{short.pk}/') < html.index(f'href="/jobs/{long.pk}/'), (
                url
            )

    def test_it_pages_runs(self):
        job = self.ending_job()
        run = BatchJobRun.objects.get(job=job)
        at = run.started_at
        BatchJobRun.objects.bulk_create(
            BatchJobRun(
                job=job,
                status=S.ENDED,
                scheduled_start=at,
                started_at=at - dt.timedelta(minutes=i + 1),
                ended_at=at,
            )
            for i in range(inquiries.PAGE_SIZE + 5)
        )
        ids = list(BatchJobRun.objects.order_by("-started_at", "-pk").values_list("pk", flat=True))
        first = self.client.get(RUNS).content.decode()
        assert f"Runs 1–{inquiries.PAGE_SIZE} of {len(ids)}" in first
        assert f'id="run-{ids[0]}"' in first
        assert f'id="run-{ids[inquiries.PAGE_SIZE]}"' not in first
        assert "page=2" in first
        second = self.client.get(RUNS, {"page": "2"}).content.decode()
        assert f'id="run-{ids[inquiries.PAGE_SIZE]}"' in second
        assert f'id="run-{ids[0]}"' not in second
        assert "‹ Newer" in second
        # A page past the end shows the first.
        assert f'id="run-{ids[0]}"' in self.client.get(RUNS, {"page": "99"}).content.decode()

    def test_it_shows_short_runs_with_milliseconds(self):
        job = self.ending_job()
        run = BatchJobRun.objects.get(job=job)
        started = run.started_at.replace(microsecond=123_000)
        BatchJobRun.objects.filter(pk=run.pk).update(
            started_at=started, ended_at=started + dt.timedelta(seconds=2)
        )
        html = self.client.get(RUNS).content.decode()
        assert ".123" in html

    def test_it_shows_a_batch_user_only_their_jobs(self):
        mine = self.ending_job("Mine", created_by=self.dave)
        theirs = self.ending_job("Theirs")
        self.client.force_login(self.dave)
        for url in (RUNS, ATTEMPTS):
            html = self.client.get(url).content.decode()
            assert f'href="/jobs/{mine.pk}/' in html, url
            assert f'href="/jobs/{theirs.pk}/' not in html, url
        # A viewer sees every job.
        self.client.force_login(self.bob)
        html = self.client.get(RUNS).content.decode()
        assert f'href="/jobs/{theirs.pk}/"' in html

    def test_it_refuses_a_user_without_a_role(self):
        self.ending_job()
        self.client.force_login(self.charlie)
        assert self.client.get(RUNS).status_code == 403
        assert self.client.get(ATTEMPTS).status_code == 403

    def test_it_returns_the_table_alone_for_its_poll(self):
        self.ending_job()
        r = self.client.get(RUNS, headers={**HTMX, "HX-Target": "run-table"})
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="run-table"' in html
        assert "visibilityState" in html  # polls only while the tab is visible
        r = self.client.get(ATTEMPTS, headers={**HTMX, "HX-Target": "attempt-table"})
        assert "<html" not in r.content.decode()

    def test_the_nav_links_both_inquiries(self):
        html = self.client.get("/jobs/").content.decode()
        assert f'href="{RUNS}"' in html
        assert f'href="{ATTEMPTS}"' in html

    # --- Batch tasks ---------------------------------------------------------------------

    def test_it_lists_every_attempt_with_its_log_and_error(self):
        job = self.failing_job()
        html = self.client.get(ATTEMPTS).content.decode()
        run = BatchJobRun.objects.get(job=job)
        for attempt in BatchTaskRun.objects.filter(job_run=run):
            assert f'id="attempt-{attempt.pk}"' in html
            assert f"/jobs/{job.pk}/history/{run.pk}/log/?task_run={attempt.pk}" in html
        assert "Ledger locked" in html
        assert self.server.name in html

    def test_it_filters_attempts(self):
        failed = self.failing_job()
        ended = self.ending_job()
        t2 = BatchTaskRun.objects.get(job_run__job=failed, task__key="T2")
        t1 = BatchTaskRun.objects.get(job_run__job=failed, task__key="T1")
        other = BatchTaskRun.objects.get(job_run__job=ended)
        other_server = BatchServer.objects.create(name="aos9")
        for params, shown in (
            ({"status": "error"}, [t2]),
            ({"status": ["error", "ended"]}, [t1, t2, other]),
            ({"error": "ledger"}, [t2]),
            ({"process": "demo.log"}, [t1]),
            ({"job": failed.pk}, [t1, t2]),
            ({"server": self.server.pk}, [t1, t2, other]),
            ({"server": other_server.pk}, []),
            ({"company": self.usmf.pk}, [t1, t2, other]),
            ({"run_by": self.alice.pk}, [t1, t2, other]),
            ({"run_by": self.bob.pk}, []),
        ):
            html = self.client.get(ATTEMPTS, params).content.decode()
            for attempt in (t1, t2, other):
                assert (f'id="attempt-{attempt.pk}"' in html) == (attempt in shown), params

    def test_the_error_search_can_use_the_partial_trigram_index(self):
        # jobs.0025: the index leaves out empty messages; PostgreSQL uses it only if the
        # search's condition implies that. With sequential scans off, a usable index shows.
        self.failing_job()
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        search = filters.AttemptFilter({"error": "ledger"}, queryset=BatchTaskRun.objects.all())
        qs = search.qs.order_by()
        assert [a.task.key for a in qs] == ["T2"]
        plan = qs.explain()
        assert "taskrun_error_trgm_idx" in plan, plan
        # Batch job history: the same condition inside EXISTS (on rows this few the planner
        # may well prefer another index there; the condition is what makes the index usable).
        runs = filters.RunFilter({"error": "ledger"}, queryset=BatchJobRun.objects.all())
        assert runs.qs.count() == 1
        plan = runs.qs.order_by().explain()
        assert "taskrun_error_trgm_idx" in plan or "(error_message <> ''::text)" in plan, plan

    def test_the_company_filter_can_use_the_partial_company_index(self):
        # jobs.0024: tasks are indexed by company only when they have one of their own.
        job = self.failing_job()
        job.tasks.filter(key="T1").update(company=self.usmf)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        runs = filters.RunFilter({"company": self.usmf.pk}, queryset=BatchJobRun.objects.all())
        assert runs.qs.count() == 1
        # The tasks of a company, as the filter's EXISTS and a company's PROTECT check ask
        # (the whole filter's plan on a few rows would rather read a primary key).
        plan = BatchTask.objects.filter(company=self.usmf).order_by().explain()
        assert "task_company_idx" in plan, plan

    def test_it_sorts_attempts(self):
        job = self.failing_job()
        t1 = BatchTaskRun.objects.get(job_run__job=job, task__key="T1")
        t2 = BatchTaskRun.objects.get(job_run__job=job, task__key="T2")
        html = self.client.get(ATTEMPTS, {"o": "task"}).content.decode()
        assert html.index(f'id="attempt-{t1.pk}"') < html.index(f'id="attempt-{t2.pk}"')
        html = self.client.get(ATTEMPTS, {"o": "-task"}).content.decode()
        assert html.index(f'id="attempt-{t2.pk}"') < html.index(f'id="attempt-{t1.pk}"')

    def test_it_records_and_shows_the_wait_before_an_attempt(self):
        job = self.ending_job()
        attempt = BatchTaskRun.objects.get(job_run__job=job)
        assert attempt.ready_at is not None  # copied by the claim
        assert attempt.started_at is not None
        assert attempt.ready_at <= attempt.started_at

    # --- query counts --------------------------------------------------------------------

    def queries(self, url: str) -> int:
        with CaptureQueriesContext(connection) as ctx:
            r = self.client.get(url)
        assert r.status_code == 200
        return len(ctx.captured_queries)

    def test_the_query_count_does_not_grow_with_the_page(self):
        self.failing_job("One")
        few = {url: self.queries(url) for url in (RUNS, ATTEMPTS)}
        for i in range(8):
            self.failing_job(f"Job {i}", run_as=self.bob)
        for url, n in few.items():
            # +1: the count, which a one-page result does without.
            assert self.queries(url) <= n + 1, url
        many = {url: self.queries(url) for url in (RUNS, ATTEMPTS)}
        for i in range(8):
            self.failing_job(f"More {i}")
        for url, n in many.items():
            assert self.queries(url) == n, url

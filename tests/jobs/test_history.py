from __future__ import annotations

from unittest import mock

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from batchadmin.engine import transitions
from batchadmin.jobs import history_views, live
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchLogEntry, BatchStatus, BatchTaskRun
from tests.base import BaseTestCase, drain, start

S = BatchStatus
HTMX = {"HX-Request": "true"}


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class HistoryTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def run_job(self) -> BatchJob:
        """One run: T1 logs, T2 fails once then succeeds (a retry), T3 fails for good."""
        job = self.make_job(description="Invoice posting")
        self.make_task(job, "T1", process="demo.log", parameters={"lines": 3}, position=1)
        self.make_task(
            job,
            "T2",
            process="demo.flaky",
            parameters={"failures": 1},
            max_retries=1,
            position=2,
        )
        self.make_task(
            job, "T3", process="demo.fail", parameters={"message": "Ledger locked"}, position=3
        )
        start(job)
        drain(job)
        assert job.status == S.ERROR
        return job

    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/history/"

    def test_it_shows_every_run_with_its_attempts(self):
        job = self.run_job()
        r = self.client.get(self.url(job))
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" in html
        run = BatchJobRun.objects.get(job=job)
        assert f'id="run-{run.pk}"' in html
        assert "Log line 3 of 3" in html
        assert "Ledger locked" in html  # the error message
        assert "Traceback (most recent call last)" in html
        assert "retried" in html  # T2's first attempt
        assert html.count('<tbody class="attempt') == 4  # T1, T2 twice, T3

    def test_it_returns_the_runs_fragment_to_htmx(self):
        job = self.run_job()
        r = self.client.get(self.url(job), headers=HTMX)
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="job-runs"' in html
        assert "Log line 1 of 3" in html

    def test_it_keeps_polling_the_head_of_a_finished_job_and_answers_204_meanwhile(self):
        job = self.run_job()
        head = {**HTMX, "HX-Target": "history-head"}
        r = self.client.get(self.url(job), headers=head)
        assert r.status_code == 200
        assert 'id="history-head"' in r.content.decode()
        assert "<html" not in r.content.decode()
        r = self.client.get(self.url(job) + f"?v={live.job_version(job)}", headers=head)
        assert r.status_code == 204

    def test_it_polls_the_head_while_the_job_runs_and_signals_a_new_run(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        r = self.client.get(
            self.url(job) + "?latest=", headers={**HTMX, "HX-Target": "history-head"}
        )
        assert r.status_code == 200
        assert "every 3s [document.visibilityState" in r.content.decode()
        assert "history-changed" in r.headers["HX-Trigger"]
        run = BatchJobRun.objects.get(job=job)
        r = self.client.get(
            self.url(job) + f"?latest={run.pk}", headers={**HTMX, "HX-Target": "history-head"}
        )
        assert "HX-Trigger" not in r.headers

    def test_it_polls_a_running_run_and_stops_when_it_ends(self):
        job = self.make_job()
        self.make_task(job, "T1", process="demo.log", parameters={"lines": 2})
        start(job)
        run = BatchJobRun.objects.get(job=job)
        url = f"/jobs/{job.pk}/history/{run.pk}/"
        r = self.client.get(url, headers=HTMX)
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" not in html
        assert 'hx-trigger="every 2s"' in html
        assert "1 Ready" in html  # not started yet
        drain(job)
        r = self.client.get(url, headers=HTMX)
        assert r.status_code == 286
        assert "Log line 2 of 2" in r.content.decode()
        assert "every 2s" not in r.content.decode()

    def test_it_redirects_a_plain_request_for_one_run_to_its_page(self):
        job = self.run_job()
        run = BatchJobRun.objects.get(job=job)
        r = self.client.get(f"/jobs/{job.pk}/history/{run.pk}/")
        assert r.status_code == 302
        assert r.headers["Location"] == f"/jobs/{job.pk}/history/?page=1#run-{run.pk}"

    def test_it_paginates_runs_newest_first(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        drain(job)
        for _ in range(history_views.RUNS_PER_PAGE + 1):
            assert transitions.rerun_job(job_id=job.pk, by_id=None, only_failed=False)
            drain(job)
        newest, *_, oldest = BatchJobRun.objects.filter(job=job).order_by("-started_at", "-pk")
        html = self.client.get(self.url(job)).content.decode()
        assert f'id="run-{newest.pk}"' in html
        assert f'id="run-{oldest.pk}"' not in html
        assert "Page 1 of 2" in html
        html = self.client.get(self.url(job) + "?page=2").content.decode()
        assert f'id="run-{oldest.pk}"' in html

    def test_it_caps_log_lines_per_attempt_and_links_to_the_log(self):
        job = self.make_job()
        self.make_task(job, "T1", process="demo.log", parameters={"lines": 7})
        start(job)
        drain(job)
        with mock.patch.object(history_views, "HISTORY_LINES_PER_ATTEMPT", 5):
            html = self.client.get(self.url(job)).content.decode()
        assert "Log line 5 of 7" in html
        assert "Log line 6 of 7" not in html
        assert "Showing the first 5 of 7 lines" in html
        attempt = BatchTaskRun.objects.get(task__job=job)
        assert f"?task_run={attempt.pk}" in html

    def test_it_shows_an_empty_state_before_the_first_run(self):
        job = self.make_job(status=S.WITHHOLD)
        html = self.client.get(self.url(job)).content.decode()
        assert "This job has not run yet." in html
        assert "Withhold" in html

    def test_it_hides_other_users_jobs(self):
        job = self.run_job()
        self.client.force_login(self.charlie)  # no role
        assert self.client.get(self.url(job)).status_code == 404
        self.client.force_login(self.dave)  # batch user: only his own jobs
        assert self.client.get(self.url(job)).status_code == 404
        own = self.make_job(created_by=self.dave)
        assert self.client.get(self.url(own)).status_code == 200
        run = BatchJobRun.objects.get(job=job)
        self.client.force_login(self.charlie)
        assert self.client.get(f"/jobs/{job.pk}/history/{run.pk}/log/").status_code == 404

    def test_it_shows_history_read_only_to_viewers(self):
        job = self.run_job()
        self.client.force_login(self.bob)
        html = self.client.get(self.url(job)).content.decode()
        assert "Ledger locked" in html
        assert "Rerun" not in html

    def test_it_offers_rerun_to_those_who_may_change_the_job(self):
        job = self.run_job()
        assert "Rerun…" in self.client.get(self.url(job)).content.decode()  # a manager
        job.created_by = self.dave
        job.save()
        self.client.force_login(self.dave)  # a batch user, on his own job
        assert "Rerun…" in self.client.get(self.url(job)).content.decode()

    def test_it_reads_a_page_of_history_in_a_bounded_number_of_queries(self):
        job = self.run_job()
        for _ in range(3):
            assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=False)
            drain(job)
        self.client.get(self.url(job))  # warm the session and the time zone
        with CaptureQueriesContext(connection) as few:
            self.client.get(self.url(job))
        # Twice as many runs, attempts and log lines must not cost one query more.
        for _ in range(4):
            assert transitions.rerun_job(job_id=job.pk, by_id=self.alice.pk, only_failed=False)
            drain(job)
        with self.assertNumQueries(len(few)):
            r = self.client.get(self.url(job))
        assert r.content.decode().count('class="card run"') == 8
        assert len(few) <= 12, "\n".join(q["sql"][:150] for q in few.captured_queries)


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class LogTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)
        self.job = self.make_job(description="Bank import")
        self.make_task(
            self.job,
            "fetch",
            description="Fetch statements",
            process="demo.log",
            parameters={"lines": 4},
        )
        self.make_task(
            self.job,
            "post",
            description="Post statements",
            process="demo.fail",
            parameters={"message": "No bank"},
        )
        start(self.job)
        drain(self.job)
        self.job_run = BatchJobRun.objects.get(job=self.job)
        self.url = f"/jobs/{self.job.pk}/history/{self.job_run.pk}/log/"

    def test_it_nests_job_task_and_messages_like_the_infolog(self):
        r = self.client.get(self.url)
        html = r.content.decode()
        assert "<html" in html
        assert f"Infolog for Job Bank import ({self.job.pk})" in html
        assert "Infolog for Task Fetch statements (fetch)" in html
        assert "Infolog for Task Post statements (post)" in html
        assert html.index("Fetch statements (fetch)") < html.index("Log line 1 of 4")
        assert "log-line log-error" in html
        assert "DemoFailure: No bank" in html

    def test_it_returns_the_infolog_fragment_to_htmx_and_stops_polling_a_finished_run(self):
        r = self.client.get(self.url, headers=HTMX)
        assert r.status_code == 286
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="infolog"' in html

    def test_it_polls_while_the_run_executes(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        run = BatchJobRun.objects.get(job=job)
        r = self.client.get(f"/jobs/{job.pk}/history/{run.pk}/log/", headers=HTMX)
        assert r.status_code == 200
        assert 'hx-trigger="every 2s"' in r.content.decode()
        assert "No task has started in this run yet." in r.content.decode()

    def test_it_filters_by_level(self):
        html = self.client.get(self.url + "?level=error").content.decode()
        assert "Log line 1 of 4" not in html
        assert "DemoFailure: No bank" in html

    def test_it_shows_every_line_of_one_attempt_a_page_at_a_time(self):
        attempt = BatchTaskRun.objects.get(task__key="fetch", job_run=self.job_run)
        with mock.patch.object(history_views, "LOG_LINES_PER_ATTEMPT", 3):
            html = self.client.get(self.url).content.decode()
            assert "Show every message of this attempt" in html
            html = self.client.get(self.url + f"?task_run={attempt.pk}&page=2").content.decode()
        assert "Log line 4 of 4" in html
        assert "Log line 3 of 4" not in html
        assert "Infolog for Task Post statements" not in html

    def test_it_refuses_an_attempt_of_another_run(self):
        assert self.client.get(self.url + "?task_run=999999").status_code == 404

    def test_it_downloads_the_whole_log_as_text(self):
        r = self.client.get(self.url + "?format=text")
        assert r["Content-Type"].startswith("text/plain")
        text = b"".join(r.streaming_content).decode()  # type: ignore[attr-defined]
        assert f"Infolog for Job Bank import ({self.job.pk})" in text
        assert "Infolog for Task Fetch statements (fetch), attempt 1" in text
        assert "Error   DemoFailure: No bank" in text
        assert BatchLogEntry.objects.filter(task_run__job_run=self.job_run).count() == 5

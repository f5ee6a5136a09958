"""Issue 13, item 4: the history and the Log load the start of a big error and traceback, the
Log's view of one attempt all of it, and the Log export streams without either."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from batchadmin.jobs.models import BatchJob, BatchTaskRun
from tests.base import BaseTestCase, run, start

TAIL = "END-OF-THE-BIG-ERROR"


@override_settings(BATCH_ERROR_MAX_CHARS=0, BATCH_TRACEBACK_MAX_CHARS=0)  # no cut: see it all
class BigErrorPagesTest(BaseTestCase):
    job: BatchJob
    attempt: BatchTaskRun

    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job()
        task = self.make_task(
            self.job, "T1", process="demo.garbage", parameters={"lines": 2, "error_chars": 100}
        )
        start(self.job)
        assert run(task)
        self.attempt = BatchTaskRun.objects.get(task=task)
        # A big error, as one stored before the caps (or with them set high).
        big = "DemoFailure: " + "x" * 300_000 + TAIL
        BatchTaskRun.objects.filter(pk=self.attempt.pk).update(
            error_message=big, traceback="Traceback (most recent call last):\n" + big
        )
        self.client.force_login(self.alice)
        self.run_pk = self.attempt.job_run_id

    def test_the_history_shows_the_start_and_links_to_the_log(self) -> None:
        r = self.client.get(f"/jobs/{self.job.pk}/history/")
        assert r.status_code == 200
        html = r.content.decode()
        assert "DemoFailure: xxx" in html and TAIL not in html
        assert len(html) < 100_000
        assert f"?task_run={self.attempt.pk}" in html

    def test_the_log_lists_starts_and_one_attempt_shows_everything(self) -> None:
        url = f"/jobs/{self.job.pk}/history/{self.run_pk}/log/"
        html = self.client.get(url).content.decode()
        assert TAIL not in html and len(html) < 100_000
        html = self.client.get(f"{url}?task_run={self.attempt.pk}").content.decode()
        assert TAIL in html

    def test_the_log_export_streams_without_errors_or_tracebacks(self) -> None:
        url = f"/jobs/{self.job.pk}/history/{self.run_pk}/log/?format=text"
        with CaptureQueriesContext(connection) as queries:
            r: Any = self.client.get(url)
            assert r.streaming  # StreamingHttpResponse: nothing built in memory
            body = b"".join(r.streaming_content).decode()
        assert "Line 1: a NUL" in body and TAIL not in body
        selects = [q["sql"] for q in queries if "jobs_batchlogentry" in q["sql"]]
        assert selects and not any('"traceback"' in q or '"error_message"' in q for q in selects)

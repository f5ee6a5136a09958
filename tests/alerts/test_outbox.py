from __future__ import annotations

import time

from django.conf import settings
from django.test import SimpleTestCase

from batchadmin.alerts import outbox
from batchadmin.jobs.models import BatchJobRun, BatchTaskRun
from tests.base import BaseTestCase, drain, start


class FailingTasksTestCase(BaseTestCase):
    def test_it_takes_the_last_attempts_error_in_two_queries_however_many_failed(self):
        job = self.make_job()
        for n in range(1, 4):
            self.make_task(
                job,
                f"T{n}",
                process="demo.fail",
                max_retries=1,
                parameters={"message": f"attempt failed {n}"},
            )
        start(job)
        drain(job)
        time.sleep(0.3)  # past the retry backoff (0.1 s in the test settings)
        drain(job)
        run = BatchJobRun.objects.get(job=job)
        # The second attempt's error is the one that counts.
        BatchTaskRun.objects.filter(job_run=run, task__key="T2", attempt=2).update(
            error_message="\n  Ledger 2 is on hold\nTraceback"
        )
        with self.assertNumQueries(2):
            shown, total = outbox.failing_tasks(job.pk, run.pk)
        assert total == 3
        assert [t["key"] for t in shown] == ["T1", "T2", "T3"]
        assert shown[1]["error"] == "Ledger 2 is on hold"
        assert shown[0]["error"].endswith("attempt failed 1")


class ServiceQueueTestCase(SimpleTestCase):
    def test_it_is_a_queue_every_batch_server_consumes(self):
        assert outbox.ALERT_QUEUE in settings.BATCH_SERVICE_QUEUES

"""A database restart is weather: the process context and the tick ride it out."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import override_settings

from batchadmin.engine import runner, tick, transitions
from batchadmin.jobs.models import BatchLogEntry, BatchTask
from batchadmin.jobs.models import BatchStatus as S
from batchadmin.lib import db
from tests.base import BaseTestCase

BLIP = OperationalError("terminating connection due to administrator command")


class ProcessContextBlipTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        job = self.make_job()
        self.task = self.make_task(job, "T1")
        transitions.start_job(job_id=job.pk)
        task_run = transitions.claim_task(task_id=self.task.pk, server_id=None, hostname="h@x")
        assert task_run is not None
        self.ctx = runner.ProcessContext(task_run)
        # Closing the connection would end the test's transaction.
        self.close = self.enterContext(mock.patch.object(db, "connection"))

    def test_a_cancel_check_during_a_blip_is_not_a_cancel_and_asks_again(self):
        values = mock.patch.object(BatchTask.objects, "values_list", side_effect=BLIP)
        with values, self.assertLogs("batchadmin.engine.runner", "WARNING") as logs:
            assert self.ctx.cancel_requested() is False
        assert "could not check for a cancel" in logs.output[0]
        self.close.close.assert_called_once()
        # The next check, with the database back, sees the real state.
        transitions.cancel_job(job_id=self.task.job_id, by_id=None)
        self.ctx._last_cancel_check = 0.0
        assert self.ctx.cancel_requested() is True

    def test_log_lines_survive_a_blip_and_go_out_with_the_next_flush(self):
        self.ctx.info("first line")
        with (
            mock.patch.object(BatchLogEntry.objects, "bulk_create", side_effect=BLIP),
            self.assertLogs("batchadmin.engine.runner", "WARNING"),
        ):
            self.ctx.flush()
        assert len(self.ctx.take_pending()) == 1

    def test_progress_during_a_blip_is_skipped(self):
        with (
            mock.patch.object(BatchTask.objects, "filter", side_effect=BLIP),
            self.assertLogs("batchadmin.engine.runner", "WARNING"),
        ):
            self.ctx.progress(50)  # does not raise


@override_settings(BATCH_LEASE_SECONDS=30)
class TickAfterAnOutageTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.object(tick, "_lease_grace_until", 0.0))

    def test_a_tick_that_lost_the_database_spares_leases_for_one_lease_period(self):
        job = self.make_job()
        task = self.make_task(job, "T1")
        transitions.start_job(job_id=job.pk)
        transitions.claim_task(task_id=task.pk, server_id=None, hostname="h@x")
        lease = BatchTask.objects.get(pk=task.pk).lease_expires_at
        assert lease is not None
        late = lease + dt.timedelta(seconds=1)
        with (
            mock.patch.object(tick, "_tick", side_effect=BLIP),
            pytest.raises(OperationalError),
        ):
            tick.tick(late)
        # The workers could not renew either: their leases are not failed yet...
        assert tick.handle_expired_leases(late) == 0
        assert BatchTask.objects.get(pk=task.pk).status == S.EXECUTING
        # ...but a lease period later a server that really died is.
        with mock.patch("batchadmin.engine.tick.time.monotonic", return_value=10**9):
            assert tick.handle_expired_leases(late) == 1

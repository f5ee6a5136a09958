"""The tick never waits on a row another process holds (issue 13, item 5): a worker frozen in
its finish transaction holds its job's row lock, and the tick goes on without that row."""

from __future__ import annotations

import datetime as dt
import threading
import time
import unittest
from unittest import mock

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import TransactionTestCase, override_settings
from django.utils.timezone import now

from batchadmin.engine import priority, tick
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, Company
from batchadmin.servers.models import BatchGroup

S = BatchStatus


@unittest.skipUnless(connection.vendor == "postgresql", "row locks need PostgreSQL")
@override_settings(BATCH_TICK_LOCK_TIMEOUT_SECONDS=0.2)
class FrozenFinishTestCase(TransactionTestCase):
    def setUp(self) -> None:
        priority.clear_cache()
        self.addCleanup(priority.clear_cache)
        self.enterContext(mock.patch("batchadmin.engine.dispatch.send", return_value=0))
        user = User.objects.create_user("alice")
        company = Company.objects.create(code="USMF", name="USMF")
        group = BatchGroup.objects.create(code="Reporting")

        def job(description: str, **fields: object) -> BatchJob:
            return BatchJob.objects.create(
                description=description, company=company, created_by=user, **fields
            )

        # A running job whose only attempt lost its lease: its worker is frozen, mid-finish.
        self.frozen = job("frozen", status=S.EXECUTING, scheduled_start=now())
        self.task = BatchTask.objects.create(
            job=self.frozen,
            key="F",
            process="demo.noop",
            group=group,
            status=S.EXECUTING,
            attempt=1,
            started_at=now() - dt.timedelta(minutes=1),
            lease_expires_at=now() - dt.timedelta(seconds=10),
        )
        # ... and a job that falls due meanwhile.
        self.due = job("due", status=S.WAITING, scheduled_start=now() - dt.timedelta(seconds=1))
        BatchTask.objects.create(job=self.due, key="D", process="demo.noop", group=group)

    def hold_job_row(self) -> tuple[threading.Event, threading.Thread]:
        """Lock the frozen job's row from another connection until the event is set."""
        locked, release = threading.Event(), threading.Event()

        def frozen_worker() -> None:
            try:
                with transaction.atomic():
                    BatchJob.objects.select_for_update().get(pk=self.frozen.pk)
                    locked.set()
                    release.wait(timeout=30)
            finally:
                connection.close()

        thread = threading.Thread(target=frozen_worker)
        thread.start()
        self.addCleanup(thread.join)
        self.addCleanup(release.set)
        assert locked.wait(timeout=10)
        return release, thread

    def test_the_due_job_starts_and_the_locked_row_waits_for_the_next_tick(self):
        release, holder = self.hold_job_row()
        with self.assertLogs("batchadmin.engine.tick", "WARNING") as logs:
            counts = tick.tick()
        assert counts["started"] == 1
        assert counts["leases_expired"] == 0
        assert BatchJob.objects.get(pk=self.due.pk).status == S.EXECUTING
        assert BatchTask.objects.get(pk=self.task.pk).status == S.EXECUTING
        assert "locked by another process; next tick" in logs.output[0]

        # The lock is gone (PostgreSQL ended the frozen session): the next tick fails the attempt.
        release.set()
        holder.join(timeout=10)
        assert tick.tick()["leases_expired"] == 1
        assert BatchTask.objects.get(pk=self.task.pk).status == S.ERROR

    def test_a_locked_row_is_not_a_lost_database(self):
        self.hold_job_row()
        with self.assertLogs("batchadmin.engine.tick", "WARNING"):
            tick.tick()
        assert tick._lease_grace_until < time.monotonic()
        # The tick leaves the connection as it found it: no lock timeout for others.
        with connection.cursor() as cursor:
            cursor.execute("SHOW lock_timeout")
            assert cursor.fetchone() == ("0",)

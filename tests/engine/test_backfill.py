"""Backfill (transitions.backfill_job): one run per missed occurrence, one after the other."""

from __future__ import annotations

import datetime as dt
from typing import Any

import time_machine
from django.test import override_settings

from batchadmin.audit.models import AuditEntry
from batchadmin.engine import runner, tick, transitions
from batchadmin.engine.transitions import Refused
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchRecurrence, BatchStatus, QueuedRun
from tests.base import BaseTestCase, drain

S = BatchStatus
NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)
D = dt.date


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class BackfillTestCase(BaseTestCase):
    def make_daily(self) -> BatchJob:
        job = self.make_job(scheduled_start=dt.datetime(2025, 3, 11, 2, 0, tzinfo=dt.UTC))
        BatchRecurrence.objects.create(
            job=job,
            start_date=D(2025, 3, 1),
            start_time=dt.time(2, 0),
            time_zone="UTC",
            unit=BatchRecurrence.Unit.DAYS,
            every=1,
        )
        self.make_task(job, "T1")
        return job

    def backfill(
        self, job: BatchJob, first: dt.date, last: dt.date, **kw: Any
    ) -> list[dt.datetime]:
        return transitions.backfill_job(
            job_id=job.pk, first_day=first, last_day=last, by_id=self.alice.pk, at=NOW, **kw
        )

    def test_it_previews_without_queuing(self):
        job = self.make_daily()
        times = self.backfill(job, D(2025, 3, 5), D(2025, 3, 7), dry_run=True)
        assert [t.day for t in times] == [5, 6, 7]
        assert not QueuedRun.objects.exists()
        assert not AuditEntry.objects.exists()

    def test_it_runs_each_missed_occurrence_in_order(self):
        job = self.make_daily()
        # The run of the 6th happened: it is not missed.
        BatchJobRun.objects.create(
            job=job,
            status=S.ENDED,
            scheduled_start=dt.datetime(2025, 3, 6, 2, 0, tzinfo=dt.UTC),
            occurrence=dt.datetime(2025, 3, 6, 2, 0, tzinfo=dt.UTC),
        )
        with time_machine.travel(NOW, tick=False):
            times = self.backfill(job, D(2025, 3, 5), D(2025, 3, 8))
            assert [t.day for t in times] == [5, 7, 8]
            # Asking again queues nothing more: they are pending.
            assert self.backfill(job, D(2025, 3, 5), D(2025, 3, 8), dry_run=True) == []
            seen = []
            for _ in range(3):
                assert tick.handle_queued_runs(NOW) == 1
                assert tick.handle_queued_runs(NOW) == 0  # one at a time
                job.refresh_from_db()
                run = BatchJobRun.objects.get(
                    job=job, trigger=BatchJobRun.Trigger.BACKFILL, ended_at=None
                )
                assert run.trigger == BatchJobRun.Trigger.BACKFILL
                seen.append(run.occurrence)
                drain(job)
                assert job.status == S.WAITING  # back to its schedule
                assert job.scheduled_start == dt.datetime(2025, 3, 11, 2, 0, tzinfo=dt.UTC)
        assert seen == times
        entry = AuditEntry.objects.get(action="backfill")
        assert entry.user == self.alice
        assert entry.reason == "Backfill from 2025-03-05 to 2025-03-08"

    def test_it_backfills_only_the_last(self):
        job = self.make_daily()
        times = self.backfill(job, D(2025, 3, 1), D(2025, 3, 10), only_last=True)
        assert times == [dt.datetime(2025, 3, 10, 2, 0, tzinfo=dt.UTC)]

    def test_a_process_reads_the_occurrence_from_its_context(self):
        job = self.make_daily()
        with time_machine.travel(NOW, tick=False):
            self.backfill(job, D(2025, 3, 4), D(2025, 3, 4))
            assert transitions.start_queued_run(job_id=job.pk)
        task = job.tasks.get()
        claim = transitions.claim_task(task_id=task.pk, server_id=None, hostname="h")
        assert claim is not None
        assert claim.job_run_id == BatchJobRun.objects.get(job=job).pk
        ctx = runner.ProcessContext(claim)
        assert ctx.occurrence == dt.datetime(2025, 3, 4, 2, 0, tzinfo=dt.UTC)

    def test_it_refuses_with_a_clear_message(self):
        job = self.make_daily()
        with self.assertRaisesMessage(Refused, "The range ends (2025-03-01) before it starts"):
            self.backfill(job, D(2025, 3, 5), D(2025, 3, 1))
        BatchRecurrence.objects.filter(job=job).update(unit=BatchRecurrence.Unit.MINUTES)
        with self.assertRaisesMessage(
            Refused, "More than 10,000 occurrences from 2025-03-01 to 2025-03-09: choose a shorter"
        ):
            self.backfill(job, D(2025, 3, 1), D(2025, 3, 9), only_last=True)
        one_off = self.make_job()
        with self.assertRaisesMessage(Refused, f"Job {one_off.pk} has no recurrence"):
            self.backfill(one_off, D(2025, 3, 5), D(2025, 3, 6))
        assert not QueuedRun.objects.exists()

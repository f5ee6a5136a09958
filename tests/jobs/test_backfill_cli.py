"""`batch backfill JOB_ID --from DATE --to DATE [--dry-run] [--last] --user U`."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
import time_machine
from django.core.management import CommandError, call_command

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchJob, BatchRecurrence, QueuedRun
from tests.base import BaseTestCase

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)


def batch(*args: Any) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("batch", *[str(a) for a in args], stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def refused(*args: Any) -> str:
    with pytest.raises(CommandError) as excinfo:
        batch(*args)
    return str(excinfo.value)


@time_machine.travel(NOW, tick=False)
class BackfillCommandTestCase(BaseTestCase):
    def make_daily(self) -> BatchJob:
        job = self.make_job(scheduled_start=dt.datetime(2025, 3, 11, 7, 0, tzinfo=dt.UTC))
        BatchRecurrence.objects.create(
            job=job,
            start_date=dt.date(2025, 3, 1),
            start_time=dt.time(8, 0),
            time_zone="Europe/Paris",
            unit=BatchRecurrence.Unit.DAYS,
            every=1,
        )
        self.make_task(job, "T1")
        return job

    def test_it_prints_the_occurrences_of_a_dry_run(self):
        job = self.make_daily()
        out, err = batch(
            "backfill", job.pk, "--from", "2025-03-05", "--to", "2025-03-07", "--dry-run",
            "--user", "alice",
        )  # fmt: skip
        assert out == (
            "2025-03-05T08:00:00+01:00\n2025-03-06T08:00:00+01:00\n2025-03-07T08:00:00+01:00\n"
        )
        assert err == "Dry run: the backfill would start 3 run(s).\n"
        assert not QueuedRun.objects.exists()

    def test_it_queues_the_runs_and_audits(self):
        job = self.make_daily()
        out, _ = batch(
            "backfill", job.pk, "--from", "2025-03-05", "--to", "2025-03-07", "--last",
            "--user", "alice",
        )  # fmt: skip
        assert out == "2025-03-07T08:00:00+01:00\n"
        assert QueuedRun.objects.get().occurrence == dt.datetime(2025, 3, 7, 7, tzinfo=dt.UTC)
        assert AuditEntry.objects.get(action="backfill").via == "cli"

    def test_it_checks_the_role_and_the_input(self):
        job = self.make_daily()
        args = ["backfill", job.pk, "--from", "2025-03-05", "--to", "2025-03-07"]
        assert refused(*args, "--user", "dave") == (
            f"User dave may not see batch job {job.pk} (role: Batch user)."
        )
        assert refused(*args, "--user", "bob") == (
            f"Only a Batch job manager can backfill job {job.pk} (role: Viewer)."
        )
        assert refused("backfill", job.pk, "--from", "5 March", "--to", "2025-03-07",
                       "--user", "alice") == (
            "--from '5 March' is not a date: write it as YYYY-MM-DD."
        )  # fmt: skip
        assert refused("backfill", 999999, "--from", "2025-03-05", "--to", "2025-03-07",
                       "--user", "alice") == "There is no batch job 999999."  # fmt: skip
        assert not QueuedRun.objects.exists()

"""lib/fastload.py builds the same instances the ORM does, from hand-written SQL."""

from __future__ import annotations

import datetime as dt
import unittest

from django.db import connection
from django.forms.models import model_to_dict

from batchadmin.engine import sql, transitions
from batchadmin.jobs.models import BatchJob, BatchRecurrence
from batchadmin.lib import fastload
from tests.base import BaseTestCase


def values(obj: object) -> dict[str, object]:
    return {f.attname: getattr(obj, f.attname) for f in type(obj)._meta.concrete_fields}  # type: ignore[attr-defined]


class FastLoadTestCase(BaseTestCase):
    def test_a_row_becomes_the_instance_the_orm_reads(self):
        job = self.make_job(
            description="Quarter close",
            run_as=self.alice,
            scheduled_start=dt.datetime(2026, 3, 31, 22, 0, tzinfo=dt.UTC),
        )
        BatchRecurrence.objects.create(
            job=job,
            start_date=dt.date(2026, 3, 31),
            start_time=dt.time(22, 0),
            time_zone="Europe/Oslo",
            unit=BatchRecurrence.Unit.MONTHS,
            every=3,
        )
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT {fastload.columns(BatchJob, 'j')} FROM {BatchJob._meta.db_table} j "
                "WHERE j.id = %s",
                [job.pk],
            )
            row = cursor.fetchone()
        loaded = fastload.instance(BatchJob, row)
        assert values(loaded) == values(BatchJob.objects.get(pk=job.pk))
        assert model_to_dict(loaded) == model_to_dict(BatchJob.objects.get(pk=job.pk))
        assert not loaded._state.adding and loaded._state.db == "default"

    @unittest.skipUnless(connection.vendor == "postgresql", "the start's read is PostgreSQL's")
    def test_the_start_reads_the_job_and_its_recurrence_in_one_query(self):
        job = self.make_job()
        recurring = BatchRecurrence.objects.create(
            job=job,
            start_date=dt.date(2026, 1, 1),
            start_time=dt.time(2, 0),
            time_zone="UTC",
            unit=BatchRecurrence.Unit.DAYS,
            every=1,
        )
        plain = self.make_job()
        with self.assertNumQueries(2):
            loaded = transitions._job_for_start(job.pk)
            other = transitions._job_for_start(plain.pk)
        assert loaded is not None and other is not None
        with self.assertNumQueries(0):  # as select_related leaves them
            assert values(loaded.get_recurrence()) == values(recurring)
            assert other.get_recurrence() is None
        assert values(loaded) == values(BatchJob.objects.get(pk=job.pk))
        assert transitions._job_for_start(0) is None
        assert sql.JOB_FOR_START.count("%s") == 1

"""Jobs that follow jobs in import and export: "key" and "trigger" (jobs/io.py)."""

from __future__ import annotations

from typing import Any

import pytest

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs import io
from batchadmin.jobs.models import BatchJob
from tests.base import BaseTestCase

TASKS = [{"key": "T1", "description": "Step", "process": "demo.noop"}]


def job(description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "tasks": TASKS, **extra}


class TriggerImportTestCase(BaseTestCase):
    def failure(self, data: Any) -> str:
        with pytest.raises(io.ImportFailure) as excinfo:
            io.import_data(data, user=self.alice)
        assert not BatchJob.objects.filter(description__in=["A", "B", "C"]).exists()
        return str(excinfo.value)

    def test_it_links_jobs_by_key_and_by_id(self):
        existing = self.make_job(description="Existing")
        a, b, c = io.import_data(
            {
                "jobs": [
                    job("A", key="a", trigger={"after": existing.pk}),
                    job("B", key="b", trigger={"after": "a", "status": "error"}),
                    job("C", trigger={"after": "b", "status": "ended_or_error"}),
                ]
            },
            user=self.alice,
        )
        got = {
            j.description: (j.after_job_id, j.after_status)
            for j in BatchJob.objects.filter(pk__in=[a.pk, b.pk, c.pk])
        }
        assert got == {
            "A": (existing.pk, "ended"),
            "B": (a.pk, "error"),
            "C": (b.pk, "ended_or_error"),
        }
        assert AuditEntry.objects.filter(action="trigger_edit").count() == 3

    def test_it_round_trips_through_export(self):
        parent = self.make_job(description="Parent")
        (b,) = io.import_data(job("B", trigger={"after": parent.pk, "status": "error"}))
        exported = io.export_job(b)
        assert exported["trigger"] == {"after": parent.pk, "status": "error"}
        (again,) = io.import_data(exported)
        assert (again.after_job_id, again.after_status) == (parent.pk, "error")
        assert io.export_job(again) == exported

    def test_it_refuses_a_loop_naming_it(self):
        message = self.failure(
            {
                "jobs": [
                    job("A", key="a", trigger={"after": "c"}),
                    job("B", key="b", trigger={"after": "a"}),
                    job("C", key="c", trigger={"after": "b"}),
                ]
            }
        )
        assert message == (
            "The triggers of jobs 'a', 'c', 'b' loop (a → c → b → a): a job can't run after itself."
        )

    def test_it_names_the_culprit(self):
        assert self.failure({"jobs": [job("A", key="a"), job("B", key="a")]}) == (
            "job 2 ('B'): key 'a' is in the file twice."
        )
        assert self.failure({"jobs": [job("A", key="a"), job("B", trigger={"after": "x"})]}) == (
            "job 2 ('B'), trigger: no job in the file has the key 'x' (keys: a)."
        )
        assert self.failure(job("B", trigger={"after": 999999})) == (
            "job 1 ('B'), trigger: there is no batch job 999999."
        )
        assert self.failure(job("A", key="a", trigger={"after": "a"})) == (
            "job 1 ('A'), trigger: the job can't be triggered by itself."
        )
        assert self.failure(job("A", trigger={"after": 1, "status": "done"})) == (
            "job 1 ('A'), trigger: status 'done' is not one of ended, error, ended_or_error."
        )
        assert self.failure(job("A", trigger={"before": 1})) == (
            "job 1 ('A'), trigger: unknown key(s) 'before'."
        )

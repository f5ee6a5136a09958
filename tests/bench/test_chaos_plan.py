"""The chaos soak's plan (bench/chaos_plan.py) and its task body (bench/chaos_processes.py)."""

from __future__ import annotations

import datetime as dt
import itertools
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

from django.test import SimpleTestCase

from batchadmin.jobs import io
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTaskRun
from batchadmin.processes import registry
from bench import chaos_check, chaos_plan
from tests.base import BaseTestCase, drain, start

START = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def register_chaos_process() -> None:
    """chaos.work in the registry (patched by the caller), as BATCH_PROCESS_MODULES loads it."""
    from bench import chaos_processes

    registry.register(
        chaos_processes.NAME, label="chaos", description="", form=chaos_processes.WorkForm
    )(chaos_processes.work)


class PlanTestCase(SimpleTestCase):
    def test_it_is_the_same_plan_for_the_same_seed(self):
        one = chaos_plan.make_plan(seed=7, minutes=10, hosts=3, lease=5)
        two = chaos_plan.make_plan(seed=7, minutes=10, hosts=3, lease=5)
        other = chaos_plan.make_plan(seed=8, minutes=10, hosts=3, lease=5)
        assert one.jobs == two.jobs != other.jobs
        faults = list(itertools.islice(one.faults(), 100))
        assert faults == list(itertools.islice(two.faults(), 100))
        assert faults != list(itertools.islice(other.faults(), 100))

    def test_it_brings_every_job_shape_and_fan_outs_of_20_to_50(self):
        plan = chaos_plan.make_plan(seed=1, minutes=30, hosts=3, lease=5)
        assert {j.kind for j in plan.jobs} == set(chaos_plan.JOB_KINDS)
        widths = {len(j.tasks) - 3 for j in plan.jobs if j.kind == "fanout"}
        assert min(widths) >= 20 and max(widths) <= 50
        assert all(5 <= j.due <= 30 * 60 - 15 for j in plan.jobs)
        assert all(j.cancel_after for j in plan.jobs if j.kind == "cancel")

    def test_network_faults_come_only_with_hosts(self):
        one_host = chaos_plan.make_plan(seed=1, minutes=1, hosts=1, lease=5)
        three = chaos_plan.make_plan(seed=1, minutes=1, hosts=3, lease=5)
        kinds_one = {f.kind for f in itertools.islice(one_host.faults(), 500)}
        kinds_three = {f.kind for f in itertools.islice(three.faults(), 500)}
        assert kinds_one == set(chaos_plan.FAULTS) - chaos_plan.NETWORK_FAULTS
        assert kinds_three == set(chaos_plan.FAULTS)

    def test_faults_meant_to_outlast_the_lease_do(self):
        plan = chaos_plan.make_plan(seed=3, minutes=1, hosts=3, lease=5)
        long = ("pg-outage", "host-cut", "host-cut-in-tx", "worker-freeze-in-tx")
        for fault in itertools.islice(plan.faults(), 300):
            if fault.kind in long:
                assert fault.seconds > 5, fault


class PlanImportTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.dict(registry._REGISTRY))
        register_chaos_process()

    def test_every_planned_job_imports(self):
        plan = chaos_plan.make_plan(seed=5, minutes=20, hosts=3, lease=5)
        data = {
            "groups": [
                {"code": chaos_plan.GROUP_ALL, "servers": ["c1", "c2", "c3"]},
                {"code": chaos_plan.GROUP_SOME, "servers": ["c2", "c3"]},
            ],
            "jobs": [j.to_import(5, START) for j in plan.jobs],
        }
        jobs = io.import_data(data)
        assert len(jobs) == len(plan.jobs)
        recurring = [j for j in plan.jobs if j.runs > 1]
        imported = BatchJob.objects.filter(pk__in=[j.pk for j in jobs])
        assert imported.filter(recurrence__isnull=False).count() == len(recurring)
        first = jobs[0]
        assert first.description == f"chaos 5#1 {plan.jobs[0].kind}"
        assert first.scheduled_start == START + dt.timedelta(seconds=plan.jobs[0].due)


class BodyTestCase(BaseTestCase):
    """The body runs in the engine's runner and its marks read back as chaos_check reads them."""

    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.dict(registry._REGISTRY))
        register_chaos_process()
        folder = Path(self.enterContext(tempfile.TemporaryDirectory()))
        self.marks = folder / "marks.txt"
        self.enterContext(mock.patch.dict(os.environ, {"CHAOS_MARK_FILE": str(self.marks)}))

    def test_a_flaky_task_marks_its_failed_attempt_and_its_completed_retry(self):
        job = self.make_job()
        task = self.make_task(
            job,
            "F",
            process=chaos_plan.PROCESS,
            parameters={"seconds": 0, "fail_attempts": 1, "poll_cancel": False},
            max_retries=1,
        )
        start(job)
        with mock.patch("batchadmin.engine.transitions.backoff", return_value=dt.timedelta(0)):
            drain(job)
        assert job.status == BatchStatus.ENDED
        runs = list(BatchTaskRun.objects.filter(task=task).order_by("attempt"))
        marks, torn = chaos_check.parse_marks(self.marks.read_text().splitlines())
        assert torn == 0
        assert [(m.event, m.attempt, m.run_id, m.job_run_id, m.task_id) for m in marks] == [
            ("start", 1, runs[0].pk, job.current_run_id, task.pk),
            ("fail", 1, runs[0].pk, job.current_run_id, task.pk),
            ("start", 2, runs[1].pk, job.current_run_id, task.pk),
            ("done", 2, runs[1].pk, job.current_run_id, task.pk),
        ]
        assert [r.status for r in runs] == ["error", "ended"]

    def test_a_mark_line_outside_a_worker_names_no_host(self):
        from bench import chaos_processes

        ctx: Any = SimpleNamespace(task_id=3, attempt=1)
        [mark], torn = chaos_check.parse_marks([chaos_processes.mark_line("start", ctx)])
        assert (mark.event, mark.task_id, mark.hostname, mark.run_id, torn) == (
            "start",
            3,
            "-",
            0,
            0,
        )

"""The D365 batch walkthrough (batch-processing-overview), run in-process without a worker.

T1 ──ended or error──> T2 ──ended──> T3 ──ended──┐
                        │             └──error──> T6
                        ├──ended──> T4 ──ended──┴──> T7 (All: T3 and T4 Ended)
                        └──error──> T5
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import time_machine
from django.test import override_settings
from django.utils.timezone import now

from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, BatchTask, BatchTaskRun
from tests.base import HOSTNAME, BaseTestCase, drain, run, start, statuses

S = BatchStatus
FAIL = {"process": "demo.fail", "parameters": {"message": "T2 went wrong"}}


class WalkthroughTestCase(BaseTestCase):
    def make_walkthrough(
        self, *, overrides: dict[str, dict[str, Any]] | None = None
    ) -> tuple[BatchJob, dict[str, BatchTask]]:
        overrides = overrides or {}
        job = self.make_job(description="D365 walkthrough")
        tasks = {
            key: self.make_task(job, key, position=n, **overrides.get(key, {}))
            for n, key in enumerate(["T1", "T2", "T3", "T4", "T5", "T6", "T7"], 1)
        }
        self.add_condition(tasks["T2"], tasks["T1"], "ended_or_error")
        self.add_condition(tasks["T3"], tasks["T2"], "ended")
        self.add_condition(tasks["T4"], tasks["T2"], "ended")
        self.add_condition(tasks["T5"], tasks["T2"], "error")
        self.add_condition(tasks["T6"], tasks["T3"], "error")
        self.add_condition(tasks["T7"], tasks["T3"], "ended")
        self.add_condition(tasks["T7"], tasks["T4"], "ended")
        return job, tasks

    def test_it_runs_the_success_branch_when_every_task_succeeds(self):
        job, _ = self.make_walkthrough()
        start(job)
        assert statuses(job)["T1"] == S.READY
        drain(job)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ENDED,
            "T3": S.ENDED,
            "T4": S.ENDED,
            "T5": S.NOT_RUN,
            "T6": S.NOT_RUN,
            "T7": S.ENDED,
        }
        assert job.status == S.ENDED
        assert BatchJobRun.objects.get(job=job).status == S.ENDED

    def test_it_records_one_history_row_per_task(self):
        job, _ = self.make_walkthrough()
        start(job)
        drain(job)
        history = {
            r.task.key: (r.attempt, r.status, r.hostname)
            for r in BatchTaskRun.objects.filter(job_run__job=job).select_related("task")
        }
        assert history == {
            "T1": (1, S.ENDED, HOSTNAME),
            "T2": (1, S.ENDED, HOSTNAME),
            "T3": (1, S.ENDED, HOSTNAME),
            "T4": (1, S.ENDED, HOSTNAME),
            "T5": (0, S.NOT_RUN, ""),
            "T6": (0, S.NOT_RUN, ""),
            "T7": (1, S.ENDED, HOSTNAME),
        }
        assert set(job.tasks.exclude(server=None).values_list("key", flat=True)) == {
            "T1",
            "T2",
            "T3",
            "T4",
            "T7",
        }

    def test_it_runs_the_error_branch_when_t2_fails(self):
        job, _ = self.make_walkthrough(overrides={"T2": FAIL})
        start(job)
        drain(job)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ERROR,
            "T3": S.NOT_RUN,
            "T4": S.NOT_RUN,
            "T5": S.ENDED,
            "T6": S.NOT_RUN,  # its parent T3 didn't run: Didn't run propagates
            "T7": S.NOT_RUN,
        }
        assert job.status == S.ERROR
        t2_run = BatchTaskRun.objects.get(task__job=job, task__key="T2")
        assert t2_run.error_message == "DemoFailure: T2 went wrong"

    def test_it_ends_the_job_when_t2_failure_is_ignored(self):
        job, _ = self.make_walkthrough(overrides={"T2": {**FAIL, "ignore_failure": True}})
        start(job)
        drain(job)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ERROR,
            "T3": S.NOT_RUN,
            "T4": S.NOT_RUN,
            "T5": S.ENDED,
            "T6": S.NOT_RUN,
            "T7": S.NOT_RUN,
        }
        assert job.status == S.ENDED

    def test_it_runs_t2_after_t1_fails(self):
        job, _ = self.make_walkthrough(overrides={"T1": FAIL})
        start(job)
        drain(job)
        assert statuses(job) == {
            "T1": S.ERROR,
            "T2": S.ENDED,  # "Ended or error"
            "T3": S.ENDED,
            "T4": S.ENDED,
            "T5": S.NOT_RUN,
            "T6": S.NOT_RUN,
            "T7": S.ENDED,
        }
        assert job.status == S.ERROR  # T1's failure is not ignored

    def test_it_runs_the_t3_error_branch(self):
        job, _ = self.make_walkthrough(overrides={"T3": FAIL})
        start(job)
        drain(job)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ENDED,
            "T3": S.ERROR,
            "T4": S.ENDED,
            "T5": S.NOT_RUN,
            "T6": S.ENDED,
            "T7": S.NOT_RUN,  # All: T3 did not end
        }
        assert job.status == S.ERROR

    def test_it_runs_t7_with_condition_type_any_when_one_parent_ended(self):
        job, _ = self.make_walkthrough(overrides={"T3": FAIL, "T7": {"condition_type": "any"}})
        start(job)
        drain(job)
        assert statuses(job) == {
            "T1": S.ENDED,
            "T2": S.ENDED,
            "T3": S.ERROR,
            "T4": S.ENDED,
            "T5": S.NOT_RUN,
            "T6": S.ENDED,
            "T7": S.ENDED,  # Any: T4 Ended is enough
        }

    def test_it_skips_t7_with_condition_type_any_when_no_parent_can_end(self):
        job, _ = self.make_walkthrough(overrides={"T2": FAIL, "T7": {"condition_type": "any"}})
        start(job)
        drain(job)
        assert statuses(job)["T7"] == S.NOT_RUN
        assert job.status == S.ERROR

    def test_it_waits_for_the_second_parent_with_condition_type_all(self):
        job, tasks = self.make_walkthrough()
        start(job)
        for key in ["T1", "T2", "T3"]:
            assert run(tasks[key])
        assert statuses(job)["T4"] == S.READY
        assert statuses(job)["T7"] == S.WAITING  # T3 Ended, T4 not yet
        assert run(tasks["T4"])
        assert statuses(job)["T7"] == S.READY

    def test_it_does_not_run_a_task_whose_conditions_do_not_hold(self):
        job, tasks = self.make_walkthrough()
        start(job)
        assert not run(tasks["T2"])  # still waiting for T1: the claim loses, nothing runs
        assert not BatchTaskRun.objects.filter(task=tasks["T2"]).exists()

    @override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
    def test_it_retries_a_flaky_task_until_it_succeeds(self):
        flaky = {"process": "demo.flaky", "parameters": {"failures": 2}, "max_retries": 3}
        job, tasks = self.make_walkthrough(overrides={"T2": flaky})
        start(job)
        drain(job)
        assert job.status == S.ENDED
        tasks["T2"].refresh_from_db()
        assert (tasks["T2"].status, tasks["T2"].retries) == (S.ENDED, 2)
        assert list(tasks["T2"].runs.values_list("attempt", "status")) == [
            (1, S.ERROR),
            (2, S.ERROR),
            (3, S.ENDED),
        ]
        assert statuses(job)["T5"] == S.NOT_RUN  # the failed attempts were not T2's result

    @override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
    def test_it_fails_a_flaky_task_that_runs_out_of_retries(self):
        flaky = {"process": "demo.flaky", "parameters": {"failures": 2}, "max_retries": 1}
        job, tasks = self.make_walkthrough(overrides={"T2": flaky})
        start(job)
        drain(job)
        tasks["T2"].refresh_from_db()
        assert (tasks["T2"].status, tasks["T2"].retries) == (S.ERROR, 1)
        assert tasks["T2"].runs.count() == 2
        assert statuses(job)["T5"] == S.ENDED
        assert job.status == S.ERROR

    def test_it_waits_out_the_retry_backoff(self):
        flaky = {"process": "demo.flaky", "parameters": {"failures": 1}, "max_retries": 1}
        with time_machine.travel(now(), tick=False) as traveller:
            job, tasks = self.make_walkthrough(overrides={"T2": flaky})
            start(job)
            drain(job)
            # T2 failed once and waits for its backoff; nothing else can run meanwhile.
            assert job.status == S.EXECUTING
            assert statuses(job)["T2"] == S.READY
            tasks["T2"].refresh_from_db()
            ready_at = tasks["T2"].ready_at
            assert ready_at is not None
            assert ready_at > now()

            traveller.move_to(ready_at + dt.timedelta(milliseconds=1))
            drain(job)
        assert job.status == S.ENDED
        tasks["T2"].refresh_from_db()
        assert tasks["T2"].retries == 1

"""The chaos soak's verdict (bench/chaos_check.py) on hand-made rows and marks."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.test import SimpleTestCase

from bench import chaos_check
from bench.chaos_check import Condition, Job, JobRun, Mark, Tables, Task, TaskRun

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
DRAINED = T0 + dt.timedelta(minutes=10)
LOST = "Batch server lost: the task's lease expired without a heartbeat from its worker."


class Scenario:
    """One job (id 1, run 10) of tasks A (id 100) and B (id 101, after A ended), both Ended."""

    def __init__(self) -> None:
        self.job = Job(1, "chaos 7#1 chain", "ended", T0, 10, False)
        self.tasks = [
            Task(100, 1, "A", "ended", "all", False),
            Task(101, 1, "B", "ended", "all", False),
        ]
        self.conditions = [Condition(101, 100, "ended")]
        self.runs = [JobRun(10, 1, "ended", T0)]
        self.task_runs = [
            TaskRun(1000, 10, 100, 1, "ended", "", "c1@h1"),
            TaskRun(1001, 10, 101, 1, "ended", "", "c2@h2"),
        ]
        self.marks = [*self.body(1000, 100), *self.body(1001, 101, host="c2@h2")]
        self.starts = {1: 1}
        self.events: list[tuple[int | None, str]] = [(10, "ended")]
        self.canceled: set[int] = set()

    @staticmethod
    def body(
        run_id: int, task_id: int, *, attempt: int = 1, end: str = "done", host: str = "c1@h1"
    ) -> list[Mark]:
        return [
            Mark("start", task_id, run_id, 10, attempt, host, 42, 1.0),
            Mark(end, task_id, run_id, 10, attempt, host, 42, 2.0),
        ]

    def verdict(self, **overrides: Any) -> chaos_check.Verdict:
        tables = Tables(
            overrides.get("jobs", [self.job]),
            self.tasks,
            self.conditions,
            self.runs,
            self.task_runs,
            starts=self.starts,
            alert_events=self.events,
            cancel_requested=self.canceled,
        )
        return chaos_check.check(tables, self.marks, drained_at=DRAINED)


def findings(v: chaos_check.Verdict) -> dict[str, list[str]]:
    return {
        name: items
        for name, items in (
            ("lost", v.lost),
            ("doubled", v.doubled),
            ("stuck", v.stuck),
            ("contradictions", v.contradictions),
        )
        if items
    }


class CleanRunTestCase(SimpleTestCase):
    def test_it_finds_nothing_in_a_run_that_went_well(self):
        v = Scenario().verdict()
        assert findings(v) == {}
        assert (v.checked, v.bodies_completed, v.ok()) == (2, 2, True)

    def test_it_accepts_a_body_run_again_after_an_attempt_recorded_as_lost(self):
        s = Scenario()
        s.task_runs[0] = TaskRun(1000, 10, 100, 1, "error", LOST, "c1@h1")
        s.task_runs.append(TaskRun(1002, 10, 100, 2, "ended", "", "c3@h3"))
        s.marks += s.body(1002, 100, attempt=2, host="c3@h3")
        v = s.verdict()
        assert findings(v) == {}
        assert v.reran_after_lost == 1

    def test_it_accepts_a_flaky_task_that_ended_on_its_retry(self):
        s = Scenario()
        s.task_runs[0] = TaskRun(1000, 10, 100, 1, "error", "RuntimeError: chaos", "c1@h1")
        s.task_runs.append(TaskRun(1002, 10, 100, 2, "ended", "", "c1@h1"))
        s.marks[1] = Mark("fail", 100, 1000, 10, 1, "c1@h1", 42, 2.0)
        s.marks += s.body(1002, 100, attempt=2)
        assert findings(s.verdict()) == {}

    def test_it_accepts_a_task_that_did_not_run_by_its_conditions(self):
        s = Scenario()
        s.job = Job(1, "chaos 7#1 chain", "error", T0, 10, False)
        s.runs = [JobRun(10, 1, "error", T0)]
        s.tasks = [
            Task(100, 1, "A", "error", "all", False),
            Task(101, 1, "B", "not_run", "all", False),
        ]
        s.task_runs = [
            TaskRun(1000, 10, 100, 1, "error", "RuntimeError: chaos", "c1@h1"),
            TaskRun(1001, 10, 101, 0, "not_run", "", ""),
        ]
        s.marks = s.body(1000, 100, end="fail")
        s.events = [(10, "error")]
        assert findings(s.verdict()) == {}


class LostTestCase(SimpleTestCase):
    def test_it_counts_an_ended_task_whose_body_never_completed(self):
        s = Scenario()
        s.marks = [m for m in s.marks if not (m.task_id == 101 and m.event == "done")]
        assert findings(s.verdict()) == {
            "lost": [
                "job 1 (chaos 7#1 chain) run 10 task B (101): Ended (attempt 1 on c2@h2) but its"
                " body never completed"
            ]
        }

    def test_it_counts_a_task_that_did_not_run_although_its_conditions_held(self):
        s = Scenario()
        s.tasks[1] = Task(101, 1, "B", "not_run", "all", False)
        s.task_runs[1] = TaskRun(1001, 10, 101, 0, "not_run", "", "")
        s.marks = s.marks[:2]
        v = s.verdict()
        assert v.lost == [
            "job 1 (chaos 7#1 chain) run 10 task B (101): Didn't run although its conditions held"
        ]
        assert not v.ok()


class DoubledTestCase(SimpleTestCase):
    def test_it_counts_a_body_completed_again_after_an_ended_attempt(self):
        s = Scenario()
        s.task_runs.append(TaskRun(1002, 10, 100, 2, "error", LOST, "c3@h3"))
        s.marks += s.body(1002, 100, attempt=2)
        assert findings(s.verdict())["doubled"] == [
            "job 1 (chaos 7#1 chain) run 10 task A (100): body completed in attempt 1 (recorded"
            " Ended on c1@h1) and again in attempt 2"
        ]

    def test_it_counts_one_attempt_completed_twice(self):
        s = Scenario()
        s.marks += s.body(1000, 100)
        assert findings(s.verdict())["doubled"] == [
            "job 1 (chaos 7#1 chain) run 10 task A (100): attempt row 1000 completed its body 2 times"
        ]

    def test_it_counts_a_body_completed_for_an_attempt_the_engine_never_recorded(self):
        s = Scenario()
        s.marks += s.body(4242, 100)
        assert findings(s.verdict())["doubled"] == [
            "task 100: body completed on c1@h1 (pid 42) for attempt row 4242, which the engine"
            " does not have"
        ]


class StuckTestCase(SimpleTestCase):
    def test_it_counts_a_job_still_running_after_the_drain(self):
        s = Scenario()
        s.job = Job(1, "chaos 7#1 chain", "executing", T0, 10, False)
        s.runs = [JobRun(10, 1, "executing", T0)]
        s.events = []
        assert findings(s.verdict()) == {
            "stuck": ["job 1 (chaos 7#1 chain): still executing after the drain"]
        }

    def test_it_counts_a_due_job_that_never_started(self):
        s = Scenario()
        s.job = Job(1, "chaos 7#1 chain", "waiting", T0, None, False)
        s.runs, s.task_runs, s.marks, s.events, s.starts = [], [], [], [], {}
        assert findings(s.verdict()) == {
            "stuck": ["job 1 (chaos 7#1 chain): Waiting although due at 10:00:00"]
        }

    def test_a_recurring_job_waiting_for_its_next_run_is_not_stuck(self):
        s = Scenario()
        s.job = Job(1, "chaos 7#1 recurring", "waiting", DRAINED, 10, True)
        # Its tasks were reset for the next run; run 10's statuses come from its attempt rows.
        s.tasks = [Task(t.id, 1, t.key, "waiting", "all", False) for t in s.tasks]
        assert findings(s.verdict()) == {}


class ContradictionTestCase(SimpleTestCase):
    def test_it_reports_a_job_started_twice_for_one_occurrence(self):
        s = Scenario()
        s.runs.append(JobRun(11, 1, "ended", T0))
        s.events.append((11, "ended"))
        s.starts = {1: 2}
        assert "job 1 (chaos 7#1 chain): started 2 times for 10:00:00" in (
            s.verdict().contradictions
        )

    def test_it_reports_a_job_status_its_tasks_do_not_give(self):
        s = Scenario()
        s.tasks[1] = Task(101, 1, "B", "error", "all", False)
        s.task_runs[1] = TaskRun(1001, 10, 101, 1, "error", "RuntimeError: chaos", "c2@h2")
        s.marks[3] = Mark("fail", 101, 1001, 10, 1, "c2@h2", 42, 2.0)
        assert s.verdict().contradictions == [
            "job 1 (chaos 7#1 chain) run 10: ended ended, its tasks say error"
        ]

    def test_it_reports_a_task_that_ran_although_its_conditions_did_not_hold(self):
        s = Scenario()
        s.conditions = [Condition(101, 100, "error")]
        assert s.verdict().contradictions == [
            "job 1 (chaos 7#1 chain) run 10 task B (101): ended although its conditions did not"
            " hold"
        ]

    def test_it_reports_an_attempt_recorded_on_another_host_than_its_body_ran_on(self):
        s = Scenario()
        s.task_runs[1] = TaskRun(1001, 10, 101, 1, "ended", "", "c1@h1")
        s.marks[2:] = [
            Mark("start", 101, 1001, 10, 1, "c2@h2", 43, 1.0),
            Mark("done", 101, 1001, 10, 1, "c2@h2", 43, 2.0),
        ]
        assert s.verdict().contradictions == [
            "job 1 (chaos 7#1 chain) run 10 task B (101): attempt 1 recorded on c1@h1, its body"
            " completed on c2@h2"
        ]

    def test_it_reports_two_alert_events_for_one_run_and_none_for_another(self):
        s = Scenario()
        s.events = [(10, "ended"), (10, "error")]
        assert s.verdict().contradictions == [
            "job 1 run 10 (ended): alert events ['ended', 'error']"
        ]
        s.events = []
        assert s.verdict().contradictions == ["job 1 run 10 (ended): alert events none"]

    def test_it_reports_a_run_canceled_by_nobody(self):
        s = Scenario()
        s.job = Job(1, "chaos 7#1 chain", "canceled", T0, 10, False)
        s.runs = [JobRun(10, 1, "canceled", T0)]
        s.events = [(10, "canceled")]
        assert s.verdict().contradictions == [
            "job 1 (chaos 7#1 chain): run 10 Canceled, but nobody canceled it"
        ]
        s.canceled = {1}
        assert s.verdict().contradictions == []


class ParseMarksTestCase(SimpleTestCase):
    def test_it_reads_marks_and_counts_torn_lines(self):
        marks, torn = chaos_check.parse_marks(
            ["start 100 1000 10 1 c1@h1 42 1.5", "done 100 1000 10 1 c1", "", "x y z a b c d e"]
        )
        assert marks == [Mark("start", 100, 1000, 10, 1, "c1@h1", 42, 1.5)]
        assert torn == 3

    def test_any_condition_runs_on_one_parent_and_gives_up_when_none_can(self):
        assert chaos_check.may_run("any", [True, False, None]) is True
        assert chaos_check.may_run("any", [False, None]) is None
        assert chaos_check.may_run("any", [False, False]) is False
        assert chaos_check.may_run("all", [True, None]) is None
        assert chaos_check.may_run("all", []) is True

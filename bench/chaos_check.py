"""The chaos soak's verdict: what the engine recorded, held against what the task bodies did.

Pure functions over rows read from the tables and the marks the bodies wrote (chaos_processes);
no Django. The definitions (bench/README.md says the same):

- **lost**: a task that should have run in a job run and whose body never completed: it ended
  Ended without a ``done`` mark of its Ended attempt, or it is Didn't run although its conditions
  held (and the run was not canceled). A task in Error or Didn't run by its conditions is not lost.
- **doubled**: a body that completed twice in one job run without a recorded lost attempt between:
  two ``done`` marks of one attempt, a ``done`` of an attempt the engine recorded Ended followed by
  a ``done`` of a later attempt, or a ``done`` of an attempt the engine has no row for.
- **stuck**: a job that is not final after the drain (Executing, Canceling, or Waiting although
  due), or a job run left Executing while its job moved on.
- **contradictions**: a status the conditions do not allow (a task that ran although its
  conditions did not hold, a job whose final status does not follow from its tasks, a task still
  open in a finished run), a job started twice for one occurrence, and a finished run without
  exactly one alert event of its final status, or with one notification twice.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

FINAL_JOB = ("ended", "error", "canceled")
OPEN_TASK = ("waiting", "ready", "executing", "canceling")
DECIDED_TASK = ("ended", "error", "not_run", "canceled")


@dataclass(frozen=True)
class Job:
    id: int
    description: str
    status: str
    scheduled_start: dt.datetime
    current_run_id: int | None
    recurring: bool


@dataclass(frozen=True)
class Task:
    id: int
    job_id: int
    key: str
    status: str
    condition_type: str
    ignore_failure: bool


@dataclass(frozen=True)
class Condition:
    task_id: int
    depends_on_id: int
    expected: str  # ended, error, ended_or_error


@dataclass(frozen=True)
class JobRun:
    id: int
    job_id: int
    status: str
    scheduled_start: dt.datetime


@dataclass(frozen=True)
class TaskRun:
    id: int
    job_run_id: int | None
    task_id: int
    attempt: int
    status: str
    error: str
    hostname: str


@dataclass(frozen=True)
class Mark:
    event: str  # start, done, fail, stopped
    task_id: int
    run_id: int  # BatchTaskRun id
    job_run_id: int
    attempt: int
    hostname: str
    pid: int
    at: float


@dataclass
class Tables:
    """The rows of the soak's jobs, as read after the drain."""

    jobs: list[Job]
    tasks: list[Task]
    conditions: list[Condition]
    job_runs: list[JobRun]
    task_runs: list[TaskRun]
    # (job id, how many Waiting -> Executing changes its history holds)
    starts: dict[int, int] = field(default_factory=dict)
    # (job run id, kind) of every alert event of the soak's jobs
    alert_events: list[tuple[int | None, str]] = field(default_factory=list)
    # (event id, user id) pairs that have more than one notification
    duplicate_notifications: list[tuple[int, int]] = field(default_factory=list)
    # the jobs the soak canceled (with the CLI)
    cancel_requested: set[int] = field(default_factory=set)


@dataclass
class Verdict:
    checked: int = 0  # (job run, task) pairs looked at: the summary's "tasks"
    lost: list[str] = field(default_factory=list)
    doubled: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    contradictions: list[str] = field(default_factory=list)
    # Not defects: bodies that ran again after an attempt the engine recorded as lost.
    reran_after_lost: int = 0
    bodies_completed: int = 0

    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.stuck)


def parse_marks(lines: Iterable[str]) -> tuple[list[Mark], int]:
    """Marks from the bodies' files, and how many lines could not be read (a torn write)."""
    marks, bad = [], 0
    for line in lines:
        parts = line.split()
        if len(parts) != 8:
            bad += 1
            continue
        event, task_id, run_id, job_run_id, attempt, hostname, pid, at = parts
        try:
            marks.append(
                Mark(
                    event,
                    int(task_id),
                    int(run_id),
                    int(job_run_id),
                    int(attempt),
                    hostname,
                    int(pid),
                    float(at),
                )
            )
        except ValueError:
            bad += 1
    return marks, bad


def condition_met(expected: str, parent_status: str) -> bool | None:
    """True met, False never met, None undecided (the parent is still open)."""
    if parent_status in OPEN_TASK:
        return None
    if expected == "ended":
        return parent_status == "ended"
    if expected == "error":
        return parent_status == "error"
    return parent_status in ("ended", "error")


def may_run(condition_type: str, states: list[bool | None]) -> bool | None:
    """Whether a task with these condition states runs (True), never runs (False) or waits."""
    if not states:
        return True
    if condition_type == "any":
        if any(s is True for s in states):
            return True
        return False if all(s is False for s in states) else None
    if any(s is False for s in states):
        return False
    return True if all(s is True for s in states) else None


def check(tables: Tables, marks: list[Mark], *, drained_at: dt.datetime) -> Verdict:
    v = Verdict()
    tasks_of: dict[int, list[Task]] = defaultdict(list)
    for t in tables.tasks:
        tasks_of[t.job_id].append(t)
    conditions_of: dict[int, list[Condition]] = defaultdict(list)
    for c in tables.conditions:
        conditions_of[c.task_id].append(c)
    runs_of_job: dict[int, list[JobRun]] = defaultdict(list)
    for r in tables.job_runs:
        runs_of_job[r.job_id].append(r)
    attempts: dict[tuple[int | None, int], list[TaskRun]] = defaultdict(list)
    for tr in tables.task_runs:
        attempts[(tr.job_run_id, tr.task_id)].append(tr)
    for rows in attempts.values():
        rows.sort(key=lambda tr: (tr.attempt, tr.id))
    marks_of: dict[tuple[int, int], list[Mark]] = defaultdict(list)
    for m in marks:
        marks_of[(m.job_run_id, m.task_id)].append(m)
    task_run_ids = {tr.id for tr in tables.task_runs}
    v.bodies_completed = sum(m.event == "done" for m in marks)

    for job in sorted(tables.jobs, key=lambda j: j.id):
        name = f"job {job.id} ({job.description})"
        runs = sorted(runs_of_job[job.id], key=lambda r: r.id)
        if job.status in ("executing", "canceling"):
            v.stuck.append(f"{name}: still {job.status} after the drain")
        elif job.status == "waiting" and not job.recurring and job.scheduled_start <= drained_at:
            v.stuck.append(f"{name}: Waiting although due at {job.scheduled_start:%H:%M:%S}")
        _check_starts(v, name, job, runs, tables.starts.get(job.id, 0))
        for run in runs:
            current = run.id == job.current_run_id
            if run.status == "canceled" and job.id not in tables.cancel_requested:
                v.contradictions.append(f"{name}: run {run.id} Canceled, but nobody canceled it")
            if run.status not in FINAL_JOB:
                if not (current and job.status in ("executing", "canceling")):
                    v.stuck.append(f"{name}: run {run.id} left {run.status}")
                continue
            # The run's final task statuses: the task rows while they still hold this run,
            # else each task's last attempt row (unattempted tasks have an attempt-0 row).
            if current and job.status in FINAL_JOB:
                final = {t.id: t.status for t in tasks_of[job.id]}
            else:
                final = {t.id: _last_status(attempts.get((run.id, t.id))) for t in tasks_of[job.id]}
            _check_run(v, name, run, tasks_of[job.id], conditions_of, final, attempts, marks_of)
    _check_marks_known(v, marks, task_run_ids)
    _check_alerts(v, tables)
    return v


def _last_status(rows: list[TaskRun] | None) -> str:
    return rows[-1].status if rows else "missing"


def _check_starts(v: Verdict, name: str, job: Job, runs: list[JobRun], starts: int) -> None:
    per_occurrence = Counter(r.scheduled_start for r in runs)
    for occurrence, n in per_occurrence.items():
        if n > 1:
            v.contradictions.append(f"{name}: started {n} times for {occurrence:%H:%M:%S}")
    if starts != len(runs):
        v.contradictions.append(
            f"{name}: {starts} Waiting -> Executing changes for {len(runs)} runs"
        )


def _check_run(
    v: Verdict,
    name: str,
    run: JobRun,
    tasks: list[Task],
    conditions_of: dict[int, list[Condition]],
    final: dict[int, str],
    attempts: dict[tuple[int | None, int], list[TaskRun]],
    marks_of: dict[tuple[int, int], list[Mark]],
) -> None:
    canceled = run.status == "canceled"
    failed = False
    for task in tasks:
        v.checked += 1
        where = f"{name} run {run.id} task {task.key} ({task.id})"
        status = final[task.id]
        states = [condition_met(c.expected, final[c.depends_on_id]) for c in conditions_of[task.id]]
        allowed = may_run(task.condition_type, states)
        rows = attempts.get((run.id, task.id), [])
        if status in OPEN_TASK or status == "missing":
            v.contradictions.append(f"{where}: {status} in a run that ended {run.status}")
            continue
        if status == "error" and not task.ignore_failure:
            failed = True
        if status in ("ended", "error") and allowed is not True:
            v.contradictions.append(f"{where}: {status} although its conditions did not hold")
        if status == "not_run" and not canceled and allowed is True:
            v.lost.append(f"{where}: Didn't run although its conditions held")
        if status == "canceled" and not canceled:
            v.contradictions.append(f"{where}: Canceled in a run that ended {run.status}")
        _check_bodies(v, where, status, rows, marks_of.get((run.id, task.id), []))
    if not canceled:
        expected = "error" if failed else "ended"
        if run.status != expected:
            v.contradictions.append(
                f"{name} run {run.id}: ended {run.status}, its tasks say {expected}"
            )


def _check_bodies(
    v: Verdict, where: str, status: str, rows: list[TaskRun], marks: list[Mark]
) -> None:
    """Lost and doubled for one task in one run: the bodies' marks against the attempt rows."""
    row_of = {tr.id: tr for tr in rows}
    done = Counter(m.run_id for m in marks if m.event == "done")
    for run_id, n in done.items():
        if n > 1:
            v.doubled.append(f"{where}: attempt row {run_id} completed its body {n} times")
    completed = sorted((row_of[r].attempt, r) for r in done if r in row_of)
    for (first, first_id), (later, _) in itertools.pairwise(completed):
        first_row = row_of[first_id]
        if first_row.status == "ended":
            v.doubled.append(
                f"{where}: body completed in attempt {first} (recorded Ended on"
                f" {first_row.hostname}) and again in attempt {later}"
            )
        else:
            v.reran_after_lost += 1
    if status == "ended":
        ended = [tr for tr in rows if tr.status == "ended"]
        if len(ended) != 1:
            v.contradictions.append(f"{where}: Ended with {len(ended)} Ended attempt rows")
        elif ended[0].id not in done:
            v.lost.append(
                f"{where}: Ended (attempt {ended[0].attempt} on {ended[0].hostname}) but its"
                " body never completed"
            )
        else:
            hosts = {m.hostname for m in marks if m.event == "done" and m.run_id == ended[0].id}
            if hosts != {ended[0].hostname}:
                v.contradictions.append(
                    f"{where}: attempt {ended[0].attempt} recorded on {ended[0].hostname},"
                    f" its body completed on {', '.join(sorted(hosts))}"
                )
    for tr in rows:
        if tr.status in ("executing", "canceling"):
            v.contradictions.append(f"{where}: attempt {tr.attempt} row left {tr.status}")


def _check_marks_known(v: Verdict, marks: list[Mark], task_run_ids: set[int]) -> None:
    unknown = [m for m in marks if m.event == "done" and m.run_id not in task_run_ids]
    for m in unknown:
        # A body completed for an attempt the engine never recorded (or of a job not read).
        v.doubled.append(
            f"task {m.task_id}: body completed on {m.hostname} (pid {m.pid}) for attempt row"
            f" {m.run_id}, which the engine does not have"
        )


def _check_alerts(v: Verdict, tables: Tables) -> None:
    events = Counter(
        (run_id, kind) for run_id, kind in tables.alert_events if kind in FINAL_JOB and run_id
    )
    per_run = Counter(run_id for run_id, _ in events.elements())
    for run in tables.job_runs:
        if run.status not in FINAL_JOB:
            continue
        n = per_run.get(run.id, 0)
        if n != 1 or events.get((run.id, run.status), 0) != 1:
            kinds = sorted(k for (r, k) in events.elements() if r == run.id)
            v.contradictions.append(
                f"job {run.job_id} run {run.id} ({run.status}): alert events {kinds or 'none'}"
            )
    for event_id, user_id in tables.duplicate_notifications:
        v.contradictions.append(f"alert event {event_id}: user {user_id} notified twice")

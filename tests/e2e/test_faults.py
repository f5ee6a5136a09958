"""Faults with real processes: killed and stopped workers, a restarted Redis and PostgreSQL, two beats.

These tests stop servers, so they run on a PostgreSQL cluster and a redis-server of their own
(tests/e2e/private.py) on spare loopback ports: stopping them never disturbs the services other
tests use. Workers and beat are the real `celery` processes (tests/e2e/cluster.py) with a 3 s
lease, a 1 s heartbeat and a 5 s re-dispatch of lost messages.

Every task here runs ``e2e.mark`` (tests/e2e/fault_processes.py): it sleeps like demo.sleep and
appends a ``start`` line when its body begins and a ``done`` line when it completes, so how often
a task really ran is read from outside the engine, not from the engine's own history.

"Ran twice", in every test here, means any of:
- the task's body completed more than once (two ``done`` marks), or
- its body started again after it had completed once (a ``start`` mark of a later attempt
  than the ``done`` one), or
- the engine recorded more than one Ended attempt (BatchTaskRun) for it.
A retry after an attempt that was killed or stopped before its body completed is not running
twice: that attempt has a ``start`` mark and no ``done``.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cluster import migrate, unique, wait_for
from tests.e2e.private import FaultCluster, PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.faults

MARK = "e2e.mark"
RECEIVED = re.compile(r"Task batchadmin\.run_batch_tasks?\[([-0-9a-f]+)\] received")
FINAL = ("ended", "error", "canceled")


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    """A migrated database on a private PostgreSQL, and a private Redis as the broker."""
    log_dir = tmp_path_factory.mktemp("faults")
    pg = PrivatePostgres()
    broker = PrivateRedis(log_dir)
    cluster: FaultCluster | None = None
    try:
        pg.init()
        pg.start()
        broker.start()
        pg.create_database("batchadmin")
        cluster = FaultCluster(log_dir, pg=pg, broker=broker, dbname="batchadmin")
        cluster.env |= {
            "BATCH_PROCESS_MODULES": "tests.e2e.fault_processes",
            "E2E_MARK_FILE": str(log_dir / "marks.txt"),
        }
        migrate(cluster.env)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop_all()
        broker.stop()
        pg.destroy()


@pytest.fixture
def faults(private_cluster: FaultCluster, request: pytest.FixtureRequest) -> Iterator[FaultCluster]:
    """The module's cluster with both servers up, logs of its own; stops what the test started."""
    cluster = private_cluster
    if not cluster.pg.running:  # a test that failed half way through a restart
        cluster.pg.start()
    if not cluster.broker.answers():
        cluster.broker.stop()
        cluster.broker.start()
    base_log_dir, env = cluster.log_dir, dict(cluster.env)
    cluster.log_dir = base_log_dir / request.node.name
    cluster.log_dir.mkdir()
    try:
        yield cluster
    finally:
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(cluster.logs())
        cluster.stop_all()
        cluster.log_dir, cluster.env = base_log_dir, env


# --- jobs and what became of them -----------------------------------------------------------


def mark_task(
    key: str,
    seconds: float,
    *,
    group: str,
    max_retries: int = 0,
    after: str | None = None,
    poll_cancel: bool = True,
) -> dict[str, Any]:
    return {
        "key": key,
        "description": key,
        "process": MARK,
        "parameters": {"seconds": seconds, "poll_cancel": poll_cancel},
        "group": group,
        "max_retries": max_retries,
        "conditions": [{"task": after, "status": "ended"}] if after else [],
    }


@dataclass(frozen=True)
class Task:
    id: int
    job_id: int
    key: str
    status: str
    retries: int
    hostname: str


@dataclass(frozen=True)
class Run:
    attempt: int
    status: str
    hostname: str
    error: str


def tasks_of(cluster: FaultCluster, *job_ids: int) -> dict[str, Task]:
    """The jobs' tasks by key (keys are unique across the jobs of one test)."""
    rows = cluster.rows(
        "SELECT id, job_id, key, status, retries, hostname FROM jobs_batchtask"
        " WHERE job_id = ANY(%s)",
        list(job_ids),
    )
    return {row[2]: Task(*row) for row in rows}


def runs_of(cluster: FaultCluster, *job_ids: int) -> dict[int, list[Run]]:
    """Every attempt the engine recorded, by task id, oldest first."""
    rows = cluster.rows(
        "SELECT r.task_id, r.attempt, r.status, r.hostname, r.error_message"
        " FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
        " WHERE t.job_id = ANY(%s) ORDER BY r.task_id, r.attempt",
        list(job_ids),
    )
    runs: dict[int, list[Run]] = defaultdict(list)
    for task_id, *rest in rows:
        runs[task_id].append(Run(*rest))
    return runs


@dataclass(frozen=True)
class Mark:
    event: str  # start, done or stopped
    attempt: int
    hostname: str


def marks(cluster: FaultCluster) -> dict[int, list[Mark]]:
    """What the bodies of e2e.mark wrote, by task id, in the order they wrote it."""
    path = Path(cluster.env["E2E_MARK_FILE"])
    found: dict[int, list[Mark]] = defaultdict(list)
    for line in path.read_text().splitlines() if path.exists() else []:
        event, task_id, attempt, hostname, _pid, _at = line.split()
        found[int(task_id)].append(Mark(event, int(attempt), hostname))
    return found


def job_statuses(cluster: FaultCluster, *job_ids: int) -> dict[int, str] | None:
    rows = cluster.try_rows(
        "SELECT id, status FROM jobs_batchjob WHERE id = ANY(%s)", list(job_ids)
    )
    return None if rows is None else dict(rows)


def wait_until_final(cluster: FaultCluster, *job_ids: int, timeout: float) -> dict[int, str]:
    """Poll the database (across a restart of it) until every job has its final status."""

    def final() -> dict[int, str] | None:
        statuses = job_statuses(cluster, *job_ids)
        if statuses is None or any(s not in FINAL for s in statuses.values()):
            return None
        return statuses

    try:
        result: dict[int, str] = wait_for(final, timeout=timeout, what="the jobs to end", every=0.5)
    except AssertionError:
        print(job_statuses(cluster, *job_ids), cluster.logs())
        raise
    return result


def executing_on(cluster: FaultCluster, *job_ids: int) -> dict[str, str]:
    """Key -> replica of the tasks executing now."""
    rows = cluster.try_rows(
        "SELECT key, hostname FROM jobs_batchtask WHERE job_id = ANY(%s) AND status = 'executing'",
        list(job_ids),
    )
    return dict(rows or [])


def started_after(cluster: FaultCluster, at: dt.datetime, *job_ids: int) -> set[str]:
    """The replicas that claimed a task of these jobs after ``at``."""
    rows = cluster.rows(
        "SELECT DISTINCT r.hostname FROM jobs_batchtaskrun r JOIN jobs_batchtask t"
        " ON t.id = r.task_id WHERE t.job_id = ANY(%s) AND r.started_at > %s",
        list(job_ids),
        at,
    )
    return {hostname for (hostname,) in rows}


def assert_each_ran_once(cluster: FaultCluster, *job_ids: int) -> None:
    """Every Ended task ran once (module docstring); a task in Error never completed its body."""
    tasks = tasks_of(cluster, *job_ids)
    runs, seen = runs_of(cluster, *job_ids), marks(cluster)
    for key, task in tasks.items():
        done = [m for m in seen[task.id] if m.event == "done"]
        ended = [r for r in runs[task.id] if r.status == "ended"]
        assert len(ended) == (1 if task.status == "ended" else 0), (key, runs[task.id])
        starts = [m.attempt for m in seen[task.id] if m.event == "start"]
        assert len(starts) == len(set(starts)), (key, seen[task.id])  # one body per attempt
        if task.status != "ended":
            assert done == [], (key, seen[task.id])  # a completed body whose result was lost
            continue
        assert [m.attempt for m in done] == [ended[0].attempt], (key, seen[task.id])
        later = [m for m in seen[task.id] if m.attempt > done[0].attempt]
        assert later == [], (key, seen[task.id])


# --- the tests ------------------------------------------------------------------------------


def test_sigkill_of_a_replica_mid_task(faults: FaultCluster) -> None:
    """SIGKILL one replica of a server while it runs two tasks; its twin takes the work over.

    The lost attempts leave Executing within the lease (3 s) plus a tick, bounded here at 20 s;
    the task with a retry left runs again on the surviving replica, the one without errors with
    "Batch server lost"; work made ready afterwards runs on the survivor. (test_engine.py covers
    a killed server with another server taking over; here it is a replica of the same server,
    with two tasks in flight on it and the survivor starting while the lease runs out.)
    """
    c = faults
    server, group = unique("kill-"), unique("gkill-")
    c.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    c.start_beat()
    r1 = c.start_worker(server, host="r1", concurrency=2)
    retried, failed = c.import_jobs(
        {"jobs": [
            {"description": "victim, 1 retry", "tasks": [mark_task("V1", 4, group=group, max_retries=1)]},
            {"description": "victim, no retry", "tasks": [mark_task("V0", 4, group=group)]},
        ]}
    )  # fmt: skip
    wait_for(
        lambda: executing_on(c, retried, failed) == {"V1": r1, "V0": r1},
        timeout=30,
        what="both victims executing on r1",
    )
    # Claimed is not yet started: on a busy machine the bodies may take a moment to write
    # their "start" marks, and the kill must come after both did.
    victims = tasks_of(c, retried, failed)
    wait_for(
        lambda: all(marks(c).get(victims[key].id) for key in ("V0", "V1")),
        timeout=30,
        what="both victims' bodies to start",
    )
    r2 = c.start_worker(server, host="r2", concurrency=2, wait=False)
    c.kill(r1)
    [later] = c.import_jobs(
        {"description": "bystanders", "tasks": [mark_task(f"B{i}", 0.5, group=group) for i in range(4)]}
    )  # fmt: skip

    wait_for(
        lambda: not {"V0", "V1"} & set(executing_on(c, retried, failed)),
        timeout=20,
        what="the killed attempts to leave Executing",
    )
    assert wait_until_final(c, retried, failed, later, timeout=60) == {
        retried: "ended",
        failed: "error",
        later: "ended",
    }
    tasks = tasks_of(c, retried, failed, later)
    runs = runs_of(c, retried, failed, later)
    v1, v0 = tasks["V1"], tasks["V0"]
    assert [(r.attempt, r.status, r.hostname) for r in runs[v1.id]] == [
        (1, "error", r1),
        (2, "ended", r2),
    ]
    assert "Batch server lost" in runs[v1.id][0].error
    assert (v0.status, v0.retries) == ("error", 0)
    assert [(r.attempt, r.status, r.hostname) for r in runs[v0.id]] == [(1, "error", r1)]
    assert "Batch server lost" in runs[v0.id][0].error
    assert {tasks[f"B{i}"].hostname for i in range(4)} == {r2}
    seen = marks(c)
    assert [(m.event, m.attempt, m.hostname) for m in seen[v1.id]] == [
        ("start", 1, r1),
        ("start", 2, r2),
        ("done", 2, r2),
    ]
    assert [(m.event, m.hostname) for m in seen[v0.id]] == [("start", r1)]
    assert_each_ran_once(c, retried, failed, later)


@pytest.mark.parametrize("fault", ["restart", "dropped-connections"])
def test_redis_outage_while_jobs_run(faults: FaultCluster, fault: str) -> None:
    """Redis goes away while two replicas work through 24 tasks; nothing is lost or run twice.

    restart: Redis runs without persistence, so every queued message is gone with it, and
    finishes during the outage cannot send the messages of the tasks they release. The workers
    reconnect on their own (broker_connection_retry), the tick re-sends what was lost
    (BATCH_REDISPATCH_AFTER_SECONDS), and every task ends Ended, each having run once.

    dropped-connections: Redis stays up with its data and drops every client (a network blip).
    On reconnecting, kombu puts the messages of the tasks still running back in the queue, so
    running tasks are delivered a second time; the claim turns those copies away.
    """
    c = faults
    server, group = unique("redis-"), unique("gredis-")
    c.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    c.start_beat()
    r1 = c.start_worker(server, host="r1", concurrency=2, wait=False)
    r2 = c.start_worker(server, host="r2", concurrency=2)
    wait_for(lambda: _registered(c, r1), timeout=60, what="r1")
    chain = [mark_task("C0", 0.7, group=group)] + [
        mark_task(f"C{i}", 0.7, group=group, after=f"C{i - 1}") for i in range(1, 8)
    ]
    jobs = c.import_jobs(
        {"jobs": [
            {"description": "fan out", "tasks": [mark_task(f"F{i}", 0.7, group=group) for i in range(16)]},
            {"description": "chain", "tasks": chain},
        ]}
    )  # fmt: skip
    wait_for(lambda: len(executing_on(c, *jobs)) >= 3, timeout=30, what="tasks executing")
    if fault == "restart":
        c.broker.restart(down_for=4)
    else:
        c.broker.drop_clients()
    [(back,)] = c.rows("SELECT now()")

    assert set(wait_until_final(c, *jobs, timeout=90).values()) == {"ended"}
    tasks = tasks_of(c, *jobs)
    assert len(tasks) == 24 and {t.status for t in tasks.values()} == {"ended"}
    assert_each_ran_once(c, *jobs)
    # Nothing failed on the way: one attempt per task.
    assert {t.retries for t in tasks.values()} == {0}
    assert all(len(runs) == 1 for runs in runs_of(c, *jobs).values())
    # Both replicas took work after the fault; after a restart, lost messages were sent again.
    assert started_after(c, back, *jobs) == {r1, r2}
    if fault == "dropped-connections":
        # Running tasks' messages were delivered again, and ran once all the same. (Fewer
        # messages than tasks: a chain's next task runs on in its parent's message.)
        received = Counter(m for r in (r1, r2) for m in RECEIVED.findall(_log(c, r)))
        assert max(received.values()) > 1
    else:
        [(resent,)] = c.rows(
            "SELECT count(*) FROM jobs_batchtask WHERE job_id = ANY(%s)"
            " AND dispatched_at > ready_at",
            jobs,
        )
        assert resent > 0


@pytest.mark.parametrize(
    "poll_cancel",
    [
        pytest.param(False, id="quiet-bodies"),
        # ctx.cancel_requested() must ride out the restart, not fail the process (runner.py).
        pytest.param(True, id="cancel-polling-bodies"),
        # The outage outlasts the 3 s lease: the tick must give live workers a lease period
        # to renew before it fails their attempts (scheduler._lease_grace_until).
        pytest.param(None, id="long-outage"),
    ],
)
def test_postgres_restart_while_jobs_run(faults: FaultCluster, poll_cancel: bool | None) -> None:
    """Restart PostgreSQL (fast shutdown: every session ends) while two replicas run tasks.

    Workers and beat reconnect by themselves and every job ends Ended with each task run once
    and no attempt failed, although tasks had no retries: claims that failed are re-sent by the
    tick, finishes that failed are retried by the runner (runner.run_task) and leases are
    renewed again. The lease is 10 s, longer than the restart, as in production (30 s); the
    long-outage case keeps the database away longer than a 3 s lease: the tick, which saw the
    outage itself, gives the live workers one lease period to renew before it fails anything.
    ``poll_cancel``: the bodies call ctx.cancel_requested() twice a second as demo.sleep does
    (True), or do not touch the database at all (False, None).
    """
    c = faults
    c.env["BATCH_LEASE_SECONDS"] = "10" if poll_cancel is not None else "3"
    down_for = 2 if poll_cancel is not None else 4
    poll_cancel = bool(poll_cancel)
    server, group = unique("pg-"), unique("gpg-")
    c.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    c.start_beat()
    r1 = c.start_worker(server, host="r1", concurrency=2, wait=False)
    r2 = c.start_worker(server, host="r2", concurrency=2)
    wait_for(lambda: _registered(c, r1), timeout=60, what="r1")

    def task(key: str, after: str | None = None) -> dict[str, Any]:
        return mark_task(key, 1, group=group, after=after, poll_cancel=poll_cancel)

    jobs = c.import_jobs(
        {"jobs": [
            {"description": "fan out", "tasks": [task(f"F{i}") for i in range(8)]},
            {"description": "chain", "tasks": [task("C0")] + [task(f"C{i}", f"C{i - 1}") for i in range(1, 4)]},
        ]}
    )  # fmt: skip
    wait_for(lambda: len(executing_on(c, *jobs)) >= 3, timeout=30, what="tasks executing")
    c.pg.restart(down_for=down_for)
    [(back,)] = c.rows("SELECT now()")

    statuses = wait_until_final(c, *jobs, timeout=90)
    runs = runs_of(c, *jobs)
    failed = [r.error for t in tasks_of(c, *jobs).values() for r in runs[t.id] if r.error]
    assert failed == []
    assert set(statuses.values()) == {"ended"}
    assert_each_ran_once(c, *jobs)
    assert started_after(c, back, *jobs) == {r1, r2}  # both replicas reconnected


def test_two_beats_start_each_job_once(faults: FaultCluster) -> None:
    """Two beat processes on one database for ~10 s: every job run starts once, alerts once.

    Twelve jobs fall due at the same instant while both beats tick every second; one of them
    fails (an Error alert), one has two dependent tasks, and one is a recurring job (every
    minute, one run). Each job gets exactly one BatchJobRun and one Waiting -> Executing change,
    each task ran once, and each job run has exactly one AlertEvent of its final status (and,
    once alert delivery exists, at most one Notification per event and user).
    """
    c = faults
    server, group = unique("beats-"), unique("gbeats-")
    c.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    c.manage("shell", "-c", WATCHER_SCRIPT)
    c.start_beat("beat-1")
    c.start_beat("beat-2")
    c.start_worker(server, concurrency=2)
    wait_for(
        lambda: all("beat: Starting" in _log(c, b) for b in ("beat-1", "beat-2")),
        timeout=60,
        what="both beats running",
    )
    # Imported for later, then all made due in the same instant by one UPDATE (as an edit of
    # the scheduled start would), however long the import took.
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    plain = [
        {"description": f"due {i}", "scheduled_start": later,
         "tasks": [mark_task(f"J{i}", 0.2, group=group)]}
        for i in range(9)
    ]  # fmt: skip
    failing = {
        "description": "fails",
        "scheduled_start": later,
        "tasks": [{"key": "X", "description": "X", "process": "demo.fail", "group": group}],
    }
    pair = {
        "description": "pair",
        "scheduled_start": later,
        "tasks": [mark_task("P1", 0.2, group=group), mark_task("P2", 0.2, group=group, after="P1")],
    }
    recurring = {
        "description": "every minute, once",
        "scheduled_start": later,
        "recurrence": {"timezone": "UTC", "pattern": {"unit": "minutes", "every": 1}, "end": {"after": 1}},
        "tasks": [mark_task("R", 0.2, group=group)],
    }  # fmt: skip
    jobs = c.import_jobs({"jobs": [*plain, failing, pair, recurring]})
    c.rows(
        "UPDATE jobs_batchjob SET scheduled_start = now() + interval '1 second'"
        " WHERE id = ANY(%s) RETURNING id",
        jobs,
    )

    statuses = wait_until_final(c, *jobs, timeout=60)
    time.sleep(3)  # both beats tick over the finished jobs a few more times
    assert Counter(statuses.values()) == {"ended": 11, "error": 1}
    assert all(c.procs[b].poll() is None for b in ("beat-1", "beat-2"))

    job_runs = c.rows(
        "SELECT job_id, id, status FROM jobs_batchjobrun WHERE job_id = ANY(%s)", jobs
    )
    assert sorted(j for j, _, _ in job_runs) == sorted(jobs)  # one run per job
    starts = c.rows(
        "SELECT job_id, count(*) FROM jobs_statuschange WHERE job_id = ANY(%s)"
        " AND old_status = 'waiting' AND new_status = 'executing' GROUP BY job_id",
        jobs,
    )
    assert dict(starts) == dict.fromkeys(jobs, 1)
    assert_each_ran_once(c, *jobs)
    assert {t.retries for t in tasks_of(c, *jobs).values()} == {0}

    events = Counter(
        c.rows("SELECT job_run_id, kind FROM alerts_alertevent WHERE job_id = ANY(%s)", jobs)
    )
    assert max(events.values()) == 1
    ends = {event for event in events if event[1] in FINAL}
    assert ends == {(run_id, status) for _, run_id, status in job_runs}
    duplicates = c.rows(
        "SELECT n.event_id, n.user_id, count(*) FROM alerts_notification n"
        " JOIN alerts_alertevent e ON e.id = n.event_id WHERE e.job_id = ANY(%s)"
        " GROUP BY n.event_id, n.user_id HAVING count(*) > 1",
        jobs,
    )
    assert duplicates == []


# Someone who wants every alert, so that delivery (when it runs) has notifications to make.
WATCHER_SCRIPT = """
from django.contrib.auth.models import User
from batchadmin.alerts.models import AlertRule
user, _ = User.objects.get_or_create(username="watcher", defaults={"email": "watcher@example.com"})
AlertRule.objects.get_or_create(user=user, defaults={"ended": True, "error": True, "canceled": True})
"""


def test_warm_shutdown_finishes_running_tasks(faults: FaultCluster) -> None:
    """SIGTERM a worker running a 7 s task: the task ends Ended there; new work goes elsewhere.

    Work made Ready while the stopping replica still runs its task (checked: the second job's
    tasks were Ready before the first task ended) is run by the other replica. The signal goes
    to the worker's main process only, as `docker stop` and systemd's KillMode=mixed send it:
    sent to the whole process group it also kills the pool process running the task
    (FaultCluster.warm_stop).
    """
    c = faults
    server, group = unique("warm-"), unique("gwarm-")
    c.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    c.start_beat()
    r1 = c.start_worker(server, host="r1")
    running, after = c.import_jobs(
        {"jobs": [
            {"description": "long", "tasks": [mark_task("L", 7, group=group)]},
            {"description": "after the SIGTERM", "status": "withhold",
             "tasks": [mark_task(f"A{i}", 0.3, group=group) for i in range(3)]},
        ]}
    )  # fmt: skip
    wait_for(lambda: executing_on(c, running) == {"L": r1}, timeout=30, what="L executing on r1")
    r2 = c.start_worker(server, host="r2", wait=False)
    stopping = c.warm_stop(r1)
    c.cli("status", str(after), "waiting")

    assert wait_until_final(c, running, after, timeout=60) == {running: "ended", after: "ended"}
    assert stopping.wait(timeout=30) == 0
    tasks = tasks_of(c, running, after)
    assert tasks["L"].hostname == r1
    assert {tasks[f"A{i}"].hostname for i in range(3)} == {r2}
    [(l_ended,)] = c.rows("SELECT ended_at FROM jobs_batchtask WHERE id = %s", tasks["L"].id)
    [(first_ready,)] = c.rows("SELECT min(ready_at) FROM jobs_batchtask WHERE job_id = %s", after)
    assert first_ready < l_ended  # r1 was still up, and did not take them
    assert [(m.event, m.hostname) for m in marks(c)[tasks["L"].id]] == [
        ("start", r1),
        ("done", r1),
    ]
    assert_each_ran_once(c, running, after)
    assert not _registered(c, r1)  # it unregistered on its way out


def _log(cluster: FaultCluster, name: str) -> str:
    path = cluster.log_dir / f"{name}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def _registered(cluster: FaultCluster, hostname: str) -> bool:
    rows = cluster.try_rows(
        "SELECT 1 FROM servers_batchserverreplica WHERE hostname = %s", hostname
    )
    return bool(rows)

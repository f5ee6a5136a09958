"""A frozen worker and a database that is down when beat starts (issue 13, item 5).

Real processes on the fault tests' private PostgreSQL and Redis (test_faults.py). The worker is
frozen with SIGSTOP inside its finish transaction, holding its job's row lock: a trigger the
test installs makes the finish's UPDATE of that one attempt sleep, long enough to stop the
worker there, so no hook in the engine is needed. When the sleep ends the session is idle in a
transaction that holds the lock, exactly as in the chaos run that found the stall. The attempt
fails: a failure's finish is the one that runs under the lock (a successful one commits
without it, then takes the lock only to settle its job).
"""

from __future__ import annotations

import datetime as dt
import os
import signal
from pathlib import Path

import psycopg
import pytest

from tests.e2e.cluster import unique, wait_for
from tests.e2e.private import FaultCluster
from tests.e2e.test_faults import (  # noqa: F401 (the fixtures are used by name)
    faults,
    mark_task,
    private_cluster,
    runs_of,
    tasks_of,
    wait_until_final,
)

pytestmark = pytest.mark.faults

# PostgreSQL ends the frozen worker's session after this long idle in its transaction.
IDLE_TIMEOUT = 30
SLEEPING = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'"


def _execute(c: FaultCluster, *statements: str) -> None:
    with psycopg.connect(c.database_url, autocommit=True, connect_timeout=5) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def _pause_finish_of(c: FaultCluster, task_id: int) -> None:
    """Make the finish of ``task_id``'s attempt sleep 3 s in its UPDATE, under the job lock."""
    _execute(
        c,
        "CREATE OR REPLACE FUNCTION e2e_pause() RETURNS trigger AS"
        " $$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$ LANGUAGE plpgsql",
        "DROP TRIGGER IF EXISTS e2e_pause ON jobs_batchtaskrun",
        "CREATE TRIGGER e2e_pause BEFORE UPDATE ON jobs_batchtaskrun FOR EACH ROW"
        f" WHEN (NEW.task_id = {int(task_id)} AND NEW.status <> 'executing')"
        " EXECUTE FUNCTION e2e_pause()",
    )


def _backend(c: FaultCluster, pid: int) -> str | None:
    """The state of PostgreSQL backend ``pid`` (None once it is gone)."""
    rows = c.rows("SELECT state FROM pg_stat_activity WHERE pid = %s", pid)
    return rows[0][0] if rows else None


def test_a_frozen_worker_does_not_stall_the_tick(faults: FaultCluster) -> None:  # noqa: F811
    c = faults
    c.env["DB_IDLE_IN_TRANSACTION_TIMEOUT"] = str(IDLE_TIMEOUT)
    frozen_server, other = unique("frz-"), unique("oth-")
    frozen_group, other_group = unique("gfrz-"), unique("goth-")
    c.import_jobs(
        {"groups": [
            {"code": frozen_group, "servers": [frozen_server]},
            {"code": other_group, "servers": [other]},
        ]}
    )  # fmt: skip
    c.start_beat()
    frozen = c.start_worker(frozen_server)
    c.start_worker(other)
    # A failing attempt: its finish is a transaction under the job's lock (a successful one
    # commits without the lock, transitions.finish_task).
    [stuck] = c.import_jobs(
        {"description": "frozen in its finish", "status": "withhold",
         "tasks": [{"key": "F", "description": "F", "process": "demo.fail",
                    "parameters": {"message": "frozen"}, "group": frozen_group}]}
    )  # fmt: skip
    # Imported for later now (an import takes seconds on a busy machine); made due below.
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    [bystander] = c.import_jobs(
        {"description": "due meanwhile", "scheduled_start": later,
         "tasks": [mark_task("B", 0.2, group=other_group)]}
    )  # fmt: skip
    _pause_finish_of(c, tasks_of(c, stuck)["F"].id)
    c.cli("status", str(stuck), "waiting")

    # The worker is inside its finish, under the job's row lock: freeze it there.
    [pid] = wait_for(
        lambda: [pid for (pid,) in c.rows(SLEEPING)],
        timeout=60,
        what="the finish to reach the paused UPDATE",
    )
    os.killpg(c.procs[frozen].pid, signal.SIGSTOP)
    try:
        wait_for(
            lambda: _backend(c, pid) == "idle in transaction",
            timeout=30,
            what="the frozen finish to hold its transaction open",
        )
        # Its lease (3 s) runs out while the lock is held: from then on every tick's lease
        # check meets the lock (a tick that waited on it would never end). Another job falls
        # due after that.
        frozen_task = tasks_of(c, stuck)["F"].id
        wait_for(
            lambda: c.rows(
                "SELECT 1 FROM jobs_batchtask WHERE id = %s"
                " AND lease_expires_at < now() - interval '2 seconds'",
                frozen_task,
            ),
            timeout=30,
            what="the frozen attempt's lease to run out",
        )
        c.rows(
            "UPDATE jobs_batchjob SET scheduled_start = now() + interval '2 seconds'"
            " WHERE id = %s RETURNING id",
            bystander,
        )
        assert wait_until_final(c, bystander, timeout=30) == {bystander: "ended"}
        # ... on time, and while the frozen transaction still held the lock.
        [(started_at, scheduled)] = c.rows(
            "SELECT started_at, scheduled_start FROM jobs_batchjob WHERE id = %s", bystander
        )
        assert started_at - scheduled < dt.timedelta(seconds=5)
        assert _backend(c, pid) == "idle in transaction"

        # PostgreSQL ends the frozen session (idle_in_transaction_session_timeout); the lock
        # is gone and the tick fails the attempt whose server stopped renewing its lease.
        assert wait_until_final(c, stuck, timeout=IDLE_TIMEOUT + 40) == {stuck: "error"}
        assert _backend(c, pid) is None
        [run] = runs_of(c, stuck)[frozen_task]
        assert "Batch server lost" in run.error
    finally:
        os.killpg(c.procs[frozen].pid, signal.SIGCONT)
        c.kill(frozen)
        _execute(c, "DROP TRIGGER IF EXISTS e2e_pause ON jobs_batchtaskrun")


def test_beat_started_with_the_database_down_waits_for_it(faults: FaultCluster) -> None:  # noqa: F811
    c = faults
    server, group = unique("bdn-"), unique("gbdn-")
    c.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    [job] = c.import_jobs(
        {"description": "after the outage", "tasks": [mark_task("A", 0.2, group=group)]}
    )
    c.pg.stop()
    try:
        c.start_beat()
        beat_log = Path(c.log_dir / "beat.log")
        wait_for(
            lambda: beat_log.read_text().count("The database is unavailable") >= 2,
            timeout=60,
            what="beat to retry the database",
        )
        assert c.procs["beat"].poll() is None  # still running, waiting
    finally:
        c.pg.start()
    c.start_worker(server)
    assert wait_until_final(c, job, timeout=60) == {job: "ended"}

"""The overlap policy of a recurring job end to end (issue 14, item 4): a job that recurs every
minute and whose run is still executing when the next occurrence comes. A real worker and beat,
PostgreSQL, Redis, and the cluster clock of test_recurrence.py, moved past the next occurrence
while the run executes.

The cluster is this module's own (as test_recurrence.py's), with a long lease: the clock jumps a
minute while a task runs, and its lease must not look expired because of the jump.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.e2e.cluster import (
    REDIS_URL,
    Cluster,
    create_database,
    drop_database,
    migrate,
    unique,
    wait_for,
)
from tests.e2e.test_recurrence import CLOCK_DIR, ClusterClock

OVERLAP_REDIS_URL = REDIS_URL.rsplit("/", 1)[0] + "/13"
MINUTE = dt.timedelta(minutes=1)
RUN_SECONDS = 5.0  # real seconds the task runs: the clock jumps a minute meanwhile


@pytest.fixture(scope="module")
def overlap_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, ClusterClock, str]]:
    name = f"batchadmin_e2e_overlap_{os.getpid()}"
    create_database(name)
    log_dir = tmp_path_factory.mktemp("e2e-overlap-logs")
    cluster = Cluster(f"postgres://postgres@127.0.0.1:5432/{name}", log_dir, pg_dbname=name)
    clock = ClusterClock(log_dir / "clock")
    cluster.env |= {
        "E2E_CLOCK_FILE": str(clock.path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CLOCK_DIR), os.environ.get("PYTHONPATH")])),
        "CELERY_BROKER_URL": OVERLAP_REDIS_URL,
        "BATCH_LEASE_SECONDS": "300",
    }
    try:
        migrate(cluster.env)
        redis.Redis.from_url(OVERLAP_REDIS_URL).flushdb()
        cluster.start_beat()
        group, server = unique("overlap-"), unique("ovl-")
        cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
        cluster.start_worker(server, concurrency=2)
        yield cluster, clock, group
    finally:
        cluster.stop_all()
        drop_database(name)


def start_long_job(
    cluster: Cluster, clock: ClusterClock, group: str, overlap: str, seconds: float = RUN_SECONDS
) -> tuple[int, dt.datetime]:
    """A job every minute from the next whole minute (two runs), whose task runs RUN_SECONDS;
    its first run starts, and the clock jumps past the second occurrence while it executes."""
    start = clock.now().replace(second=0, microsecond=0) + MINUTE
    recurrence: dict[str, Any] = {
        "start": start.replace(tzinfo=None).isoformat(),
        "timezone": "UTC",
        "end": {"after": 2},
        "pattern": {"unit": "minutes", "every": 1},
        "overlap": overlap,
    }
    [job_id] = cluster.import_jobs(
        {
            "description": f"longer than its interval ({overlap})",
            "scheduled_start": start.isoformat(),
            "recurrence": recurrence,
            "tasks": [
                {
                    "key": "T",
                    "process": "demo.sleep",
                    "parameters": {"seconds": seconds},
                    "group": group,
                }
            ],
        }  # fmt: skip
    )
    clock.advance_to(start + dt.timedelta(milliseconds=500))
    wait_for(
        lambda: cluster.scalar(
            "SELECT count(*) FROM jobs_batchtask WHERE job_id = %s AND status = 'executing'",
            job_id,
        ),
        timeout=30,
        what="the first run's task to execute",
    )
    clock.advance_to(start + MINUTE + dt.timedelta(milliseconds=500))
    return job_id, start


def runs(cluster: Cluster, job_id: int) -> list[tuple[Any, ...]]:
    return cluster.rows(
        "SELECT status, started_at, ended_at FROM jobs_batchjobrun WHERE job_id = %s"
        " ORDER BY started_at",
        job_id,
    )


def both_runs_over(cluster: Cluster, job_id: int) -> list[tuple[Any, ...]]:
    def over() -> list[tuple[Any, ...]] | None:
        done = runs(cluster, job_id)
        status = cluster.scalar("SELECT status FROM jobs_batchjob WHERE id = %s", job_id)
        return done if status == "ended" and all(r[2] for r in done) else None

    done: list[tuple[Any, ...]] = wait_for(over, timeout=60, what="both runs to end")
    return done


def test_skip_records_the_occurrence_as_missed(overlap_cluster):
    cluster, clock, group = overlap_cluster
    job_id, start = start_long_job(cluster, clock, group, "skip")

    def waiting() -> Any:
        rows = cluster.rows(
            "SELECT status, scheduled_start FROM jobs_batchjob WHERE id = %s", job_id
        )
        return rows[0] if rows[0][0] == "waiting" else None

    _, next_start = wait_for(waiting, timeout=30, what="the run to end")
    assert next_start == start + 2 * MINUTE  # the occurrence that came meanwhile is not run
    assert [r[0] for r in runs(cluster, job_id)] == ["ended"]
    missed = cluster.rows(
        "SELECT scheduled_start, occurrences, reason FROM jobs_missedoccurrence WHERE job_id = %s",
        job_id,
    )
    assert missed == [(start + MINUTE, 1, "running")]


def test_buffer_one_runs_the_next_as_soon_as_the_run_ends(overlap_cluster):
    cluster, clock, group = overlap_cluster
    job_id, start = start_long_job(cluster, clock, group, "buffer_one")
    done = both_runs_over(cluster, job_id)  # two runs: then the range is over
    assert [r[0] for r in done] == ["ended", "ended"]
    first, second = done
    assert first[2] <= second[1]  # never two at once
    # Started as soon as the first ended (within a few ticks), not at the next occurrence.
    assert second[1] - first[2] < dt.timedelta(seconds=10)
    assert second[1] < start + 2 * MINUTE
    reasons = cluster.rows(
        "SELECT reason FROM jobs_statuschange WHERE job_id = %s AND reason LIKE 'Overlap%%'",
        job_id,
    )
    assert len(reasons) == 1


def test_cancel_running_cancels_the_run_with_the_reason_and_starts(overlap_cluster):
    cluster, clock, group = overlap_cluster
    # A long run (real seconds): beat may take a few seconds to catch up after the clock's jump,
    # and the run must still be executing when it does.
    job_id, start = start_long_job(cluster, clock, group, "cancel_running", seconds=40)

    def canceled_and_started() -> list[tuple[Any, ...]] | None:
        done = runs(cluster, job_id)
        return done if len(done) == 2 and done[0][0] == "canceled" else None

    first, second = wait_for(canceled_and_started, timeout=35, what="a cancel and a new run")
    assert first[2] <= second[1]  # never two at once
    assert second[1] < start + 2 * MINUTE  # started at once, not at the next occurrence
    [reason] = cluster.rows(
        "SELECT reason FROM jobs_statuschange WHERE job_id = %s AND new_status = 'canceling'",
        job_id,
    )
    assert reason[0].startswith("Overlap policy: the occurrence of ")
    assert reason[0].endswith("came while this run still executed; canceled to start it.")
    # The new run is a run like any other: cancel it to leave the cluster idle.
    cluster.cli("status", str(job_id), "cancel")

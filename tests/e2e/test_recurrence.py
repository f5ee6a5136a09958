"""A recurring job end to end: a real worker and beat, PostgreSQL, Redis, and a clock we move.

Recurrence is about minutes and days, and missed occurrences are never replayed, so a job that
recurs every minute needs a minute to pass between runs. Rather than wait, the test moves the
cluster's clock: every process of this cluster (beat, worker, its pool, the CLI) starts with
``tests/e2e/clock`` on PYTHONPATH, whose sitecustomize runs the process on real time plus an
offset the test writes to a file (time-machine underneath). The engine's code is untouched and
sees time pass as in production, only in jumps to the next occurrence.

The cluster is this module's own, not the session's ``cluster`` fixture: that one's beat runs on
the real clock and shares django-celery-beat's PeriodicTask rows, to which a second beat ahead
in time would write last-run times in its future. The Cluster helper, database set-up and
migrations are the same.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import isolation
from tests.e2e.cluster import (
    Cluster,
    create_database,
    drop_database,
    migrate,
    unique,
    wait_for,
)

CLOCK_DIR = Path(__file__).with_name("clock")
# A Redis database of its own: its workers must not take messages meant for the session cluster.
CLOCK_REDIS_URL = isolation.E2E_CLOCK_REDIS_URL
UTC = dt.UTC


class ClusterClock:
    """The time of the cluster: real time plus an offset that only moves forward."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0.0
        self._write()

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC) + dt.timedelta(seconds=self.offset)

    def advance_to(self, at: dt.datetime) -> None:
        self.offset = max(self.offset, (at - dt.datetime.now(UTC)).total_seconds())
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(repr(self.offset))
        os.replace(tmp, self.path)  # the processes never read half a number


@pytest.fixture(scope="module")
def clock_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, ClusterClock]]:
    name = isolation.db_name("batchadmin_e2e_clock")
    create_database(name)
    log_dir = tmp_path_factory.mktemp("e2e-clock-logs")
    cluster = Cluster(f"postgres://postgres@127.0.0.1:5432/{name}", log_dir, pg_dbname=name)
    clock = ClusterClock(log_dir / "clock")
    cluster.env |= {
        "E2E_CLOCK_FILE": str(clock.path),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(CLOCK_DIR), os.environ.get("PYTHONPATH")])),
        "CELERY_BROKER_URL": CLOCK_REDIS_URL,
    }
    try:
        migrate(cluster.env)
        isolation.reset(CLOCK_REDIS_URL)
        cluster.start_beat()
        yield cluster, clock
    finally:
        cluster.stop_all()
        drop_database(name)


def job_state(cluster: Cluster, job_id: int) -> tuple[str, dt.datetime, int]:
    """Status, scheduled start and the number of finished runs."""
    status, scheduled_start = cluster.rows(
        "SELECT status, scheduled_start FROM jobs_batchjob WHERE id = %s", job_id
    )[0]
    finished = cluster.scalar(
        "SELECT count(*) FROM jobs_batchjobrun WHERE job_id = %s AND ended_at IS NOT NULL", job_id
    )
    return status, scheduled_start, finished


def test_it_runs_a_job_every_minute_three_times_then_ends(clock_cluster, request):
    cluster, clock = clock_cluster
    request.addfinalizer(lambda: _print_logs_on_failure(request, cluster))
    group, server = unique("every-minute-"), unique("rec-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    cluster.start_worker(server)

    # The recurrence started two minutes ago: its start is due, and runs once at once.
    start = clock.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=2)
    recurrence: dict[str, Any] = {
        "start": start.replace(tzinfo=None).isoformat(),
        "timezone": "UTC",
        "end": {"after": 3},
        "pattern": {"unit": "minutes", "every": 1},
    }
    [job_id] = cluster.import_jobs(
        {
            "description": "every minute, three runs",
            "scheduled_start": start.isoformat(),
            "recurrence": recurrence,
            "tasks": [
                {
                    "key": "T",
                    "description": "work",
                    "process": "demo.sleep",
                    "parameters": {"seconds": 0.3},
                    "group": group,
                }
            ],
        }  # fmt: skip
    )

    for run in (1, 2, 3):

        def settled(run: int = run) -> tuple[str, dt.datetime, int] | None:
            state = job_state(cluster, job_id)
            return state if state[2] == run and state[0] in ("waiting", "ended") else None

        status, next_start, _ = wait_for(settled, timeout=30, what=f"run {run} to end")
        if run < 3:
            # Back to Waiting for the next whole minute after the run: move the clock there.
            assert status == "waiting"
            assert next_start.second == 0 and next_start.microsecond == 0
            assert next_start > clock.now() - dt.timedelta(seconds=5)
            clock.advance_to(next_start + dt.timedelta(milliseconds=500))

    assert status == "ended"  # "end after 3": the range is over, the job keeps its status
    runs = cluster.rows(
        "SELECT status, scheduled_start, started_at, ended_at FROM jobs_batchjobrun"
        " WHERE job_id = %s ORDER BY started_at",
        job_id,
    )
    assert [r[0] for r in runs] == ["ended", "ended", "ended"]
    scheduled = [r[1] for r in runs]
    assert scheduled[0] == start
    assert scheduled[2] - scheduled[1] == dt.timedelta(minutes=1)
    assert all(started >= planned for _, planned, started, _ in runs)
    assert all(a[3] <= b[2] for a, b in zip(runs, runs[1:], strict=False))  # never two at once
    task_runs = cluster.scalar(
        "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchjobrun j ON j.id = r.job_run_id"
        " WHERE j.job_id = %s AND r.status = 'ended'",
        job_id,
    )
    assert task_runs == 3
    assert cluster.scalar("SELECT runs FROM jobs_batchrecurrence WHERE job_id = %s", job_id) == 3


def _print_logs_on_failure(request: pytest.FixtureRequest, cluster: Cluster) -> None:
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(cluster.logs())

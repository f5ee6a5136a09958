"""Max concurrency of a batch group with a real worker, beat, PostgreSQL and Redis."""

from __future__ import annotations

import time
from typing import Any

from tests.e2e.cluster import Cluster, unique, wait_for

TERMINAL = ("ended", "error", "canceled")


def sleep_tasks(group: str, n: int, seconds: float) -> list[dict[str, Any]]:
    return [
        {"key": f"S{i}", "description": f"sleep {i}", "process": "demo.sleep",
         "parameters": {"seconds": seconds}, "group": group}
        for i in range(n)
    ]  # fmt: skip


def set_limit(cluster: Cluster, group: str, value: int) -> None:
    cluster.rows(
        "UPDATE servers_batchgroup SET max_concurrency = %s WHERE code = %s RETURNING id",
        value,
        group,
    )


def task_counts(cluster: Cluster, job_id: int) -> dict[str, int]:
    rows = cluster.rows(
        "SELECT status, count(*) FROM jobs_batchtask WHERE job_id = %s GROUP BY status", job_id
    )
    return dict(rows)


def job_status(cluster: Cluster, job_id: int) -> str:
    status: str = cluster.scalar("SELECT status FROM jobs_batchjob WHERE id = %s", job_id)
    return status


def test_at_most_n_tasks_of_a_job_run_at_once(cluster):
    server, group = unique("lim-"), unique("Lim-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    set_limit(cluster, group, 2)
    cluster.start_worker(server, concurrency=3)
    [job_id] = cluster.import_jobs(
        {"description": "max concurrency 2", "tasks": sleep_tasks(group, 6, 1.0)}
    )
    most = 0
    deadline = time.monotonic() + 90
    while job_status(cluster, job_id) not in TERMINAL:
        assert time.monotonic() < deadline, f"job did not end\n{cluster.logs()}"
        most = max(most, task_counts(cluster, job_id).get("executing", 0))
        assert most <= 2, "more tasks of the job executing than its group's max concurrency"
        time.sleep(0.05)
    assert job_status(cluster, job_id) == "ended"
    assert task_counts(cluster, job_id) == {"ended": 6}
    assert most == 2  # the worker has 3 threads: the limit, not the worker, held it at 2
    # Never more than 2 attempts overlapped in time either (history rows).
    spans = cluster.rows(
        "SELECT r.started_at, r.ended_at FROM jobs_batchtaskrun r"
        " JOIN jobs_batchtask t ON t.id = r.task_id WHERE t.job_id = %s",
        job_id,
    )
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_a_paused_group_lets_running_tasks_finish_and_starts_none(cluster):
    server, group = unique("pause-"), unique("Pause-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    cluster.start_worker(server, concurrency=3)
    [job_id] = cluster.import_jobs(
        {"description": "paused midway", "tasks": sleep_tasks(group, 6, 1.5)}
    )
    wait_for(
        lambda: task_counts(cluster, job_id).get("executing", 0) >= 1,
        timeout=60,
        what="the first tasks to start",
    )
    set_limit(cluster, group, -1)
    # Running tasks finish (1.5 s each); nothing new starts.
    wait_for(
        lambda: task_counts(cluster, job_id).get("executing", 0) == 0,
        timeout=30,
        what="the running tasks to finish",
    )
    finished = task_counts(cluster, job_id).get("ended", 0)
    assert 1 <= finished < 6
    time.sleep(3)  # three ticks: a paused group must stay paused
    counts = task_counts(cluster, job_id)
    assert counts == {"ended": finished, "ready": 6 - finished}
    held = cluster.scalar(
        "SELECT count(*) FROM jobs_batchtask WHERE job_id = %s AND status = 'ready'"
        " AND dispatched_at IS NULL",
        job_id,
    )
    assert held == 6 - finished
    assert job_status(cluster, job_id) == "executing"

    set_limit(cluster, group, 0)
    assert cluster.wait(job_id, timeout=60) == "ended"
    assert task_counts(cluster, job_id) == {"ended": 6}

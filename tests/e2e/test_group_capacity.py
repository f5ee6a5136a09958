"""A batch group's maximum running tasks (issue 14, item 1) with real workers, beat,
PostgreSQL and Redis: the cap holds across jobs and servers, and both slots are used."""

from __future__ import annotations

from tests.e2e.cluster import unique
from tests.e2e.test_limits import sleep_tasks


def test_a_group_capped_at_two_runs_at_most_two_tasks_across_jobs_and_servers(cluster):
    group = unique("Cap-")
    servers = [unique("capa-"), unique("capb-")]
    cluster.import_jobs({"groups": [{"code": group, "servers": servers, "max_tasks": 2}]})
    for server in servers:
        cluster.start_worker(server, concurrency=3)  # six threads in all
    job_ids = cluster.import_jobs(
        {
            "jobs": [
                {"description": f"capped {n}", "tasks": sleep_tasks(group, 3, 1.0)}
                for n in range(3)
            ]
        }
    )
    for job_id in job_ids:
        assert cluster.wait(job_id, timeout=120) == "ended", cluster.logs()
    # Every attempt's start and end, as the history recorded them.
    spans = cluster.rows(
        "SELECT r.started_at, r.ended_at, t.job_id FROM jobs_batchtaskrun r"
        " JOIN jobs_batchtask t ON t.id = r.task_id WHERE t.job_id = ANY(%s) AND r.attempt > 0",
        job_ids,
    )
    assert len(spans) == 9
    overlap = max(sum(1 for s, e, _ in spans if s <= start < e) for start, _, _ in spans)
    assert overlap <= 2, "more tasks of the group ran at once than its maximum"
    assert overlap == 2, "the group used one slot of two"
    # Fair between jobs: each job had a task running before any job's third task began.
    first_start = {job_id: min(s for s, _, j in spans if j == job_id) for job_id in job_ids}
    third_starts = sorted(s for s, _, _ in spans)[6:]
    assert max(first_start.values()) <= min(third_starts)

"""Cancel -> abort and the time limit with real workers: a hung process is killed, its worker
survives and runs the next task."""

from __future__ import annotations

from tests.e2e.cluster import Cluster, unique, wait_for


def _running(cluster: Cluster, job_id: int, key: str) -> bool:
    tasks = {t["key"]: t["status"] for t in cluster.show(job_id)["tasks"]}
    return bool(tasks[key] == "executing")


def _attempt(cluster: Cluster, job_id: int) -> tuple[str, str, str]:
    [row] = cluster.rows(
        "SELECT r.status, r.error_message, r.celery_task_id FROM jobs_batchtaskrun r"
        " JOIN jobs_batchtask t ON t.id = r.task_id WHERE t.job_id = %s AND r.attempt > 0",
        job_id,
    )
    return row


def _worker_runs_the_next_task(cluster: Cluster, server: str) -> None:
    [job_id] = cluster.import_jobs(
        {"description": "after the abort", "tasks": [
            {"key": "N", "description": "next", "process": "demo.noop", "group": server},
        ]}
    )  # fmt: skip
    assert cluster.wait(job_id, timeout=60) == "ended"


def test_a_process_that_ignores_the_cancel_is_aborted_after_the_grace_period(cluster):
    server = unique("abort-")
    cluster.import_jobs({"groups": [{"code": server, "description": "abort", "servers": [server]}]})
    cluster.start_worker(server)
    cluster.manage(
        "shell",
        "-c",
        # A batch job manager: `batch status --user` checks the role as the pages do.
        "from django.contrib.auth.models import Group, User; "
        "User.objects.create(username='ops').groups.add(Group.objects.get(name='Batch job manager'))",
    )
    [job_id] = cluster.import_jobs(
        {"description": "hangs", "tasks": [
            {"key": "H", "description": "hang", "process": "demo.hang", "group": server},
        ]}
    )  # fmt: skip
    wait_for(lambda: _running(cluster, job_id, "H"), timeout=60, what="the hung task to run")
    assert (
        cluster.cli("status", str(job_id), "cancel", "--user", "ops").stdout.strip() == "canceling"
    )
    # The grace is 2 s (ENGINE_ENV), then the next tick aborts it.
    assert cluster.wait(job_id, timeout=60) == "canceled"
    status, error, celery_id = _attempt(cluster, job_id)
    assert status == "canceled"
    assert error.startswith("Aborted after the 2 s grace period")
    assert celery_id
    canceled_by = cluster.scalar(
        "SELECT u.username FROM jobs_batchjobrun r JOIN auth_user u ON u.id = r.canceled_by_id"
        " WHERE r.job_id = %s",
        job_id,
    )
    assert canceled_by == "ops"
    _worker_runs_the_next_task(cluster, server)


def test_a_hung_process_ends_in_error_at_its_time_limit(cluster):
    server = unique("limit-")
    cluster.import_jobs({"groups": [{"code": server, "description": "limit", "servers": [server]}]})
    cluster.start_worker(server)
    [job_id] = cluster.import_jobs(
        {"description": "hangs with a limit", "tasks": [
            {"key": "H", "description": "hang", "process": "demo.hang", "group": server,
             "time_limit": 3, "max_retries": 2},
        ]}
    )  # fmt: skip
    # 3 s limit + 2 s grace + a tick or two; generous for a busy machine.
    assert cluster.wait(job_id, timeout=60) == "error"
    status, error, _ = _attempt(cluster, job_id)
    assert status == "error"
    assert error == (
        "Time limit of 3 s exceeded; the process was aborted after the 2 s grace period."
    )
    assert cluster.show(job_id)["tasks"][0]["retries"] == 0  # a time limit is not retried
    _worker_runs_the_next_task(cluster, server)

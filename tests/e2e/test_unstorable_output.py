"""Issue 13, item 4 end to end: a process that logs and raises a NUL character and half a
surrogate pair settles in one attempt on a real worker; its log lines are kept; a process
that succeeded with such lines does not run again."""

from __future__ import annotations

from tests.e2e.cluster import Cluster, unique


def test_a_process_writing_nul_settles_in_one_attempt(cluster: Cluster) -> None:
    cluster.start_worker(unique("garbage-"))

    def job(description: str, error_chars: int) -> dict[str, object]:
        return {
            "description": description,
            "tasks": [
                {"key": "G", "process": "demo.garbage",
                 "parameters": {"lines": 3, "error_chars": error_chars}}
            ],
        }  # fmt: skip

    failing, succeeding = cluster.import_jobs(
        {"jobs": [job("raises NUL", 100), job("logs NUL, ends", 0)]}
    )
    assert cluster.wait(failing) == "error"
    assert cluster.wait(succeeding) == "ended"
    for job_id, status in ((failing, "error"), (succeeding, "ended")):
        attempts = cluster.rows(
            "SELECT r.attempt, r.status, r.error_message, "
            " (SELECT count(*) FROM jobs_batchlogentry e WHERE e.task_run_id = r.id)"
            " FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
            " WHERE t.job_id = %s",
            job_id,
        )
        # One attempt each, settled by its worker (not "Batch server lost" after the lease),
        # with its log lines: 3, and the error's.
        lines = 4 if status == "error" else 3
        assert [(a[0], a[1], a[3]) for a in attempts] == [(1, status, lines)]
    [(error,)] = cluster.rows(
        "SELECT r.error_message FROM jobs_batchtaskrun r JOIN jobs_batchtask t"
        " ON t.id = r.task_id WHERE t.job_id = %s",
        failing,
    )
    assert error.startswith("DemoFailure: NUL \ufffd, half a pair \ufffd")

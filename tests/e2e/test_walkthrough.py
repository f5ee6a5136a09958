"""D365's batch-server walkthrough (reference section 1.4) on two real one-thread servers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, unique


def walkthrough(
    description: str, *, t2_fails: bool = False, t2_ignore: bool = False
) -> dict[str, Any]:
    """The task graph of D365's batch-server walkthrough (reference section 1.4)."""

    def task(key: str, after: list[tuple[str, str]] = (), **extra: Any) -> dict[str, Any]:  # type: ignore[assignment]
        return {
            "key": key,
            "description": f"Task {key}",
            "process": "demo.sleep",
            "parameters": {"seconds": 0.2},
            "conditions": [{"task": parent, "status": status} for parent, status in after],
            **extra,
        }

    t2: dict[str, Any] = {}
    if t2_fails:
        t2 = {
            "process": "demo.fail",
            "parameters": {"message": "T2 broke"},
            "ignore_failure": t2_ignore,
        }
    return {
        "description": description,
        "tasks": [
            task("T1"),
            task("T2", [("T1", "ended_or_error")], **t2),
            task("T3", [("T2", "ended")]),
            task("T4", [("T2", "ended")]),
            task("T5", [("T2", "error")]),
            task("T6", [("T3", "error")]),
            task("T7", [("T3", "ended"), ("T4", "ended")], condition_type="all"),
        ],
    }


def statuses(job: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["status"] for t in job["tasks"]}


@pytest.fixture(scope="module")
def two_servers(pg_cluster: Cluster) -> Iterator[tuple[Cluster, set[str]]]:
    """Two batch servers with one thread each, serving the default group."""
    names = {unique("wt-a-"), unique("wt-b-")}
    hostnames = [pg_cluster.start_worker(name) for name in sorted(names)]
    yield pg_cluster, names
    for hostname in hostnames:
        pg_cluster.stop(hostname)


class TestWalkthrough:
    def test_it_runs_all_tasks_that_succeed(self, two_servers):
        cluster, servers = two_servers
        [job_id] = cluster.import_jobs(walkthrough("walkthrough: all succeed"))
        assert cluster.wait(job_id) == "ended"
        job = cluster.show(job_id)
        assert statuses(job) == {
            "T1": "ended", "T2": "ended", "T3": "ended", "T4": "ended",
            "T5": "not_run", "T6": "not_run", "T7": "ended",
        }  # fmt: skip
        assert {t["server"] for t in job["tasks"] if t["status"] == "ended"} <= servers
        # T7 needs both T3 and T4 (All): it starts after both ended.
        by_key = {t["key"]: t for t in job["tasks"]}
        assert by_key["T7"]["started_at"] >= max(by_key["T3"]["ended_at"], by_key["T4"]["ended_at"])

    def test_it_runs_the_error_branch_when_t2_fails(self, two_servers):
        cluster, _ = two_servers
        [job_id] = cluster.import_jobs(walkthrough("walkthrough: T2 fails", t2_fails=True))
        assert cluster.wait(job_id) == "error"
        assert statuses(cluster.show(job_id)) == {
            "T1": "ended", "T2": "error", "T3": "not_run", "T4": "not_run",
            "T5": "ended", "T6": "not_run", "T7": "not_run",
        }  # fmt: skip

    def test_it_ends_the_job_when_the_failure_is_ignored(self, two_servers):
        cluster, _ = two_servers
        data = walkthrough("walkthrough: T2 fails, ignored", t2_fails=True, t2_ignore=True)
        [job_id] = cluster.import_jobs(data)
        assert cluster.wait(job_id) == "ended"
        assert statuses(cluster.show(job_id))["T5"] == "ended"

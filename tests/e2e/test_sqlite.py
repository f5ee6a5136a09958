"""The zero-setup default: SQLite with beat and two workers writing at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, migrate, unique


@pytest.fixture
def sqlite_cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(f"sqlite:///{tmp_path / 'batchadmin.sqlite3'}", tmp_path)
    try:
        migrate(cluster.env)
        cluster.start_beat()
        yield cluster
    finally:
        cluster.stop_all()


def test_it_runs_jobs_on_sqlite_without_locking_errors(sqlite_cluster):
    cluster = sqlite_cluster
    for name in (unique("lite-a-"), unique("lite-b-")):
        cluster.start_worker(name, concurrency=2, wait=False)
    chain = [
        {"key": f"C{i}", "description": f"chain {i}", "process": "demo.log", "parameters": {"lines": 5},
         "conditions": [{"task": f"C{i - 1}", "status": "ended"}] if i else []}
        for i in range(20)
    ]  # fmt: skip
    fan = [
        {"key": f"F{i}", "description": f"fan {i}", "process": "demo.noop", "max_retries": 1}
        for i in range(60)
    ]
    # Several jobs imported while the workers and beat already write.
    job_ids = [
        cluster.import_jobs({"description": f"sqlite {n}", "tasks": chain + fan})[0]
        for n in range(3)
    ]
    for job_id in job_ids:
        assert cluster.wait(job_id, timeout=120) == "ended"
        assert all(t["retries"] == 0 for t in cluster.show(job_id)["tasks"])
    assert "database is locked" not in cluster.logs()

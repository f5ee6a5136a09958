"""Scheduling priority with a real worker, beat, PostgreSQL and Redis: when more tasks are ready
than threads are free, High starts before Low, and aging keeps Low from being starved."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.e2e.cluster import Cluster, unique


def sleep_job(name: str, group: str, seconds: float, *, start: dt.datetime, **job: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "description": name,
        "scheduled_start": start.isoformat(),
        "tasks": [
            {
                "key": "T1",
                "process": "demo.sleep",
                "parameters": {"seconds": seconds},
                "group": group,
            }  # fmt: skip
        ],
        **job,
    }


def started(cluster: Cluster, job_ids: list[int]) -> dict[int, dt.datetime]:
    rows = cluster.rows(
        "SELECT job_id, started_at FROM jobs_batchtask WHERE job_id = ANY(%s)", job_ids
    )
    return dict(rows)


def restart_beat(cluster: Cluster, env: dict[str, str]) -> None:
    """The session's beat again, with these settings (the tick runs in beat)."""
    cluster.stop("beat")
    saved = cluster.env
    cluster.env = {**saved, **env}
    try:
        cluster.start_beat()
    finally:
        cluster.env = saved


def test_high_priority_tasks_start_before_low_ones(cluster):
    server, group = unique("prio-"), unique("Prio-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    cluster.start_worker(server, concurrency=1)
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(seconds=2)
    # The blocker holds the only thread while the six others become ready, Low ones first.
    jobs = [sleep_job("blocker", group, 6, start=now)]
    jobs += [sleep_job(f"low {i}", group, 0.1, start=later, priority="low") for i in range(3)]
    jobs += [
        sleep_job(f"high {i}", group, 0.1, start=later + dt.timedelta(seconds=1), priority="high")
        for i in range(3)
    ]
    blocker, *others = cluster.import_jobs({"jobs": jobs})
    low, high = others[:3], others[3:]
    for job_id in others:
        assert cluster.wait(job_id, timeout=90) == "ended"
    blocker_end = cluster.scalar("SELECT ended_at FROM jobs_batchtask WHERE job_id = %s", blocker)
    ready = cluster.rows("SELECT ready_at FROM jobs_batchtask WHERE job_id = ANY(%s)", others)
    assert all(at < blocker_end for (at,) in ready), "not all were queued behind the blocker"
    starts = started(cluster, others)
    assert max(starts[j] for j in high) < min(starts[j] for j in low), (
        f"High must start before Low: {sorted(starts.items(), key=lambda kv: kv[1])}"
    )


def test_aging_keeps_a_low_task_from_being_starved_by_a_stream_of_high_ones(cluster):
    server, group = unique("aging-"), unique("Aging-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    restart_beat(cluster, {"BATCH_PRIORITY_AGING_SECONDS": "2"})
    try:
        cluster.start_worker(server, concurrency=1)
        now = dt.datetime.now(dt.UTC)
        jobs = [sleep_job("blocker", group, 3, start=now)]
        jobs.append(sleep_job("low", group, 0.1, start=now + dt.timedelta(seconds=1), priority="low"))  # fmt: skip
        # A High task arrives every 0.8 s and each runs 1 s: one is always waiting.
        jobs += [
            sleep_job(
                f"high {i}", group, 1.0, start=now + dt.timedelta(seconds=1.5 + 0.8 * i), priority="high"
            )
            for i in range(16)
        ]  # fmt: skip
        _, low, *high = cluster.import_jobs({"jobs": jobs})
        assert cluster.wait(low, timeout=90) == "ended"
        for job_id in high:
            assert cluster.wait(job_id, timeout=90) == "ended"
        starts = started(cluster, [low, *high])
        after_low = [j for j in high if starts[j] > starts[low]]
        assert after_low, "the Low task started only after the whole High stream"
        # It moved up the queue while it waited: a message was sent again at a higher step.
        dispatched, ready = cluster.rows(
            "SELECT dispatched_at, ready_at FROM jobs_batchtask WHERE job_id = %s", low
        )[0]
        assert dispatched > ready
    finally:
        restart_beat(cluster, {})

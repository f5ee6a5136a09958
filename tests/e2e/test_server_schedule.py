"""Server schedules and group changes reach running workers without a restart."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

from tests.e2e.cluster import Cluster, unique, wait_for


def set_schedule(cluster: Cluster, server: str, rows: list[tuple[dt.time, dt.time, int]]) -> None:
    """Replace the server's schedule rows, as the server form's row editor would."""
    cluster.rows(
        "DELETE FROM servers_batchserverschedule WHERE server_id ="
        " (SELECT id FROM servers_batchserver WHERE name = %s) RETURNING id",
        server,
    )
    for start, end, threads in rows:
        cluster.rows(
            "INSERT INTO servers_batchserverschedule (server_id, start_time, end_time, max_threads)"
            " SELECT id, %s, %s, %s FROM servers_batchserver WHERE name = %s RETURNING id",
            start, end, threads, server,
        )  # fmt: skip


def hours_from_now(cluster: Cluster, hours: float) -> dt.time:
    """A wall-clock time in UTC (the servers' default zone), from the database's clock."""
    db_now: dt.datetime = cluster.scalar("SELECT now()")
    when = db_now.astimezone(dt.UTC) + dt.timedelta(hours=hours)
    return when.time().replace(second=0, microsecond=0)


def replica_threads(cluster: Cluster, hostname: str) -> int | None:
    rows = cluster.rows(
        "SELECT concurrency FROM servers_batchserverreplica WHERE hostname = %s", hostname
    )
    return rows[0][0] if rows else None


def pool_processes(cluster: Cluster, hostname: str) -> int:
    """The prefork children of the replica's main process, counted from /proc."""
    pid = cluster.scalar("SELECT pid FROM servers_batchserverreplica WHERE hostname = %s", hostname)
    children = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # The fields after the command name, which may hold spaces: state, ppid, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended while we looked
        children += int(fields[1]) == pid
    return children


def statuses(cluster: Cluster, job_id: int) -> dict[str, int]:
    return dict(
        cluster.rows(
            "SELECT status, count(*) FROM jobs_batchtask WHERE job_id = %s GROUP BY status", job_id
        )
    )


def sleepers(group: str, n: int, seconds: float) -> list[dict[str, Any]]:
    return [
        {"key": f"T{i}", "description": f"{i}", "process": "demo.sleep",
         "parameters": {"seconds": seconds}, "group": group}
        for i in range(n)
    ]  # fmt: skip


def assert_each_task_ended_once(cluster: Cluster, job_id: int) -> None:
    runs = cluster.rows(
        "SELECT t.key, count(*), count(*) FILTER (WHERE r.status = 'ended')"
        " FROM jobs_batchtask t JOIN jobs_batchtaskrun r ON r.task_id = t.id"
        " WHERE t.job_id = %s GROUP BY t.key",
        job_id,
    )
    tasks = cluster.scalar("SELECT count(*) FROM jobs_batchtask WHERE job_id = %s", job_id)
    assert len(runs) == tasks
    assert all((n, ended) == (1, 1) for _, n, ended in runs), runs


def test_it_applies_the_server_schedule_to_the_running_worker(cluster):
    server, group = unique("sched-"), unique("SG-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    hostname = cluster.start_worker(server, concurrency=3)
    wait_for(lambda: replica_threads(cluster, hostname) == 3, timeout=30, what="3 threads")

    # A window covering now, 1 thread: the running worker shrinks to it.
    set_schedule(cluster, server, [(hours_from_now(cluster, -1), hours_from_now(cluster, 1), 1)])
    wait_for(lambda: replica_threads(cluster, hostname) == 1, timeout=30, what="1 thread")
    wait_for(lambda: pool_processes(cluster, hostname) == 1, timeout=30, what="the pool to shrink")
    [job_id] = cluster.import_jobs({"description": "one at a time", "tasks": sleepers(group, 4, 3)})

    most = 0

    def executing() -> int:
        nonlocal most
        n = statuses(cluster, job_id).get("executing", 0)
        most = max(most, n)
        return n

    wait_for(executing, timeout=60, what="a task to execute")
    # The window closes: the running task finishes, the others stay Ready.
    set_schedule(cluster, server, [(hours_from_now(cluster, 2), hours_from_now(cluster, 3), 4)])
    wait_for(lambda: replica_threads(cluster, hostname) == 0, timeout=30, what="0 threads")
    wait_for(lambda: executing() == 0, timeout=60, what="the running task to finish")
    ended = statuses(cluster, job_id).get("ended", 0)
    time.sleep(4)  # four heartbeats and a redispatch: nothing new may start
    after = statuses(cluster, job_id)
    assert after.get("executing", 0) == 0
    assert after.get("ended", 0) == ended >= 1
    assert after.get("ready", 0) == 4 - ended >= 1

    # The window opens again: the worker resumes, still one task at a time.
    set_schedule(cluster, server, [(hours_from_now(cluster, -1), hours_from_now(cluster, 1), 1)])
    wait_for(lambda: replica_threads(cluster, hostname) == 1, timeout=30, what="1 thread again")
    wait_for(
        lambda: executing() == 0 and statuses(cluster, job_id) == {"ended": 4},
        timeout=90,
        what="the job's tasks to end",
        every=0.1,
    )
    assert cluster.wait(job_id) == "ended"
    assert most == 1
    assert_each_task_ended_once(cluster, job_id)

    # Without schedule rows the worker's own -c applies again: the pool grows back.
    set_schedule(cluster, server, [])
    wait_for(lambda: replica_threads(cluster, hostname) == 3, timeout=30, what="3 threads again")
    wait_for(lambda: pool_processes(cluster, hostname) == 3, timeout=30, what="the pool to grow")


def test_it_moves_a_group_between_running_servers_without_losing_a_task(cluster):
    s1, s2, group = unique("aff1-"), unique("aff2-"), unique("AG-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [s1]}]})
    cluster.start_worker(s1, concurrency=2)
    cluster.start_worker(s2, concurrency=2)
    [job_id] = cluster.import_jobs({"description": "stream", "tasks": sleepers(group, 60, 0.5)})

    def ended_on(server: str) -> int:
        return int(
            cluster.scalar(
                "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
                " JOIN servers_batchserver s ON s.id = r.server_id"
                " WHERE t.job_id = %s AND s.name = %s AND r.status = 'ended'",
                job_id,
                server,
            )
        )

    wait_for(lambda: ended_on(s1) >= 4, timeout=60, what="S1 to run part of the stream")
    # As the group form does: the group's servers become [S2].
    cluster.import_jobs({"groups": [{"code": group, "servers": [s2]}]})
    moved_at = cluster.scalar("SELECT now()")
    assert cluster.wait(job_id, timeout=120) == "ended"
    assert_each_task_ended_once(cluster, job_id)
    assert ended_on(s2) > 0
    late_on_s1 = cluster.scalar(
        "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
        " JOIN servers_batchserver s ON s.id = r.server_id"
        " WHERE t.job_id = %s AND s.name = %s AND r.started_at > %s",
        job_id,
        s1,
        moved_at + dt.timedelta(seconds=5),
    )
    assert late_on_s1 == 0  # S1 stopped taking the group within a few seconds


def test_it_starts_a_replica_at_the_size_of_the_window_in_force(cluster):
    small, closed = unique("start1-"), unique("start0-")
    cluster.import_jobs({"groups": [{"code": unique("SG-"), "servers": [small, closed]}]})
    set_schedule(cluster, small, [(hours_from_now(cluster, -1), hours_from_now(cluster, 1), 1)])
    set_schedule(cluster, closed, [(hours_from_now(cluster, 2), hours_from_now(cluster, 3), 2)])
    one = cluster.start_worker(small, concurrency=3)
    zero = cluster.start_worker(closed, concurrency=3)
    # Forked with 1 process from the start, not shrunk after taking tasks at -c 3.
    assert pool_processes(cluster, one) == 1
    assert replica_threads(cluster, one) == 1
    assert pool_processes(cluster, zero) == 1
    assert replica_threads(cluster, zero) == 0
    assert cluster.scalar(
        "SELECT queues FROM servers_batchserverreplica WHERE hostname = %s", zero
    ) == ["batchadmin.alerts"]

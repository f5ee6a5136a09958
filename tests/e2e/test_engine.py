"""The engine end to end: real workers, a real beat, PostgreSQL and Redis, driven by the CLI."""

from __future__ import annotations

import json
import time
from typing import Any

import redis
from kombu.transport.redis import Channel as RedisChannel

from batchadmin.engine.priority import STEPS
from batchadmin.servers.models import Priority
from tests.e2e.cluster import REDIS_URL, Cluster, unique, wait_for


def test_it_retries_flaky_tasks_up_to_maximum_retries(cluster):
    cluster.start_worker(unique("flaky-"))

    def job(description: str, max_retries: int) -> dict[str, Any]:
        return {
            "description": description,
            "tasks": [
                {"key": "F", "description": "flaky", "process": "demo.flaky",
                 "parameters": {"failures": 2}, "max_retries": max_retries}
            ],
        }  # fmt: skip

    enough, too_few = cluster.import_jobs(
        {"jobs": [job("flaky, 3 retries", 3), job("flaky, 1 retry", 1)]}
    )
    assert cluster.wait(enough) == "ended"
    assert cluster.show(enough)["tasks"][0]["retries"] == 2
    assert cluster.wait(too_few) == "error"
    task = cluster.show(too_few)["tasks"][0]
    assert (task["status"], task["retries"]) == ("error", 1)
    # Every attempt has its own history row with the error of that attempt.
    attempts = cluster.rows(
        "SELECT r.attempt, r.status, r.error_message FROM jobs_batchtaskrun r"
        " JOIN jobs_batchtask t ON t.id = r.task_id WHERE t.job_id = %s ORDER BY r.attempt",
        enough,
    )
    assert [(a, s) for a, s, _ in attempts] == [(1, "error"), (2, "error"), (3, "ended")]
    assert "attempt 1" in attempts[0][2]


def test_it_routes_batch_groups_to_their_servers(cluster):
    """D365's batch-group walkthrough: BG1 on AOS2 and AOS3 only; AOS1 runs the default group."""
    aos1, aos2, aos3, bg1 = unique("aos1-"), unique("aos2-"), unique("aos3-"), unique("BG1-")
    cluster.import_jobs(
        {"groups": [{"code": bg1, "description": "Reporting", "servers": [aos2, aos3]}]}
    )
    for name in (aos1, aos2, aos3):
        cluster.start_worker(name)

    def tasks(group: str, n: int) -> list[dict[str, Any]]:
        return [
            {"key": f"{group or 'default'}-{i}", "description": f"{i}", "process": "demo.sleep",
             "parameters": {"seconds": 0.3}, "group": group}
            for i in range(n)
        ]  # fmt: skip

    [job_id] = cluster.import_jobs(
        {"description": "group affinity", "tasks": tasks(bg1, 6) + tasks("", 4)}
    )
    assert cluster.wait(job_id) == "ended"
    ran_on = {t["key"]: t["server"] for t in cluster.show(job_id)["tasks"]}
    assert {s for k, s in ran_on.items() if k.startswith(bg1)} <= {aos2, aos3}
    assert {s for k, s in ran_on.items() if k.startswith("default")} == {aos1}

    # Assign the default group to AOS2 as well: its running replica follows within a heartbeat.
    cluster.import_jobs({"groups": [{"code": "default", "servers": [aos1, aos2]}]})
    wait_for(
        lambda: "batch.default" in json.dumps(cluster.scalar(
            "SELECT queues FROM servers_batchserverreplica WHERE hostname = %s", f"{aos2}@e2e"
        )),
        timeout=15, what="AOS2 to consume the default queue",
    )  # fmt: skip
    time.sleep(1)  # the add_consumer broadcast is handled by the worker's event loop
    [job_id] = cluster.import_jobs({"description": "default on two", "tasks": tasks("", 8)})
    assert cluster.wait(job_id) == "ended"
    assert {t["server"] for t in cluster.show(job_id)["tasks"]} == {aos1, aos2}


def test_it_recovers_a_task_from_a_killed_server(cluster):
    """SIGKILL the server in the middle of a task: it is retried elsewhere, or errors."""
    a, b = unique("kill-a-"), unique("kill-b-")
    cluster.start_worker(a)
    cluster.start_worker(b)
    sleeper = {"process": "demo.sleep", "parameters": {"seconds": 4}}
    retried, failed = cluster.import_jobs(
        {"jobs": [
            {"description": "killed, 1 retry", "tasks": [{"key": "S", "description": "s", "max_retries": 1, **sleeper}]},
            {"description": "killed, no retry", "tasks": [{"key": "S", "description": "s", **sleeper}]},
        ]}
    )  # fmt: skip
    victims = wait_for(
        lambda: _executing_servers(cluster, retried, failed),
        timeout=30,
        what="both tasks executing",
    )
    assert set(victims.values()) == {a, b}
    killed = victims[retried]
    cluster.kill(f"{killed}@e2e")
    killed_at = time.monotonic()
    survivor = b if killed == a else a
    cluster.start_worker(unique("kill-c-"))  # a fresh server for the retry if needed

    # Bounded: lease (3 s) + one tick (1 s) + claim; documented in the README.
    # Read by SQL: a `batch show` per poll takes seconds on a loaded machine (see below).
    wait_for(
        lambda: _executing_servers(cluster, retried) is None or None,
        timeout=15, what="the lost task to leave Executing",
    )  # fmt: skip
    assert time.monotonic() - killed_at < 10
    assert cluster.wait(retried) == "ended"
    task = cluster.show(retried)["tasks"][0]
    assert task["retries"] == 1 and task["server"] != killed
    assert cluster.wait(failed) == "ended"  # the survivor's task was not disturbed
    assert cluster.show(failed)["tasks"][0]["server"] == survivor


def test_it_errors_a_lost_task_without_retries_left(cluster):
    a = unique("lost-")
    cluster.start_worker(a)
    [job_id] = cluster.import_jobs(
        {"description": "lost, no retries",
         "tasks": [{"key": "S", "description": "s", "process": "demo.sleep", "parameters": {"seconds": 5}}]}
    )  # fmt: skip
    wait_for(lambda: _executing_servers(cluster, job_id), timeout=30, what="task executing")
    cluster.kill(f"{a}@e2e")
    assert cluster.wait(job_id, timeout=20) == "error"
    [(message,)] = cluster.rows(
        "SELECT r.error_message FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
        " WHERE t.job_id = %s",
        job_id,
    )
    assert "Batch server lost" in message


def test_it_runs_a_twice_delivered_message_once(cluster):
    """The same broker message delivered twice (and to two servers) runs the process once."""
    group, a, b = unique("dup-"), unique("dup-a-"), unique("dup-b-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [a, b]}]})
    [job_id] = cluster.import_jobs(
        {"description": "duplicate delivery",
         "tasks": [{"key": "L", "description": "log", "process": "demo.log", "parameters": {"lines": 3}, "group": group}]}
    )  # fmt: skip
    # No server of the group runs yet: beat starts the job and the message waits in the queue.
    # The Redis list of Normal's priority step (priority.py): kombu names it queue + sep + step.
    queue = f"batch.{group}{RedisChannel.sep}{STEPS[Priority.NORMAL]}"
    broker = redis.Redis.from_url(REDIS_URL)
    [message] = wait_for(lambda: broker.lrange(queue, 0, -1), timeout=15, what="the task message")
    broker.lpush(queue, message)  # the very same message, delivered a second time
    assert broker.llen(queue) == 2
    cluster.start_worker(a, wait=False)
    cluster.start_worker(b)
    assert cluster.wait(job_id) == "ended"
    wait_for(lambda: broker.llen(queue) == 0, timeout=15, what="both messages consumed")
    runs = cluster.scalar(
        "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
        " WHERE t.job_id = %s",
        job_id,
    )
    lines = cluster.scalar(
        "SELECT count(*) FROM jobs_batchlogentry l JOIN jobs_batchtaskrun r ON r.id = l.task_run_id"
        " JOIN jobs_batchtask t ON t.id = r.task_id WHERE t.job_id = %s",
        job_id,
    )
    assert (runs, lines) == (1, 3)


def test_it_cancels_a_running_job(cluster):
    cluster.start_worker(unique("cancel-"))
    [job_id] = cluster.import_jobs(
        {"description": "cancel me", "tasks": [
            {"key": "S", "description": "long", "process": "demo.sleep", "parameters": {"seconds": 60}},
            {"key": "N", "description": "after", "process": "demo.noop", "conditions": [{"task": "S", "status": "ended"}]},
        ]}
    )  # fmt: skip
    wait_for(lambda: _executing_servers(cluster, job_id), timeout=30, what="task executing")
    assert cluster.cli("status", str(job_id), "cancel").stdout.strip() == "canceling"
    assert cluster.wait(job_id, timeout=15) == "canceled"
    assert statuses(cluster.show(job_id)) == {"S": "canceled", "N": "not_run"}
    illegal = cluster.cli("status", str(job_id), "cancel", check=False)
    assert illegal.returncode == 1 and "Canceled" in illegal.stderr


def statuses(job: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["status"] for t in job["tasks"]}


def _executing_servers(cluster: Cluster, *job_ids: int) -> dict[int, str] | None:
    """The server of each job's (one) executing task, or None while one is not executing.

    Read by SQL, not `batch show`: a command's start-up takes seconds on a loaded machine, as
    long as the few seconds a task executes in these tests."""
    rows = cluster.rows(
        "SELECT t.job_id, t.status, s.name FROM jobs_batchtask t "
        "LEFT JOIN servers_batchserver s ON s.id = t.server_id WHERE t.job_id = ANY(%s)",
        list(job_ids),
    )
    found = {job_id: server for job_id, status, server in rows if status == "executing"}
    return found if len(found) == len(job_ids) else None


def test_a_big_job_runs_its_tasks_in_shared_messages_each_once(cluster):
    """64 tasks released at once go two to a message (engine/batches.py); every task still
    runs exactly once, on both servers."""
    a, b = unique("batch-a-"), unique("batch-b-")
    cluster.start_worker(a)
    cluster.start_worker(b)
    [job_id] = cluster.import_jobs(
        {"description": "many at once", "tasks": [
            {"key": f"T{i}", "description": f"{i}", "process": "demo.sleep",
             "parameters": {"seconds": 0.05}}
            for i in range(64)
        ]}
    )  # fmt: skip
    assert cluster.wait(job_id) == "ended"
    rows = cluster.rows(
        "SELECT r.task_id, r.attempt, r.status, s.name FROM jobs_batchtaskrun r"
        " JOIN jobs_batchtask t ON t.id = r.task_id"
        " LEFT JOIN servers_batchserver s ON s.id = r.server_id WHERE t.job_id = %s",
        job_id,
    )
    assert len(rows) == 64 and len({task for task, *_ in rows}) == 64
    assert {(attempt, status) for _, attempt, status, _ in rows} == {(1, "ended")}
    assert {server for *_, server in rows} == {a, b}


def test_a_chain_runs_on_in_the_process_that_released_each_task(cluster):
    """Nobody else waits in the queue: each finish keeps the task it released and its process
    runs it next, in the same Celery message (BATCH_FOLLOW_ON_SECONDS); a worker with it off
    sends every release through the broker."""
    keeps, sends = unique("follow-"), unique("sends-")
    for server, follow_on in ((keeps, "2"), (sends, "0")):
        cluster.import_jobs(
            {"groups": [{"code": server, "description": server, "servers": [server]}]}
        )
        cluster.start_worker(server, env={"BATCH_FOLLOW_ON_SECONDS": follow_on})
        chain = [{"key": "T0", "description": "first", "process": "demo.noop",
                  "group": server}] + [
            {"key": f"T{i}", "description": f"after {i - 1}", "process": "demo.noop",
             "group": server, "conditions": [{"task": f"T{i - 1}", "status": "ended"}]}
            for i in range(1, 5)
        ]  # fmt: skip
        [job_id] = cluster.import_jobs({"description": f"chain on {server}", "tasks": chain})
        assert cluster.wait(job_id) == "ended"
        messages = cluster.rows(
            "SELECT DISTINCT r.celery_task_id FROM jobs_batchtaskrun r"
            " JOIN jobs_batchtask t ON t.id = r.task_id WHERE t.job_id = %s",
            job_id,
        )
        assert (
            cluster.scalar(
                "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
                " WHERE t.job_id = %s AND r.status = 'ended'",
                job_id,
            )
            == 5
        )
        assert len(messages) == (1 if follow_on == "2" else 5)

"""The scheduler tick's cost against the size of the history: it must not grow with finished rows.

    .venv/bin/python bench/tick_cost.py [--sizes 10000,100000] [--ticks 50]

Creates a private database, puts a small live load in it (one running job: a task executing,
two ready with their messages sent, three waiting on them; one job waiting for tomorrow), then
for each size fills the history up to that many finished task attempts (BatchTaskRun rows; with
them finished jobs, their runs, tasks and one log line per attempt, ``--tasks-per-job`` tasks a
job) and measures, in this process, ``batchadmin.engine.tick.tick``: wall time of each of
``--ticks`` ticks (median, p95) and the queries it issues; then the same per handler, to show
which one grows. The alert checks run by the tick every 30 s are timed unthrottled
(``check_long_running``, ``check_unserved``). A handler whose median grows by more than
``--growth`` between the smallest and the largest size gets its slowest query EXPLAIN ANALYZEd.
Last, ``--due-jobs`` Waiting jobs (chains of ``--due-job-tasks``) all due at once are started by
one ``handle_due_jobs``: the cost per job of a mass release, which beat pays inside one tick.

No workers or beat run: the tick is called directly, which is what beat does every second.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PrivateDatabase,
    analyze,
    explain,
    fill_due_jobs,
    fill_finished_jobs,
    load_average,
    median,
    percentile,
    scalar,
)
from bench.common import (
    sql as sql_rows,
)
from bench.engine_vs_celery import BenchError, require_empty_redis, step, table


@dataclass
class Timing:
    ms: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")  # seconds, SQL

    def add(self, seconds: float, captured: list[dict[str, str]]) -> None:
        self.ms.append(seconds * 1000)
        self.queries.append(len(captured))
        for q in captured:
            if float(q["time"]) > self.slowest[0]:
                self.slowest = (float(q["time"]), q["sql"])


def handlers() -> list[tuple[str, Callable[[dt.datetime], Any]]]:
    from batchadmin.alerts import delivery, stuck
    from batchadmin.engine import tick

    return [
        ("handle_due_jobs", tick.handle_due_jobs),
        ("handle_expired_leases", tick.handle_expired_leases),
        ("handle_overdue_tasks", tick.handle_overdue_tasks),
        ("handle_ready_tasks", tick.handle_ready_tasks),
        ("handle_lost_messages", tick.handle_lost_messages),
        ("handle_stranded_tasks", lambda at: tick.handle_stranded_tasks()),
        ("handle_stranded_jobs", tick.handle_stranded_jobs),
        ("stuck.check_long_running (every 30 s)", stuck.check_long_running),
        ("stuck.check_unserved (every 30 s)", stuck.check_unserved),
        ("delivery.handle_undelivered", delivery.handle_undelivered),
    ]


def live_load() -> None:
    """What the tick has to look at on a quiet day: one running job and one job for tomorrow."""
    from django.utils.timezone import now

    from batchadmin.jobs.models import (
        BatchJob,
        BatchJobRun,
        BatchStatus,
        BatchTask,
        BatchTaskCondition,
    )
    from batchadmin.servers.models import BatchGroup

    S = BatchStatus
    at = now()
    group = BatchGroup.objects.default()
    job = BatchJob.objects.create(
        description="bench: running job", status=S.EXECUTING, scheduled_start=at, started_at=at
    )
    run = BatchJobRun.objects.create(job=job, status=S.EXECUTING, scheduled_start=at)
    job.current_run = run
    job.save(update_fields=["current_run"])

    def task(key: str, status: str, **extra: Any) -> BatchTask:
        return BatchTask.objects.create(
            job=job,
            key=key,
            description=key,
            process="demo.noop",
            group=group,
            status=status,
            **extra,
        )

    task(
        "running",
        S.EXECUTING,
        attempt=1,
        started_at=at,
        hostname="benchA@bench",
        lease_expires_at=at + dt.timedelta(days=1),
        deadline_at=at + dt.timedelta(days=1),
    )
    ready = [task(f"ready{i}", S.READY, ready_at=at, dispatched_at=at) for i in range(2)]
    for i in range(3):
        waiting = task(f"waiting{i}", S.WAITING)
        BatchTaskCondition.objects.create(task=waiting, depends_on=ready[i % 2])
    later = BatchJob.objects.create(
        description="bench: tomorrow", status=S.WAITING, scheduled_start=at + dt.timedelta(days=1)
    )
    BatchTask.objects.create(job=later, key="t", description="t", process="demo.noop", group=group)


def measure(ticks: int) -> dict[str, Timing]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils.timezone import now

    from batchadmin.engine import tick

    results: dict[str, Timing] = {"tick": Timing()}
    tick.tick()  # warm: imports, connection, the throttled alert checks' first run
    for _ in range(ticks):
        with CaptureQueriesContext(connection) as cq:
            t0 = time.perf_counter()
            tick.tick()
            elapsed = time.perf_counter() - t0
        results["tick"].add(elapsed, cq.captured_queries)
    for name, handler in handlers():
        timing = results.setdefault(name, Timing())
        handler(now())  # warm
        for _ in range(ticks):
            at = now()
            with CaptureQueriesContext(connection) as cq:
                t0 = time.perf_counter()
                handler(at)
                elapsed = time.perf_counter() - t0
            timing.add(elapsed, cq.captured_queries)
    return results


def release_due_jobs(args: argparse.Namespace) -> str:
    """One tick's handle_due_jobs over many due jobs at once: what releasing them costs beat.

    Starting a job publishes its root tasks' messages to the broker (``--redis-db``, flushed
    afterwards).
    """
    import redis
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils.timezone import now

    from batchadmin.engine import tick

    n, k = args.due_jobs, args.due_job_tasks
    step(f"releasing {n} due jobs of {k} chained tasks in one handle_due_jobs")
    fill_due_jobs(n, k)
    analyze()
    with CaptureQueriesContext(connection) as cq:
        t0 = time.perf_counter()
        started = tick.handle_due_jobs(now())
        elapsed = time.perf_counter() - t0
    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    sql_ms = sum(float(q["time"]) for q in cq.captured_queries) * 1000
    return (
        f"handle_due_jobs with {n} due jobs of {k} chained tasks: started {started} in "
        f"{elapsed:.2f}s ({elapsed * 1000 / max(started, 1):.1f} ms and "
        f"{len(cq.captured_queries) / max(started, 1):.1f} queries per job, "
        f"{sql_ms / max(started, 1):.1f} ms of it in SQL); BATCH_TICK_LIMIT bounds a tick to "
        "that many jobs, and beat does nothing else meanwhile."
    )


def history_rows() -> dict[str, int]:
    tables = ["batchjob", "batchjobrun", "batchtask", "batchtaskrun", "batchlogentry"]
    counts = {t: int(scalar(f"SELECT count(*) FROM jobs_{t}")) for t in tables}
    counts["alertevent"] = int(scalar("SELECT count(*) FROM alerts_alertevent"))
    return counts


def run(args: argparse.Namespace) -> int:
    db = PrivateDatabase(args.db_name, args.redis_db, keep=args.keep_db)
    # The due-jobs figure publishes messages and then flushes the broker's database.
    broker_url = db.env["CELERY_BROKER_URL"]
    try:
        import redis

        require_empty_redis(redis.Redis.from_url(broker_url), broker_url)
        step(f"database {db.name}")
        db.create()
        live_load()
        by_size: dict[int, dict[str, Timing]] = {}
        counts: dict[int, dict[str, int]] = {}
        for size in args.sizes:
            have = int(scalar("SELECT count(*) FROM jobs_batchtaskrun"))
            jobs = max(0, size - have) // args.tasks_per_job
            step(f"filling history to {size:,} finished task attempts ({jobs:,} jobs)")
            t0 = time.monotonic()
            fill_finished_jobs(jobs, args.tasks_per_job)
            analyze()
            step(f"  filled in {time.monotonic() - t0:.1f}s; measuring {args.ticks} ticks")
            counts[size] = history_rows()
            by_size[size] = measure(args.ticks)
        release = release_due_jobs(args) if args.due_jobs else None
        print()
        print(report(args, by_size, counts))
        if release:
            print()
            print(release)
        return 0
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        db.drop()


def report(
    args: argparse.Namespace,
    by_size: dict[int, dict[str, Timing]],
    counts: dict[int, dict[str, int]],
) -> str:
    sizes = list(by_size)
    first, last = sizes[0], sizes[-1]
    lines = [
        f"scheduler tick cost against history size ({load_average()}; other processes share "
        "the cores, so single figures jitter)",
        "",
    ]
    for size in sizes:
        c = counts[size]
        lines.append(
            f"{size:>9,} task attempts: {c['batchjob']:,} jobs, {c['batchjobrun']:,} job runs, "
            f"{c['batchtask']:,} tasks, {c['batchtaskrun']:,} task runs, "
            f"{c['batchlogentry']:,} log lines, {c['alertevent']:,} alert events"
        )
    lines.append("")
    header = ["", *(f"{s:,}: med / p95 ms, queries" for s in sizes), "growth"]
    rows: list[Sequence[str]] = [header]
    grown: list[str] = []
    for name in by_size[first]:
        cells = [name]
        for size in sizes:
            t = by_size[size][name]
            cells.append(f"{median(t.ms):.2f} / {percentile(t.ms, 95):.2f}, {max(t.queries)}")
        a, b = median(by_size[first][name].ms), median(by_size[last][name].ms)
        ratio = b / a if a > 0 else 1.0
        cells.append(f"x{ratio:.2f}")
        if name != "tick" and ratio > args.growth and b - a > 0.5:
            grown.append(name)
        rows.append(cells)
    lines += table(rows)
    lines += [
        "",
        f"{args.ticks} ticks per size; 'tick' is the whole tick.tick (alert checks throttled "
        "to every 30 s, so they run at most once in it); the handler rows time each handler "
        "alone. growth = median at the largest size / median at the smallest.",
    ]
    if not grown:
        lines.append(
            f"no handler's median grew by more than x{args.growth:g} (and 0.5 ms): the tick's "
            "cost does not depend on the number of finished rows."
        )
    lines += ["", f"how each handler's slowest query reads the tables at {last:,} (EXPLAIN):"]
    for name, timing in by_size[last].items():
        if name != "tick" and timing.slowest[1].lstrip().upper().startswith("SELECT"):
            lines.append(f"  {name}: {plan_summary(timing.slowest[1])}")
    for name in grown:
        seconds, statement = by_size[last][name].slowest
        lines += [
            "",
            f"{name} grows: its slowest query at {last:,} ({seconds * 1000:.1f} ms):",
            statement,
        ]
        if statement.lstrip().upper().startswith("SELECT"):
            lines += ["EXPLAIN ANALYZE:", explain(statement)]
    return "\n".join(lines)


def plan_summary(statement: str) -> str:
    """The scans of a query's plan: an index (fine) or a sequential scan (grows with the table)."""
    plan = sql_rows("EXPLAIN " + statement)
    scans = []
    for (line,) in plan:
        m = re.search(
            r"((?:Parallel )?Seq Scan on \S+|Index(?: Only)? Scan(?: Backward)? using \S+ on \S+"
            r"|Bitmap Index Scan on \S+)",
            line,
        )
        if m and m.group(1) not in scans:
            scans.append(m.group(1))
    return "; ".join(scans) or "no table scan"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure the scheduler tick against the size of the history.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--sizes",
        default="10000,100000",
        help="Finished task attempts (BatchTaskRun rows) to measure at, ascending, comma-separated.",
    )
    p.add_argument("--tasks-per-job", type=int, default=10, help="Tasks of each finished job.")
    p.add_argument("--ticks", type=int, default=50, help="Ticks measured per size.")
    p.add_argument(
        "--growth", type=float, default=1.5, help="Median growth that gets a handler EXPLAINed."
    )
    p.add_argument(
        "--due-jobs",
        type=int,
        default=500,
        help="Due jobs released by one handle_due_jobs at the end (0: skip).",
    )
    p.add_argument("--due-job-tasks", type=int, default=3, help="Chained tasks of each due job.")
    p.add_argument("--db-name", default=f"batchadmin_bench_tick_{os.getpid()}")
    p.add_argument(
        "--redis-db", type=int, default=13, help="Redis database of the broker (flushed!)."
    )
    p.add_argument("--keep-db", action="store_true", help="Do not drop the database.")
    args = p.parse_args(argv)
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        p.error("--sizes: comma-separated whole numbers, e.g. 10000,100000")
    if args.sizes != sorted(args.sizes) or args.sizes[0] < 1:
        p.error("--sizes must be positive and ascending")
    if args.tasks_per_job < 1 or args.ticks < 2:
        p.error("--tasks-per-job >= 1 and --ticks >= 2")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

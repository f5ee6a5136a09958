"""CPU of the engine's per-attempt path without Celery: claim, run a no-op, finish.

One process runs ``runner.run_task`` over the tasks of started jobs, in a private database, and
reads its own CPU time and its PostgreSQL backend's (``/proc/<pid>/stat``), and the WAL the
cluster wrote meanwhile (``pg_current_wal_lsn()``; the cluster is shared, so other sessions'
writes count too: approximate, but steadier than CPU on a noisy machine for a change to writes). What it leaves out
(the broker, Celery's own per-message work, the tick) is what ``engine_vs_celery.py`` measures;
this one isolates the engine's share so that a change to a statement or an index shows in
seconds, not in a two-minute run with its noise.

    python bench/hot_path.py --tasks 2000              # one job of independent tasks
    python bench/hot_path.py --tasks 2000 --chain      # one chain: each finish releases one

Messages the job start and the releases send go to a Redis database checked empty first
(``--redis-db``), emptied at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import PrivateDatabase, fill_due_jobs, scalar, sql  # noqa: E402
from bench.engine_vs_celery import REDIS_HOST, require_empty_redis  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """Seconds of CPU (user + system) of one PostgreSQL backend (it runs on this machine)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def run(args: argparse.Namespace) -> int:
    import redis

    url = f"redis://{REDIS_HOST}/{args.redis_db}"
    client = redis.Redis.from_url(url)
    require_empty_redis(client, url)
    name = args.db_name or f"batchadmin_hot_{os.getpid()}"
    db = PrivateDatabase(name, args.redis_db, keep=args.keep_db)
    try:
        db.create()
        return measure(args)
    finally:
        from batchadmin.engine import counters

        counters.TALLY.flush()
        db.drop()
        client.flushdb()  # checked empty above: only this run's messages are in it


def measure(args: argparse.Namespace) -> int:
    from batchadmin.engine import counters

    # In a worker the message's queue names the task's group (no query); here there is none.
    def counted(*, task_id: int, status: str, seconds: float) -> None:
        counters.TALLY.add(group="default", status=status, seconds=seconds)

    counters.task_finished = counted  # type: ignore[assignment]
    for statement in args.before:
        sql(statement)
    rounds = [one_round(args) for _ in range(args.repeat)]
    kind = "chain" if args.chain or args.jobs > 1 else "independent"
    if args.jobs > 1:
        kind = f"{args.jobs} jobs of {args.tasks} chained"
    print(f"{kind} tasks, {args.tasks} per round, {args.repeat} rounds; per task, median round:")
    for label, i in (("python", 0), ("postgres", 1), ("wall", 2)):
        values = sorted(r[i] for r in rounds)
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {label:9} {statistics.median(values):.2f} ms   ({shown})")
    wal = sorted(r[3] for r in rounds)
    shown = ", ".join(f"{v:.0f}" for v in wal)
    print(f"  {'wal':9} {statistics.median(wal):.0f} bytes   ({shown}; whole cluster)")
    return 0


@contextmanager
def profiled(args: argparse.Namespace) -> Iterator[None]:
    """With ``--profile N``: cProfile the block and print its N costliest functions (by own
    time, CPU clock); the figures of a profiled round count the profiler too."""
    if not args.profile:
        yield
        return
    profile = cProfile.Profile(time.process_time)
    with profile:
        yield
    pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)


def wal_lsn() -> str:
    return str(scalar("SELECT pg_current_wal_lsn()"))


def wal_since(lsn: str) -> float:
    """Bytes of WAL the cluster wrote since ``lsn`` (every database: approximate)."""
    return float(scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", [lsn]))


def one_round(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """Run one job's tasks; (python, postgres, wall) milliseconds and WAL bytes per task."""
    from django.db import connection

    from batchadmin.engine import runner, transitions

    if args.jobs > 1:
        return small_jobs(args)
    if args.chain:
        (job_id,) = fill_due_jobs(1, args.tasks)
    else:
        job_id = fill_due_jobs(1, 1)[0]
        sql(
            """
            INSERT INTO jobs_batchtask (job_id, key, description, process, parameters,
                ignore_failure, max_retries, condition_type, status, retries, attempt, hostname,
                position, group_id, timed_out)
            SELECT %s, 'u' || p, 'noop', 'demo.noop', '{}', false, 0, 'all', 'waiting', 0, 0,
                '', p + 1, group_id, false
            FROM jobs_batchtask, generate_series(1, %s - 1) p WHERE job_id = %s
            """,
            [job_id, args.tasks, job_id],
        )
    sql("VACUUM ANALYZE")
    if not transitions.start_job(job_id=job_id):
        raise SystemExit("the job did not start")
    ids = [
        r[0]
        for r in sql("SELECT id FROM jobs_batchtask WHERE job_id = %s ORDER BY position", [job_id])
    ]
    pid = int(scalar("SELECT pg_backend_pid()"))
    lsn = wal_lsn()
    own0, pg0, wall0 = time.process_time(), backend_cpu(pid), time.perf_counter()
    ran = 0
    with profiled(args):
        for task_id in ids:
            ran += runner.run_task(task_id=task_id, server_id=None, hostname="hot-path")
    own1, pg1, wall1 = time.process_time(), backend_cpu(pid), time.perf_counter()
    wal = wal_since(lsn)
    status = scalar("SELECT status FROM jobs_batchjob WHERE id = %s", [job_id])
    recorded = scalar(
        "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id "
        "WHERE t.job_id = %s AND r.status = 'ended'",
        [job_id],
    )
    connection.close()  # the next round's backend starts from zero
    if ran != len(ids) or status != "ended" or recorded != len(ids):
        raise SystemExit(f"ran {ran} of {len(ids)}, job {status}, {recorded} attempts recorded")
    n = len(ids)
    return 1000 * (own1 - own0) / n, 1000 * (pg1 - pg0) / n, 1000 * (wall1 - wall0) / n, wal / n


def small_jobs(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """``--jobs`` jobs of ``--tasks`` chained tasks: started one by one (as the tick does),
    then each run to its end (its last finish settles it)."""
    from django.db import connection

    from batchadmin.engine import runner, transitions

    job_ids = fill_due_jobs(args.jobs, args.tasks)
    sql("VACUUM ANALYZE")
    pid = int(scalar("SELECT pg_backend_pid()"))
    own0, pg0, wall0 = time.process_time(), backend_cpu(pid), time.perf_counter()
    started = sum(transitions.start_job(job_id=job_id) for job_id in job_ids)
    own1, pg1, wall1 = time.process_time(), backend_cpu(pid), time.perf_counter()
    ids = sql(
        "SELECT id FROM jobs_batchtask WHERE job_id = ANY(%s) ORDER BY job_id, position",
        [job_ids],
    )
    lsn = wal_lsn()
    with profiled(args):
        for (task_id,) in ids:
            runner.run_task(task_id=task_id, server_id=None, hostname="hot-path")
    own2, pg2, wall2 = time.process_time(), backend_cpu(pid), time.perf_counter()
    wal = wal_since(lsn)
    ended = scalar(
        "SELECT count(*) FROM jobs_batchjob WHERE id = ANY(%s) AND status = 'ended'", [job_ids]
    )
    connection.close()
    if started != len(job_ids) or ended != len(job_ids):
        raise SystemExit(f"started {started}, ended {ended} of {len(job_ids)} jobs")
    n = len(job_ids)
    print(
        f"  start per job: python {1000 * (own1 - own0) / n:.2f} ms, "
        f"postgres {1000 * (pg1 - pg0) / n:.2f} ms, wall {1000 * (wall1 - wall0) / n:.2f} ms"
    )
    t = len(ids)
    return (
        1000 * (own2 - own1) / t,
        1000 * (pg2 - pg1) / t,
        1000 * (wall2 - wall1) / t,
        wal / t,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", type=int, default=2000, help="Tasks of the job.")
    p.add_argument(
        "--jobs", type=int, default=1, help="More than 1: that many small jobs of chained tasks."
    )
    p.add_argument("--repeat", type=int, default=5, help="Rounds (a new job each).")
    p.add_argument("--chain", action="store_true", help="Chain the tasks (each waits for one).")
    p.add_argument("--redis-db", type=int, default=12, help="Redis database (must be empty).")
    p.add_argument("--db-name", default="", help="Database name (default batchadmin_hot_<pid>).")
    p.add_argument(
        "--before",
        action="append",
        default=[],
        metavar="SQL",
        help="A statement to run before measuring (e.g. DROP INDEX ..., to try an index's cost).",
    )
    p.add_argument("--keep-db", action="store_true", help="Do not drop the database.")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="cProfile the tasks' runs and print the N costliest functions.",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args(None)))

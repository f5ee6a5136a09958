"""Helpers shared by bench/tick_cost.py and bench/pages.py: a private database, bulk fills.

The fills write straight SQL (``INSERT .. SELECT`` over ``generate_series``, one statement per
batch with data-modifying CTEs), so 100,000 jobs with their tasks and history take seconds, not
the minutes the ORM would need. The rows look like what the engine leaves behind: a finished job
has one run (and its delivered alert event), its tasks one attempt each and one log line per
attempt.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.engine_vs_celery import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    REDIS_HOST,
    ROOT,
    BenchError,
    pg_cmd,
    run_cmd,
)


def load_average() -> str:
    """``uptime``'s load figures: other processes (tests) share this machine's cores."""
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {one}, {five}, {fifteen} on {os.cpu_count()} cores"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class PrivateDatabase:
    """A database of its own, migrated, with this process's Django pointed at it."""

    def __init__(self, name: str, redis_db: int, *, keep: bool = False) -> None:
        self.name = name
        self.keep = keep
        self.created = False
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))},
            "DJANGO_SETTINGS_MODULE": "batchadmin.settings",
            "DATABASE_URL": f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}",
            "CELERY_BROKER_URL": f"redis://{REDIS_HOST}/{redis_db}",
            "DEBUG": "0",
            # DEBUG off refuses to start without a key (batchadmin/settings.py).
            "SECRET_KEY": os.environ.get("SECRET_KEY")
            or "bench-only-secret-key-0123456789-abcdefghij",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
        }

    def create(self) -> None:
        pg_cmd("dropdb", "--if-exists", "--force", self.name, env=self.env)
        pg_cmd("createdb", self.name, env=self.env)
        self.created = True
        run_cmd(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            env=self.env,
            timeout=300,
            what="migrate",
        )
        os.environ.update(self.env)
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        import django

        django.setup()
        default_new_columns()

    def drop(self) -> None:
        if not self.created:
            return
        from django.db import connections

        connections.close_all()
        if self.keep:
            print(f"kept database {self.name} (--keep-db)")
            return
        try:
            pg_cmd("dropdb", "--if-exists", "--force", self.name, env=self.env)
        except BenchError as exc:
            print(f"  {exc}", file=sys.stderr)


def sql(statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, list(params))
        return list(cursor.fetchall()) if cursor.description else []


def scalar(statement: str, params: Sequence[Any] = ()) -> Any:
    return sql(statement, params)[0][0]


# A finished job's status, its task's status, its run's status: mostly Ended, some Error.
_FINISHED_STATUS = "CASE WHEN g %% 20 = 0 THEN 'error' ELSE 'ended' END"


def fill_finished_jobs(jobs: int, tasks_per_job: int, *, user_id: int | None = None) -> None:
    """``jobs`` finished jobs of ``tasks_per_job`` tasks, each with its run, attempts and logs.

    Ends are spread over the last 30 days, one job every few seconds, so the "last day"
    figures of the workspace see a realistic share of them.
    """
    if jobs <= 0:
        return
    sql(
        f"""
        WITH j AS (
            INSERT INTO jobs_batchjob (description, status, priority, scheduled_start,
                started_at, ended_at, created, modified, critical, save_history,
                created_by_id, run_as_id)
            SELECT 'bench: finished job ' || g, {_FINISHED_STATUS}, 20,
                now() - make_interval(secs => g * 2592000.0 / %s) - interval '40 seconds',
                now() - make_interval(secs => g * 2592000.0 / %s) - interval '30 seconds',
                now() - make_interval(secs => g * 2592000.0 / %s),
                now() - interval '31 days', now(), false, 'always', %s, %s
            FROM generate_series(1, %s) g
            RETURNING id, status, scheduled_start, started_at, ended_at
        ), r AS (
            INSERT INTO jobs_batchjobrun (job_id, status, scheduled_start, started_at, ended_at,
                run_by_id)
            SELECT id, status, scheduled_start, started_at, ended_at, %s FROM j
            RETURNING id, job_id, status, started_at, ended_at
        ), ev AS (
            -- outbox.job_ended: one alert event per run that ended, delivered.
            INSERT INTO alerts_alertevent (kind, key, details, created, processed_at, attempts,
                job_id, job_run_id)
            SELECT status, 'run:' || id || ':' || status, '{{}}', ended_at, ended_at, 1, job_id, id
            FROM r
        ), t AS (
            INSERT INTO jobs_batchtask (job_id, key, description, process, parameters,
                ignore_failure, max_retries, condition_type, status, retries, attempt, hostname,
                position, group_id, timed_out, started_at, ended_at)
            SELECT j.id, 't' || p, 'noop ' || p, 'demo.noop', '{{}}', false, 0, 'all',
                CASE WHEN j.status = 'error' AND p = 0 THEN 'error' ELSE 'ended' END, 0, 1,
                'benchA@bench', p, %s, false, j.started_at, j.ended_at
            FROM j, generate_series(0, %s - 1) p
            RETURNING id, job_id, status, started_at, ended_at
        ), tr AS (
            INSERT INTO jobs_batchtaskrun (job_run_id, task_id, attempt, status, hostname,
                started_at, ended_at, error_message, traceback, celery_task_id)
            SELECT r.id, t.id, 1, t.status, 'benchA@bench', t.started_at, t.ended_at,
                CASE WHEN t.status = 'error' THEN 'bench: failed' ELSE '' END, '', ''
            FROM t JOIN r ON r.job_id = t.job_id
            RETURNING id, ended_at
        )
        INSERT INTO jobs_batchlogentry (task_run_id, created, level, message)
        SELECT id, ended_at, 20, 'bench: done' FROM tr
        """,
        [jobs, jobs, jobs, user_id, user_id, jobs, user_id, default_group_id(), tasks_per_job],
    )
    sql(
        """
        UPDATE jobs_batchjob j SET current_run_id = r.id
        FROM jobs_batchjobrun r WHERE r.job_id = j.id AND j.current_run_id IS NULL
        """
    )


# Error texts of the filled attempts that failed, for the inquiries' error search: a few
# words that recur, and a number that makes each one differ.
_ERROR_TEXT = (
    "'bench: ' || (ARRAY['ledger locked by another session', 'timeout talking to the bank', "
    "'vendor account on hold', 'deadlock detected'])[1 + g %% 4] || ' (case ' || g || ')'"
)


def fill_past_runs(
    runs_per_job: int, *, first_job: int, last_job: int, server_ids: Sequence[int]
) -> int:
    """``runs_per_job`` earlier runs of each finished job with an id in [first_job, last_job]:
    each a run a day apart before the job's last, and an attempt per task (no log lines),
    on one of ``server_ids``, with the time its task became Ready; one in twenty failed with
    an error text. Returns the attempts added."""
    if runs_per_job <= 0:
        return 0
    statement = f"""
        WITH r AS (
            INSERT INTO jobs_batchjobrun (job_id, status, scheduled_start, started_at,
                ended_at, run_by_id, trigger, note, parameters)
            SELECT j.id, CASE WHEN (j.id + k) %% 20 = 0 THEN 'error' ELSE 'ended' END,
                j.scheduled_start - make_interval(days => k),
                j.started_at - make_interval(days => k),
                j.ended_at - make_interval(days => k), j.run_as_id, 'scheduled', '', '{{}}'
            FROM jobs_batchjob j, generate_series(1, %s) k
            WHERE j.id BETWEEN %s AND %s AND j.status IN ('ended', 'error')
            RETURNING id, job_id, status, started_at, ended_at
        ), a AS (
            SELECT r.id AS run_id, t.id AS task_id, r.job_id, r.status AS run_status,
                r.started_at, r.ended_at, t.position, row_number() OVER () AS g
            FROM r JOIN jobs_batchtask t ON t.job_id = r.job_id
        )
        INSERT INTO jobs_batchtaskrun (job_run_id, task_id, attempt, status, server_id,
            hostname, ready_at, started_at, ended_at, error_message, traceback, celery_task_id)
        SELECT run_id, task_id, 1,
            CASE WHEN run_status = 'error' AND position = 0 THEN 'error' ELSE 'ended' END,
            (%s::bigint[])[1 + g %% cardinality(%s::bigint[])], 'bench@bench',
            started_at + make_interval(secs => position * 2),
            started_at + make_interval(secs => position * 2 + (g %% 7) * 0.125),
            LEAST(ended_at, started_at + make_interval(secs => position * 2 + 1.5)),
            CASE WHEN run_status = 'error' AND position = 0 THEN {_ERROR_TEXT} ELSE '' END,
            '', ''
        FROM a
        """
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            statement, [runs_per_job, first_job, last_job, list(server_ids), list(server_ids)]
        )
        return int(cursor.rowcount)


def fill_open_jobs(jobs: int, tasks_per_job: int, *, user_id: int | None = None) -> None:
    """``jobs`` jobs that have not run: half Withhold, half Waiting for a start a day ahead."""
    if jobs <= 0:
        return
    sql(
        """
        WITH j AS (
            INSERT INTO jobs_batchjob (description, status, priority, scheduled_start,
                created, modified, critical, save_history, created_by_id, run_as_id)
            SELECT 'bench: open job ' || g,
                CASE WHEN g %% 2 = 0 THEN 'withhold' ELSE 'waiting' END,
                CASE WHEN g %% 3 = 0 THEN 30 ELSE 20 END,
                now() + interval '1 day' + make_interval(secs => g), now(), now(), false,
                'always', %s, %s
            FROM generate_series(1, %s) g
            RETURNING id
        )
        INSERT INTO jobs_batchtask (job_id, key, description, process, parameters,
            ignore_failure, max_retries, condition_type, status, retries, attempt, hostname,
            position, group_id, timed_out)
        SELECT j.id, 't' || p, 'noop ' || p, 'demo.noop', '{}', false, 0, 'all', 'waiting',
            0, 0, '', p, %s, false
        FROM j, generate_series(0, %s - 1) p
        """,
        [user_id, user_id, jobs, default_group_id(), tasks_per_job],
    )


def fill_due_jobs(jobs: int, tasks_per_job: int) -> list[int]:
    """``jobs`` Waiting jobs due a second ago, each a chain of ``tasks_per_job`` tasks."""
    rows = sql(
        """
        INSERT INTO jobs_batchjob (description, status, priority, scheduled_start, created,
            modified, critical, save_history)
        SELECT 'bench: due job ' || g, 'waiting', 20, now() - interval '1 second', now(), now(),
            false, 'always'
        FROM generate_series(1, %s) g
        RETURNING id
        """,
        [jobs],
    )
    ids = [int(r[0]) for r in rows]
    sql(
        """
        INSERT INTO jobs_batchtask (job_id, key, description, process, parameters,
            ignore_failure, max_retries, condition_type, status, retries, attempt, hostname,
            position, group_id, timed_out)
        SELECT j, 't' || p, 'noop ' || p, 'demo.noop', '{}', false, 0, 'all', 'waiting',
            0, 0, '', p, %s, false
        FROM unnest(%s::bigint[]) j, generate_series(0, %s - 1) p
        """,
        [default_group_id(), ids, tasks_per_job],
    )
    sql(
        """
        INSERT INTO jobs_batchtaskcondition (task_id, depends_on_id, expected_status)
        SELECT child.id, parent.id, 'ended'
        FROM jobs_batchtask child
        JOIN jobs_batchtask parent
          ON parent.job_id = child.job_id AND parent.position = child.position - 1
        WHERE child.job_id = ANY(%s::bigint[])
        """,
        [ids],
    )
    return ids


def analyze() -> None:
    """The tables as autovacuum leaves them soon after a bulk fill: fresh planner statistics,
    and the visibility map set (since PostgreSQL 13 inserts alone trigger autovacuum), which
    index-only scans, the list's count among them, depend on."""
    sql("VACUUM ANALYZE")


def explain(statement: str, params: Sequence[Any] = ()) -> str:
    rows = sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
    return "\n".join(str(r[0]) for r in rows)


_TYPE_DEFAULTS = {
    "boolean": "false",
    "smallint": "0",
    "integer": "0",
    "bigint": "0",
    "character varying": "''",
    "text": "''",
    "jsonb": "'{}'",
    "timestamp with time zone": "now()",
}
FILLED_TABLES = [
    "jobs_batchjob",
    "jobs_batchjobrun",
    "jobs_batchtask",
    "jobs_batchtaskrun",
    "jobs_batchlogentry",
    "alerts_alertevent",
]


def default_new_columns() -> None:
    """Give NOT NULL columns the fills do not name a database default (Django sets them in
    Python only), so a field added to a model later does not break the bench's SQL. This
    changes the bench's own database only."""
    rows = sql(
        """
        SELECT table_name, column_name, data_type FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = ANY(%s) AND is_nullable = 'NO'
          AND column_default IS NULL AND is_identity = 'NO'
        """,
        [FILLED_TABLES],
    )
    for table_name, column, data_type in rows:
        if data_type in _TYPE_DEFAULTS:
            sql(
                f'ALTER TABLE "{table_name}" ALTER COLUMN "{column}" '
                f"SET DEFAULT {_TYPE_DEFAULTS[data_type]}"
            )


def default_group_id() -> int:
    return int(scalar("SELECT id FROM servers_batchgroup WHERE code = 'default'"))

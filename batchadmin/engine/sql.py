"""Every hand-written statement of the hot path (claim and finish), and the one place that
knows which database it talks to.

Claim and finish run once per task; the ORM's query building cost more CPU than a no-op task
itself (bench/), so they are SQL. On PostgreSQL the claim is one statement (atomic on its own,
no BEGIN/COMMIT round trips); SQLite (>= 3.35) has UPDATE ... RETURNING but no UPDATE inside
WITH, so there it is two statements in a transaction (``POSTGRESQL`` chooses). Table names come
from the models, so a renamed table cannot leave a statement behind.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from django.db import connection

from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchRecurrence,
    BatchTask,
    BatchTaskCondition,
    BatchTaskRun,
    QueuedRun,
    StatusChange,
)
from batchadmin.lib import fastload
from batchadmin.servers.models import NO_LIMIT, BatchGroup

POSTGRESQL = connection.vendor == "postgresql"

_J = BatchJob._meta.db_table
_T = BatchTask._meta.db_table
_C = BatchTaskCondition._meta.db_table
_R = BatchTaskRun._meta.db_table
_G = BatchGroup._meta.db_table
_JR = BatchJobRun._meta.db_table
_SC = StatusChange._meta.db_table
_REC = BatchRecurrence._meta.db_table


def fetchone(query: str, params: Any) -> Any:
    """Run one hot-path statement and return its first row (None when there is none).

    On PostgreSQL the statement goes as a server-side prepared statement: Django's cursors
    bind parameters on the client (quoting every value into the text, which PostgreSQL then
    parses and plans again), and for these statements, run once or twice per task, that cost
    more CPU on both sides than the work itself (bench/README.md). psycopg prepares a statement
    on its first use in a session and keeps it, and PostgreSQL stops planning it once it finds
    a generic plan as good as its custom ones. settings.py turns this on
    (``DB_PREPARED_STATEMENTS``): Django turns psycopg's preparing off, and then
    ``prepare=True`` is ignored. A pooler in transaction mode must allow prepared statements,
    or the setting be off. Errors come out as Django's, so lib/db.py's blip handling applies.
    """
    rows = _run(query, params, one=True)
    return rows[0] if rows else None


def fetchall(query: str, params: Any) -> list[Any]:
    """``fetchone``'s twin for a statement of several rows (PostgreSQL's only: the callers
    keep an ORM path for SQLite)."""
    return _run(query, params, one=False)


def _run(query: str, params: Any, *, one: bool) -> list[Any]:
    if not POSTGRESQL:
        with connection.cursor() as cursor:
            cursor.execute(query, params)
            return [cursor.fetchone()] if one else list(cursor.fetchall())
    connection.ensure_connection()
    if connection.queries_logged:  # DEBUG, or a test counting queries: count this one too
        connection.queries_log.append({"sql": query, "time": "0.000"})
    with connection.wrap_database_errors:
        raw = connection.connection
        assert raw is not None
        _PLANS.refresh(raw)
        with psycopg.Cursor(raw) as cursor:
            cursor.execute(query, params, prepare=True)
            if one:
                row = cursor.fetchone()
                return [row] if row is not None else []
            return cursor.fetchall()


class _Plans(threading.local):
    """Makes a session's plans anew every PLAN_REFRESH_SECONDS.

    A generic plan is made once, with the table sizes of its moment. Made while a table was
    nearly empty (a new installation, a bench's warm-up), it can read the whole table once the
    table has grown: a sequential scan of 10,000 tasks per claim (bench/scale.py). PostgreSQL
    makes plans again after an ANALYZE, which autovacuum may run only minutes later. So every
    few seconds, between transactions, the session drops its prepared statements (psycopg
    sees DEALLOCATE ALL and forgets its own), and they are prepared again on their next use:
    a millisecond or two for each of a dozen statements.
    """

    raw: psycopg.Connection[Any] | None = None
    due = 0.0

    def refresh(self, raw: psycopg.Connection[Any]) -> None:
        if raw.prepare_threshold is None:
            return  # nothing is prepared (DB_PREPARED_STATEMENTS off)
        at = time.monotonic()
        if raw is not self.raw:  # a new session: its plans are new
            self.raw, self.due = raw, at + PLAN_REFRESH_SECONDS
        elif at >= self.due and raw.autocommit and raw.info.transaction_status == IDLE:
            raw.execute("DEALLOCATE ALL")
            self.due = at + PLAN_REFRESH_SECONDS


PLAN_REFRESH_SECONDS = 5.0
IDLE = psycopg.pq.TransactionStatus.IDLE
_PLANS = _Plans()


def for_update() -> str:
    """Appended to a SELECT that must lock its row (SQLite locks the whole database instead)."""
    return " FOR UPDATE" if connection.features.has_select_for_update else ""


# A task's effective scheduling priority over its job ``j`` and its group ``g``: the job's when
# it overrides its groups', else the group's default. The same rule as
# BatchTaskQuerySet.with_effective_priority() and priority.effective() (a test checks all three).
EFFECTIVE_PRIORITY = "CASE WHEN j.priority_overridden THEN j.priority ELSE g.default_priority END"

# --- claim ------------------------------------------------------------------------------------

# The claim time plus the task's time limit (or the default), in the database's own date maths.
DEADLINE = (
    "%s + COALESCE(time_limit, %s) * INTERVAL '1 second'"
    if POSTGRESQL
    else "strftime('%%Y-%%m-%%d %%H:%%M:%%f', %s, '+' || COALESCE(time_limit, %s) || ' seconds')"
)
# Ready -> Executing, unless the task's group limits it (max concurrency, reserved capacity or
# maximum running tasks: then _claim_limited decides first and passes its "checked" flag).
CLAIM = f"""
    UPDATE {_T} SET status = %s, attempt = retries + 1, server_id = %s, hostname = %s,
        started_at = %s, ended_at = NULL, lease_expires_at = %s, progress = NULL,
        deadline_at = {DEADLINE}, timed_out = FALSE
    WHERE id = %s AND status = %s AND (ready_at IS NULL OR ready_at <= %s)
        AND (%s OR (SELECT max_concurrency = {NO_LIMIT} AND reserved_capacity = 0
                        AND max_tasks = {NO_LIMIT}
                    FROM {_G} WHERE id = group_id))
    RETURNING job_id, attempt, key, process,
        COALESCE(run_parameters, parameters) AS parameters, company_id, time_limit,
        (SELECT COALESCE(run_as_id, created_by_id) FROM {_J} WHERE id = job_id) AS run_as_id,
        ready_at
"""
# The attempt's history row, in the job's current run (SQLite: after CLAIM), with the time
# the task became Ready (the claim leaves ready_at as it was): the Gantt's wait.
RUN = f"""
    INSERT INTO {_R}
        (job_run_id, task_id, attempt, status, server_id, hostname, started_at, error_message,
         traceback, celery_task_id, ready_at)
    SELECT current_run_id, %s, %s, %s, %s, %s, %s, '', '', %s, %s
    FROM {_J} WHERE id = %s
    RETURNING id, job_run_id
"""
# PostgreSQL: both in one statement.
CLAIM_PG = f"""
    WITH claimed AS ({CLAIM}),
    run AS (
        INSERT INTO {_R}
            (job_run_id, task_id, attempt, status, server_id, hostname, started_at, error_message,
             traceback, celery_task_id, ready_at)
        SELECT j.current_run_id, %s, c.attempt, %s, %s, %s, %s, '', '', %s, c.ready_at
        FROM claimed c JOIN {_J} j ON j.id = c.job_id
        RETURNING id, job_run_id
    )
    SELECT run.id, run.job_run_id, c.job_id, c.attempt, c.key, c.process, c.parameters,
        c.company_id, c.time_limit, c.run_as_id
    FROM run, claimed c
"""

# --- claim of a limited task (max concurrency, reserved capacity, maximum running tasks) ------

# The job row of a task, to lock (with for_update()): claims and finishes of one job queue here.
LOCK_JOB = f"SELECT id FROM {_J} WHERE id = (SELECT job_id FROM {_T} WHERE id = %s)"
LIMIT_STATE = f"""
    SELECT t.status, (t.ready_at IS NULL OR t.ready_at <= %s), t.job_id, t.group_id,
        g.max_concurrency, g.reserved_capacity, {EFFECTIVE_PRIORITY}, g.max_tasks
    FROM {_T} t JOIN {_G} g ON g.id = t.group_id JOIN {_J} j ON j.id = t.job_id
    WHERE t.id = %s
"""
LOCK_GROUP = f"SELECT id FROM {_G} WHERE id = %s"
# Running tasks of a group other than Reserved capacity ones (what reserved capacity limits).
SHARED_RUNNING = f"""
    SELECT count(*) FROM {_T} t JOIN {_J} j ON j.id = t.job_id JOIN {_G} g ON g.id = t.group_id
    WHERE t.group_id = %s AND t.status IN (%s, %s) AND {EFFECTIVE_PRIORITY} <> %s
"""
RUNNING_IN_GROUP = (
    f"SELECT count(*) FROM {_T} WHERE job_id = %s AND group_id = %s AND status IN (%s, %s)"
)
# Running tasks of a group, all jobs (what its maximum running tasks limits).
GROUP_RUNNING = f"SELECT count(*) FROM {_T} WHERE group_id = %s AND status IN (%s, %s)"
# Refused by its limit: the task stays Ready without a message (held).
HOLD = f"UPDATE {_T} SET dispatched_at = NULL WHERE id = %s AND status = %s"

# --- finish -----------------------------------------------------------------------------------

# The common finish in one statement, without the job's lock: an attempt that ended without
# error, of an Executing task whose group has no max concurrency and no maximum running tasks
# (those free a slot: the general path). Its task and its history row become Ended, and it
# answers its job and whether the task has waiting dependents. No row: not that case (a
# retry, an error, a cancel, a limited group or a stale attempt), and nothing was written.
# What follows is decided after this commit (transitions._decide_what_follows): the
# dependents' release, or the job's end, under its lock, when JOB_OPEN finds no open task.
FINISH_ENDED = f"""
    WITH t AS (
        UPDATE {_T} SET status = %(ended)s, ended_at = %(at)s, lease_expires_at = NULL
        WHERE id = %(task)s AND attempt = %(attempt)s AND status = %(executing)s
            AND (SELECT max_concurrency <= {NO_LIMIT} AND max_tasks = 0 FROM {_G} WHERE id = group_id)
        RETURNING id, job_id
    ), r AS (
        UPDATE {_R} SET status = %(ended)s, ended_at = %(at)s, error_message = '', traceback = ''
        WHERE task_id = %(task)s AND attempt = %(attempt)s AND status = %(executing)s
            AND EXISTS (SELECT 1 FROM t)
    )
    SELECT t.job_id,
        EXISTS (SELECT 1 FROM {_C} c JOIN {_T} d ON d.id = c.task_id
                WHERE c.depends_on_id = t.id AND d.status = %(waiting)s)
    FROM t
"""
# Has the job an open task? Asked in a snapshot taken after the finish committed: of two last
# tasks finishing at once, the one that commits second sees the other's end, so one of them
# always goes on to settle the job (the settle itself is conditional: never twice).
# PostgreSQL's (the finish's lock-free path), through a function that keeps the planner to
# the (job, status) index (migration jobs.0026 says why).
JOB_OPEN = "SELECT batchadmin_job_open(%s, %s)"

TASK_STATE = f"""
    SELECT t.attempt, t.status, t.retries, t.max_retries, t.group_id, g.max_concurrency,
        g.max_tasks
    FROM {_T} t JOIN {_G} g ON g.id = t.group_id WHERE t.id = %s
"""
FINISH_RUN = f"""
    UPDATE {_R} SET status = %s, ended_at = %s, error_message = %s, traceback = %s
    WHERE task_id = %s AND attempt = %s AND status = %s
"""
FINISH_TASK = f"UPDATE {_T} SET status = %s, ended_at = %s, lease_expires_at = NULL WHERE id = %s"
# Does the finished task have waiting dependents, and has its job any open task left?
WHAT_FOLLOWS = f"""
    SELECT
        EXISTS (SELECT 1 FROM {_C} c JOIN {_T} t ON t.id = c.task_id
                WHERE c.depends_on_id = %s AND t.status = %s),
        EXISTS (SELECT 1 FROM {_T} WHERE job_id = %s AND status IN (%s, %s, %s, %s))
"""

# --- starting a job (PostgreSQL) ---------------------------------------------------------------

# The job start_job decides on, with its recurrence (NULLs when it has none), as
# lib/fastload.py builds them: BatchJob's columns, then BatchRecurrence's.
JOB_FOR_START = f"""
    SELECT {fastload.columns(BatchJob, "j")}, {fastload.columns(BatchRecurrence, "r")}
    FROM {_J} j LEFT JOIN {_REC} r ON r.job_id = j.id
    WHERE j.id = %s
"""

# Waiting -> Executing with its new run, in one statement once start_job has decided the job
# may start: the job (only if still Waiting at the start it was read with: a second beat's
# start finds it changed and gets no row), its run (its id taken first, so that the job can
# point at it in the same statement; the foreign key is checked at commit), the status change,
# and the tasks that start_job goes on with: the roots (Waiting, without conditions) and the
# tasks decided before the run began (skipped), in the grid's order. No row: not started.
START_JOB = f"""
    WITH new_run AS (SELECT nextval(pg_get_serial_sequence('{_JR}', 'id')) AS id),
    won AS (
        UPDATE {_J} SET status = %(executing)s, scheduled_start = %(scheduled)s,
            started_at = %(at)s, ended_at = NULL, canceled_by_id = NULL,
            current_run_id = (SELECT id FROM new_run)
        WHERE id = %(job)s AND status = %(waiting)s AND scheduled_start = %(was)s
            AND scheduled_start <= %(at)s
        RETURNING id, current_run_id
    ), run AS (
        INSERT INTO {_JR} (id, job_id, trigger, started_by_id, note, parameters, occurrence,
            status, scheduled_start, started_at, ended_at, run_by_id, canceled_by_id)
        SELECT current_run_id, id, %(trigger)s, NULL, '', '{{}}', %(occurrence)s, %(executing)s,
            %(scheduled)s, %(at)s, NULL, %(run_by)s, NULL
        FROM won
        RETURNING id
    ), change AS (
        INSERT INTO {_SC} (job_id, job_run_id, old_status, new_status, reason, by_id, at)
        SELECT %(job)s, id, %(waiting)s, %(executing)s, '', NULL, %(at)s FROM run
    )
    SELECT won.current_run_id, t.id, g.code, t.status
    FROM won
    LEFT JOIN ({_T} t JOIN {_G} g ON g.id = t.group_id)
        ON t.job_id = won.id AND (t.status = ANY(%(decided)s) OR (t.status = %(waiting)s
            AND NOT EXISTS (SELECT 1 FROM {_C} c WHERE c.task_id = t.id)))
    ORDER BY t.position, t.id
"""

# --- releasing dependents (PostgreSQL) ---------------------------------------------------------

# Every condition of every waiting dependent of the tasks ``ANY(%s)`` (status %s: Waiting),
# with what deciding them needs: the dependent's condition type and group, the condition's
# expected status and its parent's status now, the job's priority for the message's step.
WAITING_DEPENDENTS = f"""
    SELECT c.task_id, t.condition_type, g.code, c.expected_status, p.status, j.priority,
        j.priority_overridden
    FROM {_C} c
    JOIN {_T} t ON t.id = c.task_id
    JOIN {_G} g ON g.id = t.group_id
    JOIN {_T} p ON p.id = c.depends_on_id
    JOIN {_J} j ON j.id = t.job_id
    WHERE c.task_id IN (
        SELECT w.task_id FROM {_C} w JOIN {_T} d ON d.id = w.task_id
        WHERE w.depends_on_id = ANY(%s) AND d.status = %s)
    ORDER BY c.task_id
"""
# The same for one parent (every finish's release): PostgreSQL prices ``= ANY($1)`` for an
# array of unknown length, so a prepared statement of it is planned again at every run
# (about a millisecond here); an equality gets a generic plan it keeps.
WAITING_DEPENDENTS_OF_ONE = WAITING_DEPENDENTS.replace("= ANY(%s)", "= %s")
# Waiting -> Ready, sent now (dispatched_at set) or held (NULL: the group's limit decides).
# Returns the tasks it moved: of two releases deciding a dependent at once, only the one that
# moved it sends its message (transitions._decide_what_follows releases without the lock).
MAKE_READY = f"""
    UPDATE {_T} SET status = %s, ready_at = %s, dispatched_at = %s
    WHERE id = ANY(%s) AND status = %s
    RETURNING id
"""
MAKE_READY_ONE = MAKE_READY.replace("= ANY(%s)", "= %s")  # as WAITING_DEPENDENTS_OF_ONE
# Waiting -> Didn't run: a condition can no longer be met. Returns the tasks it moved.
MAKE_NOT_RUN = f"""
    UPDATE {_T} SET status = %s, ended_at = %s WHERE id = ANY(%s) AND status = %s RETURNING id
"""

# --- settling a job -------------------------------------------------------------------------

# The final status of a running job none of whose tasks is open (the caller holds the job lock
# and has checked that): Canceled after a cancel, Error when a task failed that does not
# ignore failure, else Ended. No row: the job was not running (someone settled it already).
SETTLE_JOB = f"""
    UPDATE {_J} SET ended_at = %(at)s, status = CASE
        WHEN status = %(canceling)s THEN %(canceled)s
        WHEN EXISTS (SELECT 1 FROM {_T} WHERE job_id = %(job)s AND status = %(error)s
                     AND NOT ignore_failure) THEN %(error)s
        ELSE %(ended)s END
    WHERE id = %(job)s AND status IN (%(executing)s, %(canceling)s)
    RETURNING status
"""
# Tasks that never ran in the run (Didn't run, canceled early, skipped) get a history row too;
# a skipped one's error message says who skipped it and why.
RECORD_UNATTEMPTED = f"""
    INSERT INTO {_R} (job_run_id, task_id, attempt, status, hostname, ended_at, error_message,
        traceback, celery_task_id)
    SELECT %(run)s, t.id, 0, t.status, '', t.ended_at, t.skip_note, '', ''
    FROM {_T} t
    WHERE t.job_id = %(job)s
        AND NOT EXISTS (SELECT 1 FROM {_R} r WHERE r.job_run_id = %(run)s AND r.task_id = t.id)
"""

# PostgreSQL: the whole settle in one statement (SQLite: SETTLE_JOB and RECORD_UNATTEMPTED
# around the ORM). Under the job lock: when none of the job's tasks is open and the job runs,
# it takes its final status (SETTLE_JOB's rule), its run ends with it, the tasks that never ran
# get their history rows (RECORD_UNATTEMPTED's), and the status change is recorded. It answers
# the final status, whether another job follows this one and whether the job has a queued run
# pending (else _queue_followers has nothing to do), and the job's and its recurrence's rows as
# they were before (lib/fastload.py makes them the models the signal's receivers get). No row:
# a task is open, or the job does not run (someone settled it already); nothing was written.
_Q = QueuedRun._meta.db_table
SETTLE_JOB_PG = f"""
    WITH old AS (
        SELECT {fastload.columns(BatchJob, "j", prefix="j_")},
            {fastload.columns(BatchRecurrence, "c", prefix="c_")}
        FROM {_J} j LEFT JOIN {_REC} c ON c.job_id = j.id
        WHERE j.id = %(job)s AND j.status IN (%(executing)s, %(canceling)s)
            AND NOT EXISTS (SELECT 1 FROM {_T} WHERE job_id = %(job)s AND status = ANY(%(open)s))
    ), settled AS (
        UPDATE {_J} SET ended_at = %(at)s, status = CASE
            WHEN status = %(canceling)s THEN %(canceled)s
            WHEN EXISTS (SELECT 1 FROM {_T} WHERE job_id = %(job)s AND status = %(error)s
                         AND NOT ignore_failure) THEN %(error)s
            ELSE %(ended)s END
        WHERE id = (SELECT j_id FROM old)
        RETURNING status, current_run_id
    ), run AS (
        UPDATE {_JR} SET status = s.status, ended_at = %(at)s
        FROM settled s WHERE id = s.current_run_id
    ), unattempted AS (
        INSERT INTO {_R} (job_run_id, task_id, attempt, status, hostname, ended_at,
            error_message, traceback, celery_task_id)
        SELECT s.current_run_id, t.id, 0, t.status, '', t.ended_at, t.skip_note, '', ''
        FROM settled s JOIN {_T} t ON t.job_id = %(job)s
        WHERE s.current_run_id IS NOT NULL AND NOT EXISTS (
            SELECT 1 FROM {_R} r WHERE r.job_run_id = s.current_run_id AND r.task_id = t.id)
    ), change AS (
        INSERT INTO {_SC} (job_id, job_run_id, old_status, new_status, by_id, reason, at)
        SELECT %(job)s, s.current_run_id, o.j_status, s.status, NULL, '', %(at)s
        FROM settled s, old o
    )
    SELECT s.status,
        EXISTS (SELECT 1 FROM {_J} WHERE after_job_id = %(job)s),
        EXISTS (SELECT 1 FROM {_Q} WHERE job_id = %(job)s AND done_at IS NULL),
        o.*
    FROM settled s, old o
"""


# PostgreSQL: a recurring job goes back to Waiting at its next start after a run (after the
# settle, in its transaction): the job's move (if it still has the run's final status), its
# tasks from scratch (transitions._reset_tasks) and the status change, in one statement.
# No row: the job moved meanwhile; nothing was written.
NEXT_RUN = f"""
    WITH j AS (
        UPDATE {_J} SET status = %(waiting)s, scheduled_start = %(start)s
        WHERE id = %(job)s AND status = %(final)s
        RETURNING id
    ), t AS (
        UPDATE {_T} SET skip_note = '', run_parameters = NULL, status = %(waiting)s, retries = 0,
            attempt = 0, server_id = NULL, hostname = '', started_at = NULL, ended_at = NULL,
            ready_at = NULL, dispatched_at = NULL, lease_expires_at = NULL, progress = NULL
        WHERE job_id = (SELECT id FROM j)
    ), c AS (
        INSERT INTO {_SC} (job_id, job_run_id, old_status, new_status, by_id, reason, at)
        SELECT id, %(run)s, %(final)s, %(waiting)s, NULL, %(reason)s, %(at)s FROM j
    )
    SELECT id FROM j
"""

"""``batchadmin_job_open(job, statuses)``: has this job a task in one of these statuses?

Every successful finish asks it once (engine/sql.py, JOB_OPEN), and it must read the index on
(job, status). Asked as a plain statement, PostgreSQL chose a sequential scan for a big job:
its statistics, taken when the job's tasks were all open, promised an open task within the
first rows, while most of them had ended since; at 10,000 tasks that scan cost about a
millisecond of PostgreSQL per finish (bench/hot_path.py). A function's own setting keeps the
planner to the index for this one question only. PostgreSQL only: SQLite asks the plain query.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION batchadmin_job_open(p_job bigint, p_statuses text[])
RETURNS boolean LANGUAGE plpgsql STABLE
SET enable_seqscan = off
AS $$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM jobs_batchtask WHERE job_id = p_job AND status = ANY(p_statuses)
    );
END
$$
"""
DROP = "DROP FUNCTION IF EXISTS batchadmin_job_open(bigint, text[])"


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0025_taskrun_error_trigram_partial")]

    operations = [migrations.RunPython(create, drop)]

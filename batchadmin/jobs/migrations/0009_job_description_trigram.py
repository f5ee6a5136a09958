"""A trigram index for the Batch jobs list's "Description contains" filter, on PostgreSQL.

The filter is Django's icontains, ``UPPER(description::text) LIKE UPPER('%term%')``, which no
B-tree index can serve: with 100,000 jobs every search read the whole table (414 ms p95,
bench/pages.py). A GIN index over the same expression with pg_trgm's operator class serves any
term of three or more characters.

pg_trgm is a trusted extension since PostgreSQL 13, so the database's owner may create it.
Where it cannot be created (an older server, no contrib package, a role without the right),
the migration says so and goes on: the search still works, only slower.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, migrations, transaction

INDEX = "job_description_trgm_idx"
CREATE = (
    f"CREATE INDEX IF NOT EXISTS {INDEX} ON jobs_batchjob "
    "USING gin (UPPER(description::text) gin_trgm_ops)"
)


def create_index(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    try:
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            cursor.execute(CREATE)
    except DatabaseError as exc:
        print(
            f"\n  jobs.0009: no trigram index for the job description search ({exc}).\n"
            "  The search works without it, reading the whole job table. To add it later, as a\n"
            f"  role that may: CREATE EXTENSION pg_trgm; {CREATE};"
        )


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("jobs", "0008_job_list_indexes")]

    operations = [migrations.RunPython(create_index, drop_index)]

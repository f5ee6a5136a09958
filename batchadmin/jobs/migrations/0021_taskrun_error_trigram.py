"""A trigram index for the error text search of the Batch job history and Batch tasks
inquiries, on PostgreSQL (jobs/inquiries.py): "Error contains" is Django's icontains,
``UPPER(error_message::text) LIKE UPPER('%term%')``, which no B-tree index serves; with
1,000,000 attempts every search would read them all. The same approach as jobs.0009: where
pg_trgm cannot be created, the migration says so and the search still works, only slower.
"""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, migrations, transaction

INDEX = "taskrun_error_trgm_idx"
CREATE = (
    f"CREATE INDEX IF NOT EXISTS {INDEX} ON jobs_batchtaskrun "
    "USING gin (UPPER(error_message::text) gin_trgm_ops)"
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
            f"\n  jobs.0016: no trigram index for the error text search ({exc}).\n"
            "  The search works without it, reading every task attempt. To add it later, as a\n"
            f"  role that may: CREATE EXTENSION pg_trgm; {CREATE};"
        )


def drop_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP INDEX IF EXISTS {INDEX}")


class Migration(migrations.Migration):
    dependencies = [("jobs", "0020_inquiry_indexes")]

    operations = [migrations.RunPython(create_index, drop_index)]

"""The error text search's trigram index (jobs.0021) holds only failed attempts' messages.

Most attempts succeed with an empty message, yet each of their writes (the claim's insert, the
finish's update; neither is HOT) added the empty text's entry to the GIN index. Partial on
``error_message <> ''``, a successful attempt never touches it. The search (jobs/filters.py,
filter_error) says ``error_message <> ''`` too, which a non-empty term implies anyway, so that
PostgreSQL can prove the index's condition and use it. As jobs.0021: where pg_trgm cannot be
created, the migration says so and the search still works, only slower; not on SQLite.
"""

from __future__ import annotations

import importlib
from typing import Any

from django.db import DatabaseError, migrations, transaction

full = importlib.import_module("batchadmin.jobs.migrations.0021_taskrun_error_trigram")

INDEX = full.INDEX  # the same name: one index, now partial
CREATE = (
    f"CREATE INDEX IF NOT EXISTS {INDEX} ON jobs_batchtaskrun "
    "USING gin (UPPER(error_message::text) gin_trgm_ops) WHERE error_message <> ''"
)


def create_index(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    try:
        # One transaction: if the partial index cannot be built, the full one stays.
        with transaction.atomic(using=connection.alias), connection.cursor() as cursor:
            cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
            cursor.execute(f"DROP INDEX IF EXISTS {INDEX}")
            cursor.execute(CREATE)
    except DatabaseError as exc:
        print(
            f"\n  jobs.0025: no trigram index for the error text search ({exc}).\n"
            "  The search works without it, reading every task attempt. To add it later, as a\n"
            f"  role that may: CREATE EXTENSION pg_trgm; {CREATE};"
        )


def restore_full_index(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    full.drop_index(apps, schema_editor)
    full.create_index(apps, schema_editor)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0024_drop_duplicate_fk_indexes")]

    operations = [migrations.RunPython(create_index, restore_full_index)]

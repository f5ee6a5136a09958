"""jobs.0009: the trigram index for the description search is optional; the migration never
fails for want of it."""

from __future__ import annotations

import importlib
import io
from contextlib import redirect_stdout
from types import SimpleNamespace

from django.db import connection

from tests.base import BaseTestCase

migration = importlib.import_module("batchadmin.jobs.migrations.0009_job_description_trigram")
ROLE = "batchadmin_test_no_index"


def index_exists() -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_indexes WHERE indexname = %s", [migration.INDEX])
        return cursor.fetchone() is not None


class TrigramMigrationTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        with connection.cursor() as cursor:
            cursor.execute(
                f"DO $$ BEGIN CREATE ROLE {ROLE} NOLOGIN; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        self.editor = SimpleNamespace(connection=connection, execute=self.execute)

    def execute(self, sql: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(sql)

    def test_it_creates_the_index_and_drops_it_on_the_way_back(self):
        assert index_exists()
        migration.drop_index(None, self.editor)
        assert not index_exists()
        migration.create_index(None, self.editor)
        assert index_exists()

    def test_a_role_that_may_not_create_it_gets_a_message_and_the_migration_goes_on(self):
        migration.drop_index(None, self.editor)
        out = io.StringIO()
        self.execute(f"SET ROLE {ROLE}")
        try:
            with redirect_stdout(out):
                migration.create_index(None, self.editor)
            # The failed statement was rolled back to its savepoint: the transaction goes on.
            self.execute("SELECT 1")
        finally:
            self.execute("RESET ROLE")
        assert not index_exists()
        assert "no trigram index for the job description search" in out.getvalue()
        assert "CREATE EXTENSION pg_trgm;" in out.getvalue()

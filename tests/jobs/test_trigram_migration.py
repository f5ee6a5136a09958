"""jobs.0009 and jobs.0025: the trigram indexes for the description and error searches are
optional; the migrations never fail for want of them."""

from __future__ import annotations

import importlib
import io
from contextlib import redirect_stdout
from types import SimpleNamespace

from django.db import connection

from tests.base import BaseTestCase

migration = importlib.import_module("batchadmin.jobs.migrations.0009_job_description_trigram")
partial = importlib.import_module("batchadmin.jobs.migrations.0025_taskrun_error_trigram_partial")
ROLE = "batchadmin_test_no_index"


def index_def(name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
        row = cursor.fetchone()
        return row[0] if row else None


def index_exists() -> bool:
    return index_def(migration.INDEX) is not None


class _RoleTestCase(BaseTestCase):
    """A role that may not create indexes, and a stand-in for the migration's schema editor."""

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


class TrigramMigrationTestCase(_RoleTestCase):
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


class PartialErrorIndexTestCase(_RoleTestCase):
    """jobs.0025: the error search's index holds only non-empty messages."""

    def test_the_index_leaves_out_empty_messages_and_the_way_back_restores_the_full_one(self):
        assert "WHERE (error_message <> ''::text)" in (index_def(partial.INDEX) or "")
        partial.restore_full_index(None, self.editor)
        full = index_def(partial.INDEX) or ""
        assert "gin_trgm_ops" in full and "WHERE" not in full
        partial.create_index(None, self.editor)
        assert "WHERE (error_message <> ''::text)" in (index_def(partial.INDEX) or "")

    def test_a_role_that_may_not_replace_it_gets_a_message_and_the_full_index_stays(self):
        partial.restore_full_index(None, self.editor)
        out = io.StringIO()
        self.execute(f"SET ROLE {ROLE}")
        try:
            with redirect_stdout(out):
                partial.create_index(None, self.editor)
            self.execute("SELECT 1")  # rolled back to its savepoint: the transaction goes on
        finally:
            self.execute("RESET ROLE")
        full = index_def(partial.INDEX) or ""
        assert "gin_trgm_ops" in full and "WHERE" not in full
        assert "no trigram index for the error text search" in out.getvalue()
        assert "CREATE EXTENSION pg_trgm;" in out.getvalue()

    def test_it_does_nothing_on_sqlite(self):
        def refuse(sql: str) -> None:
            raise AssertionError(f"SQL on SQLite: {sql}")

        sqlite = SimpleNamespace(vendor="sqlite", cursor=refuse)
        editor = SimpleNamespace(connection=sqlite, execute=refuse)
        partial.create_index(None, editor)
        partial.restore_full_index(None, editor)

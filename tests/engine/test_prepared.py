"""The hot path's statements are prepared once per session, and their plans made anew."""

from __future__ import annotations

import os
import unittest
from typing import Any
from unittest import mock

from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import SimpleTestCase, TransactionTestCase

from batchadmin.engine import sql
from batchadmin.jobs.models import BatchJob
from batchadmin.settings import PREPARE_ONLY_WHEN_ASKED, database_from_url

URL = "postgres://batch@db.example:5432/batchadmin"


def prepared() -> list[str]:
    """The statements this session holds prepared (asked through Django's cursor, which
    prepares nothing itself)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        return [" ".join(row[0].split()) for row in cursor.fetchall()]


def prepared_at() -> Any:
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(prepare_time) FROM pg_prepared_statements")
        return cursor.fetchone()[0]


@unittest.skipUnless(connection.vendor == "postgresql", "prepared statements are PostgreSQL's")
class PreparedStatementsTestCase(TransactionTestCase):
    # Outside a test transaction: the refresh waits for the session to be between two.

    def setUp(self) -> None:
        connection.close()  # a session of this test's own
        self.addCleanup(connection.close)

    def test_a_hot_path_statement_is_prepared_on_its_first_run(self):
        # Django turns psycopg's preparing off; without the setting prepare=True did nothing.
        query = "SELECT count(*) FROM jobs_batchtask WHERE id = %s"
        assert sql.fetchone(query, [0]) == (0,)
        for _ in range(3):  # the ORM's queries (pages, the tick) are never prepared
            assert not BatchJob.objects.filter(pk=0).exists()
        assert prepared() == ["SELECT count(*) FROM jobs_batchtask WHERE id = $1"]

    def test_the_prepared_statements_go_every_few_seconds_and_come_back_on_next_use(self):
        query = "SELECT count(*) FROM jobs_batchjob WHERE id = %s"
        sql.fetchone(query, [0])
        first = prepared_at()
        sql.fetchone(query, [0])
        assert prepared_at() == first  # kept while its time is not up
        with mock.patch.object(sql._PLANS, "due", 0.0):  # the session's plans are due
            sql.fetchone(query, [0])
        assert len(prepared()) == 1
        assert prepared_at() > first  # dropped, then prepared again: a new plan

    def test_nothing_is_dropped_inside_a_transaction(self):
        from django.db import transaction

        query = "SELECT count(*) FROM jobs_batchjob WHERE id = %s"
        sql.fetchone(query, [0])
        with mock.patch.object(sql._PLANS, "due", 0.0), transaction.atomic():
            sql.fetchone(query, [0])
            sql.fetchone(query, [0])
            assert len(prepared()) == 1  # kept: dropping them here could not be undone


class DatabaseUrlTestCase(SimpleTestCase):
    def options(self, url: str = URL, **env: str) -> dict[str, Any]:
        with mock.patch.dict(os.environ, {"DB_PREPARED_STATEMENTS": "", **env}):
            options: dict[str, Any] = database_from_url(url)["OPTIONS"]
            return options

    def test_hot_path_statements_are_prepared_unless_turned_off_for_a_pooler(self):
        assert self.options()["prepare_threshold"] == PREPARE_ONLY_WHEN_ASKED
        assert "prepare_threshold" not in self.options(DB_PREPARED_STATEMENTS="0")

    def test_a_threshold_in_the_url_is_kept_as_a_number_and_a_bad_one_named(self):
        assert self.options(f"{URL}?prepare_threshold=5")["prepare_threshold"] == 5
        with self.assertRaisesMessage(
            ImproperlyConfigured, "DATABASE_URL: prepare_threshold must be a whole number, got 'x'"
        ):
            self.options(f"{URL}?prepare_threshold=x")

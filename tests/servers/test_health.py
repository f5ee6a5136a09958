from __future__ import annotations

import datetime as dt
import json
from typing import Any
from unittest import mock

import time_machine
from django.db import OperationalError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now
from django_celery_beat.models import PeriodicTask

from batchadmin.engine import beat
from batchadmin.servers import health
from tests import isolation
from tests.base import BaseTestCase

REDIS_URL = isolation.E2E_REDIS_URL
DOWN_URL = "redis://:hunter2@127.0.0.1:1/0"  # nothing listens on port 1; a password to hide
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def ticked(at: dt.datetime | None) -> None:
    PeriodicTask.objects.filter(task=beat.TICK_TASK).update(last_run_at=at)


class HealthzTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(override_settings(CELERY_BROKER_URL=REDIS_URL))

    def get(self) -> tuple[int, dict[str, Any]]:
        response = self.client.get("/healthz")
        assert response["Content-Type"] == "application/json"
        assert "no-cache" in response["Cache-Control"]
        return response.status_code, json.loads(response.content)

    def test_it_is_ok_when_database_broker_and_beat_are(self):
        ticked(now() - dt.timedelta(seconds=2))
        status, body = self.get()  # no sign-in: load balancers do not have one
        assert status == 200
        assert body["status"] == "ok"
        checks = body["checks"]
        assert set(checks) == {"database", "broker", "beat"}
        assert checks["database"]["ok"] and checks["database"]["ms"] >= 0
        assert checks["broker"]["ok"] and checks["broker"]["ms"] >= 0
        assert checks["beat"]["ok"]
        assert 1 < checks["beat"]["age_seconds"] < 30
        assert dt.datetime.fromisoformat(checks["beat"]["last_tick"]) < now()

    def test_it_fails_when_the_broker_is_down_without_showing_its_password(self):
        ticked(now())
        with override_settings(CELERY_BROKER_URL=DOWN_URL):
            response = self.client.get("/healthz")
        assert response.status_code == 503
        body = json.loads(response.content)
        assert body["status"] == "fail"
        assert body["checks"]["database"]["ok"] and body["checks"]["beat"]["ok"]
        broker = body["checks"]["broker"]
        assert not broker["ok"]
        assert broker["error"].startswith("ConnectionError:")
        assert "Connection refused" in broker["error"]
        assert b"hunter2" not in response.content

    def test_it_fails_when_beat_has_not_ticked_lately(self):
        ticked(NINE)
        with override_settings(BATCH_BEAT_STALE_SECONDS=30):
            with time_machine.travel(NINE + dt.timedelta(seconds=30), tick=False):
                assert self.get()[0] == 200
            with time_machine.travel(NINE + dt.timedelta(seconds=45), tick=False):
                status, body = self.get()
        assert status == 503
        assert body["checks"]["beat"] == {
            "ok": False,
            "last_tick": "2025-03-01T09:00:00+00:00",
            "age_seconds": 45.0,
            "error": (
                "Beat's last tick was 45 s ago (limit 30 s): "
                "is `celery -A batchadmin beat` running?"
            ),
        }
        assert body["checks"]["broker"]["ok"]

    def test_it_fails_when_beat_never_ticked(self):
        ticked(None)
        status, body = self.get()
        assert status == 503
        assert body["checks"]["beat"]["error"].startswith("Beat has not ticked yet")

    def test_it_fails_when_the_tick_is_disabled(self):
        ticked(now())
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(enabled=False)
        status, body = self.get()
        assert status == 503
        assert body["checks"]["beat"]["error"] == (
            "No enabled periodic task runs batchadmin.tick: nothing starts due jobs."
        )

    def test_it_fails_when_the_database_is_down(self):
        ticked(now())
        refused = OperationalError('connection to server at "db", port 5432 failed: refused')
        with mock.patch.object(connection, "cursor", side_effect=refused):
            database = health.check_database()
        assert database["ok"] is False
        assert database["error"].startswith("OperationalError: connection to server")
        with mock.patch.object(health, "check_database", return_value=database):
            status, body = self.get()
        assert status == 503
        assert body["checks"]["beat"] == {
            "ok": False,
            "last_tick": None,
            "age_seconds": None,
            "error": "Unknown: the database is unreachable.",
        }

    def test_it_sets_a_statement_timeout_for_the_database_check(self):
        with CaptureQueriesContext(connection) as queries:
            assert health.check_database()["ok"]
        sql = [q["sql"] for q in queries.captured_queries if "SAVEPOINT" not in q["sql"]]
        assert sql == ["SET LOCAL statement_timeout = 1000", "SELECT 1"]

    def test_it_answers_head_but_not_post(self):
        ticked(now())
        assert self.client.head("/healthz").status_code == 200
        assert self.client.post("/healthz").status_code == 405


class BeatLivenessTestCase(BaseTestCase):
    def scheduler(self, tick: Any) -> beat.BatchScheduler:
        # No __init__: it would connect to the broker and load every schedule.
        scheduler = beat.BatchScheduler.__new__(beat.BatchScheduler)
        scheduler.app = mock.Mock(tasks={beat.TICK_TASK: tick})
        scheduler._dirty = set()
        return scheduler

    def entry(self) -> Any:
        row = PeriodicTask.objects.get(task=beat.TICK_TASK)
        return mock.Mock(task=beat.TICK_TASK, args=(), kwargs={}, model=row)

    def test_it_records_a_successful_tick_at_most_every_few_seconds(self):
        ticked(None)
        scheduler = self.scheduler(tick=lambda: {"started": 0})
        entry = self.entry()
        with time_machine.travel(NINE, tick=False):
            scheduler.apply_entry(entry)
        assert beat.last_tick() == NINE
        with (
            time_machine.travel(NINE + dt.timedelta(seconds=2), tick=False),
            self.assertNumQueries(0),
        ):
            scheduler.apply_entry(entry)  # throttled: no write
        scheduler._liveness_written_at -= beat.LIVENESS_WRITE_SECONDS  # time passes
        later = NINE + dt.timedelta(seconds=5)
        with time_machine.travel(later, tick=False):
            scheduler.apply_entry(entry)
        assert beat.last_tick() == later

    def test_it_does_not_take_a_failed_tick_for_a_run(self):
        ticked(NINE)

        def broken_tick() -> dict[str, int]:
            raise OperationalError("the database went away")

        scheduler = self.scheduler(tick=broken_tick)
        entry = self.entry()
        scheduler._dirty.add(entry.name)  # what reserve() did before apply_entry()
        with self.assertLogs("batchadmin.engine.beat", "ERROR"):
            scheduler.apply_entry(entry)
        assert entry.name not in scheduler._dirty
        assert beat.last_tick() == NINE

    def test_it_reads_the_last_tick_of_enabled_rows_only(self):
        ticked(NINE)
        assert beat.last_tick() == NINE
        PeriodicTask.objects.filter(task=beat.TICK_TASK).update(enabled=False)
        assert beat.last_tick() is None


class HealthzTokenTestCase(BaseTestCase):
    """Issue 13: in production (BATCH_METRICS_TOKEN set) the detail needs the token."""

    def setUp(self) -> None:
        super().setUp()
        self.enterContext(override_settings(CELERY_BROKER_URL=REDIS_URL))
        ticked(now())

    @override_settings(BATCH_METRICS_TOKEN="s3cret")
    def test_without_the_token_it_answers_the_status_alone(self):
        r = self.client.get("/healthz")
        assert (r.status_code, json.loads(r.content)) == (200, {"status": "ok"})
        r = self.client.get("/healthz", headers={"Authorization": "Bearer wrong"})
        assert json.loads(r.content) == {"status": "ok"}
        r = self.client.get("/healthz", headers={"Authorization": "Bearer s3cret"})
        assert set(json.loads(r.content)["checks"]) == {"database", "broker", "beat"}

    @override_settings(BATCH_METRICS_TOKEN="s3cret", CELERY_BROKER_URL=DOWN_URL)
    def test_a_failure_still_answers_503_without_the_token(self):
        r = self.client.get("/healthz")
        assert (r.status_code, json.loads(r.content)) == (503, {"status": "fail"})

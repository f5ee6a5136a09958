from __future__ import annotations

from unittest import mock

from django.test import SimpleTestCase, override_settings

from batchadmin.engine import counters, transitions
from batchadmin.jobs.models import BatchStatus
from batchadmin.lib import broker

S = BatchStatus
DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class RecordTestCase(SimpleTestCase):
    def test_it_never_fails_a_task_when_redis_is_down(self):
        with (
            override_settings(CELERY_BROKER_URL=DOWN_URL),
            mock.patch.object(counters, "_paused_until", 0.0),
            mock.patch.object(counters, "_failing", False),
            self.assertLogs("batchadmin.engine.counters", "WARNING") as logs,
        ):
            counters.record(group="default", status="ended", seconds=1.0)
            # Paused for a while: the next attempts do not even try.
            with mock.patch.object(broker, "client") as client:
                counters.record(group="default", status="ended", seconds=1.0)
            client.assert_not_called()
        assert "Could not record task metrics" in logs.output[0]

    def test_it_warns_once_per_outage(self):
        with (
            override_settings(CELERY_BROKER_URL=DOWN_URL),
            mock.patch.object(counters, "_failing", False),
            self.assertLogs("batchadmin.engine.counters", "DEBUG") as logs,
        ):
            for _ in range(3):
                with mock.patch.object(counters, "_paused_until", 0.0):
                    counters.record(group="default", status="ended", seconds=1.0)
        assert [r.levelname for r in logs.records] == ["WARNING", "DEBUG", "DEBUG"]

    def test_it_tells_how_an_attempt_ended_from_its_outcome(self):
        assert counters.attempt_status(transitions.Outcome()) == S.ENDED
        assert counters.attempt_status(transitions.Outcome(error="boom")) == S.ERROR
        assert counters.attempt_status(transitions.Outcome(canceled=True)) == S.CANCELED
        assert counters.attempt_status(transitions.Outcome(error="x", canceled=True)) == S.CANCELED

    def test_it_names_the_group_after_the_queue_the_message_came_from(self):
        task = mock.Mock()
        task.request.delivery_info = {"routing_key": "batch.nightly"}
        with mock.patch.object(counters, "current_task", task):
            assert counters._group_of(1) == "nightly"

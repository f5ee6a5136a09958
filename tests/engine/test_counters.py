from __future__ import annotations

import os
import time
from unittest import mock

import redis
from django.test import SimpleTestCase, override_settings

from batchadmin.engine import counters, transitions
from batchadmin.jobs.models import BatchStatus
from batchadmin.lib import broker
from tests import isolation

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


REDIS_URL = isolation.E2E_REDIS_URL  # the test run's own Redis (tests/isolation.py)


@override_settings(CELERY_BROKER_URL=REDIS_URL, BATCH_METRICS_FLUSH_SECONDS=3600)
class TallyTestCase(SimpleTestCase):
    def setUp(self) -> None:
        self.redis = redis.Redis.from_url(REDIS_URL)
        self.keys = [counters.FINISHED_KEY, counters.DURATION_KEY]
        self.redis.delete(*self.keys)
        self.addCleanup(self.redis.delete, *self.keys)
        self.enterContext(mock.patch.object(counters, "_paused_until", 0.0))
        self.tally = counters.Tally()
        self.tally._pid = os.getpid()  # as if started: no flushing thread unless a test asks

    def test_it_writes_nothing_until_it_flushes_then_everything_in_one_round_trip(self):
        self.tally.add(group="nightly", status="ended", seconds=0.05)
        self.tally.add(group="nightly", status="ended", seconds=0.7)
        self.tally.add(group="nightly", status="error", seconds=20)
        assert self.redis.exists(*self.keys) == 0
        with mock.patch.object(counters, "_write", wraps=counters._write) as write:
            self.tally.flush()
            self.tally.flush()  # nothing new: no second write
        assert write.call_count == 1
        assert self.redis.hgetall(counters.FINISHED_KEY) == {
            b"nightly|ended": b"2",
            b"nightly|error": b"1",
        }
        durations = self.redis.hgetall(counters.DURATION_KEY)
        assert durations[b"nightly|count"] == b"3"
        assert durations[b"nightly|0.1"] == b"1"
        assert durations[b"nightly|1.0"] == b"1"
        assert durations[b"nightly|60.0"] == b"1"
        assert float(durations[b"nightly|sum"]) == 20.75

    def test_the_first_count_after_the_interval_writes_the_tally(self):
        with override_settings(BATCH_METRICS_FLUSH_SECONDS=0.05):
            self.tally.add(group="g", status="ended", seconds=1)
            assert self.redis.exists(counters.FINISHED_KEY) == 0
            time.sleep(0.06)
            self.tally.add(group="g", status="ended", seconds=1)
        assert self.redis.hget(counters.FINISHED_KEY, "g|ended") == b"2"

    def test_a_quiet_process_still_writes_its_counts(self):
        # The daemon thread flushes what no later count would.
        self.tally._pid = 0
        with override_settings(BATCH_METRICS_FLUSH_SECONDS=0.05):
            self.tally.add(group="g", status="canceled", seconds=1)
            deadline = time.monotonic() + 5
            while not self.redis.exists(counters.FINISHED_KEY) and time.monotonic() < deadline:
                time.sleep(0.02)
        assert self.redis.hget(counters.FINISHED_KEY, "g|canceled") == b"1"

    def test_zero_writes_each_attempt_at_once(self):
        with override_settings(BATCH_METRICS_FLUSH_SECONDS=0):
            self.tally.add(group="g", status="ended", seconds=1)
        assert self.redis.hget(counters.FINISHED_KEY, "g|ended") == b"1"

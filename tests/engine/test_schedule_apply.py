from __future__ import annotations

import datetime as dt
import logging
from unittest import mock

from django.test import SimpleTestCase

from batchadmin.engine import worker
from batchadmin.servers import schedule
from batchadmin.servers.models import BatchServer, BatchServerReplica, BatchServerSchedule
from tests.base import BaseTestCase

ALERT_QUEUE = "batchadmin.alerts"  # settings.BATCH_SERVICE_QUEUES
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def row(start: tuple[int, int], end: tuple[int, int], threads: int) -> BatchServerSchedule:
    return BatchServerSchedule(
        start_time=dt.time(*start), end_time=dt.time(*end), max_threads=threads
    )


def at_utc(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2025, 3, 1, hour, minute, tzinfo=dt.UTC)


class PlanTestCase(SimpleTestCase):
    def test_it_keeps_the_worker_concurrency_without_schedule_rows(self):
        plan = schedule.plan([], "UTC", NINE, 6)
        assert (plan.threads, plan.pool_size, plan.window) == (6, 6, "no schedule")

    def test_it_takes_no_tasks_outside_every_window(self):
        plan = schedule.plan([row((20, 0), (7, 30), 2)], "UTC", at_utc(12), 6)
        assert (plan.threads, plan.window) == (0, "outside every schedule window")
        assert plan.pool_size == 1  # one process stays for alert deliveries

    def test_it_follows_a_window_that_crosses_midnight(self):
        rows = [row((20, 0), (7, 30), 2)]
        assert schedule.plan(rows, "UTC", at_utc(23), 6).threads == 2
        assert schedule.plan(rows, "UTC", at_utc(3), 6).threads == 2
        assert schedule.plan(rows, "UTC", at_utc(7, 29), 6).threads == 2
        assert schedule.plan(rows, "UTC", at_utc(7, 30), 6).threads == 0
        assert schedule.plan(rows, "UTC", at_utc(19, 59), 6).threads == 0
        assert schedule.plan(rows, "UTC", at_utc(23), 6).window == "schedule 20:00-07:30 x2"

    def test_it_reads_the_windows_in_the_server_time_zone(self):
        rows = [row((20, 0), (7, 30), 4), row((7, 30), (12, 0), 2)]
        # 09:00 UTC is 04:00 in New York (night window) and 18:00 in Tokyo (no window).
        assert schedule.plan(rows, "America/New_York", NINE, 8).threads == 4
        assert schedule.plan(rows, "Asia/Tokyo", NINE, 8).threads == 0
        assert schedule.plan(rows, "UTC", NINE, 8).threads == 2

    def test_it_caps_a_window_at_the_worker_concurrency(self):
        plan = schedule.plan([row((0, 0), (0, 0), 8)], "UTC", NINE, 3)
        assert (plan.threads, plan.window) == (3, "schedule 00:00-00:00 x8 (capped at -c 3)")
        assert schedule.plan([row((0, 0), (0, 0), 1)], "UTC", NINE, 3).threads == 1

    def test_it_applies_a_zero_thread_window_as_outside(self):
        plan = schedule.plan([row((8, 0), (17, 0), 0)], "UTC", NINE, 3)
        assert (plan.threads, plan.pool_size) == (0, 1)

    def test_it_picks_the_earliest_covering_row_like_the_model(self):
        rows = [row((9, 0), (10, 0), 1), row((0, 0), (0, 0), 5)]
        assert schedule.plan(rows, "UTC", NINE, 8).threads == 5
        assert schedule.row_at(rows, "UTC", at_utc(11)) is rows[1]


def fake_app(consumes: list[str]) -> mock.Mock:
    app = mock.Mock()
    app.amqp.queues.consume_from = dict.fromkeys(consumes)
    return app


class ScheduledHeartbeatTestCase(BaseTestCase):
    def add_row(self, start: int, end: int, threads: int) -> BatchServerSchedule:
        return BatchServerSchedule.objects.create(
            server=self.server,
            start_time=dt.time(start),
            end_time=dt.time(end),
            max_threads=threads,
        )

    def test_it_shrinks_to_the_window_and_records_the_threads(self):
        self.add_row(8, 12, 2)
        pool = mock.Mock()
        with (
            mock.patch.object(worker, "now", return_value=NINE),
            self.assertLogs(worker.log, logging.INFO) as logs,
        ):
            beat = worker.heartbeat(fake_app([]), "aos1@host1", 4, worker.Beat(), pool)
            BatchServerSchedule.objects.update(max_threads=3)
            beat = worker.heartbeat(fake_app([]), "aos1@host1", 4, beat, pool)
        assert beat.threads == 3
        assert pool.apply.call_args_list == [mock.call(2), mock.call(3)]
        assert BatchServerReplica.objects.get(hostname="aos1@host1").concurrency == 3
        assert "aos1@host1: schedule 08:00-12:00 x2 applies: 2 threads" in logs.output[0]
        assert any(
            "aos1@host1: schedule 08:00-12:00 x3 now applies: 2 -> 3 threads" in line
            for line in logs.output
        )

    def test_it_stops_taking_batch_tasks_outside_every_window_and_resumes(self):
        row = self.add_row(10, 12, 2)
        app = fake_app(["batch.default", ALERT_QUEUE])
        pool = mock.Mock()
        with mock.patch.object(worker, "now", return_value=NINE):
            beat = worker.heartbeat(app, "aos1@host1", 4, worker.Beat(), pool)
        assert (beat.threads, beat.queues) == (0, {ALERT_QUEUE})
        app.control.cancel_consumer.assert_called_once_with(
            "batch.default", destination=["aos1@host1"]
        )
        pool.apply.assert_called_once_with(1)
        replica = BatchServerReplica.objects.get(hostname="aos1@host1")
        assert (replica.concurrency, replica.queues) == (0, [ALERT_QUEUE])

        row.start_time = dt.time(8)
        row.save()
        with mock.patch.object(worker, "now", return_value=NINE):
            beat = worker.heartbeat(app, "aos1@host1", 4, beat, pool)
        assert (beat.threads, beat.queues) == (2, {"batch.default", ALERT_QUEUE})
        app.control.add_consumer.assert_called_once_with(
            "batch.default", destination=["aos1@host1"]
        )
        assert pool.apply.call_args == mock.call(2)

    def test_it_keeps_the_concurrency_without_a_schedule(self):
        pool = mock.Mock()
        beat = worker.heartbeat(fake_app(["batch.default"]), "aos1@host1", 4, worker.Beat(), pool)
        assert beat.threads == 4
        pool.apply.assert_called_once_with(4)


class WorkerStartTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.object(worker, "connections"))
        self.enterContext(mock.patch.dict(worker._ceilings, clear=True))

    def test_it_starts_the_pool_at_the_window_size_and_keeps_c_as_ceiling(self):
        server = BatchServer.objects.create(name="aos5")
        BatchServerSchedule.objects.create(
            server=server, start_time=dt.time(8), end_time=dt.time(12), max_threads=2
        )
        controller = mock.Mock(hostname="aos5@host1", concurrency=8, autoscale=None)
        with mock.patch.object(worker, "now", return_value=NINE):
            worker.on_worker_setup(sender=controller)
        assert controller.concurrency == 2
        assert worker._ceilings == {"aos5@host1": 8}

    def test_it_leaves_an_autoscaling_worker_alone(self):
        controller = mock.Mock(hostname="aos5@host1", concurrency=8, autoscale=[8, 1])
        worker.on_worker_setup(sender=controller)
        assert controller.concurrency == 8
        assert worker._ceilings == {}

    def test_it_starts_without_group_queues_outside_every_window(self):
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(10), end_time=dt.time(12), max_threads=2
        )
        instance = mock.Mock()
        with mock.patch.object(worker, "now", return_value=NINE):
            worker.on_worker_init(sender=f"{self.server.name}@host1", instance=instance)
        instance.app.amqp.queues.select.assert_called_once_with([ALERT_QUEUE])


class FakePool:
    def __init__(self, processes: int, busy: int) -> None:
        self.num_processes = processes
        self.busy = busy
        self.maintain_pool = mock.Mock()

    def grow(self, n: int) -> None:
        self.num_processes += n

    def shrink(self, n: int) -> None:
        # billiard: stops up to n idle processes, raises when it found fewer than n.
        idle = self.num_processes - self.busy
        self.num_processes -= min(n, idle)
        if idle < n:
            raise ValueError("Can't shrink pool. All processes busy!")


def fake_consumer(processes: int, busy: int, prefetch: int) -> mock.Mock:
    consumer = mock.Mock(hostname="aos1@host1", prefetch_multiplier=1)
    consumer.pool = FakePool(processes, busy)
    consumer.initial_prefetch_count = prefetch
    consumer.qos.value = prefetch

    def increment(n: int) -> None:
        consumer.qos.value += n

    def decrement(n: int) -> None:
        consumer.qos.value -= n

    consumer.qos.increment_eventually.side_effect = increment
    consumer.qos.decrement_eventually.side_effect = decrement
    consumer.call_soon.side_effect = lambda f, *args: f(*args)
    return consumer


class LivePoolTestCase(SimpleTestCase):
    def resize(self, consumer: mock.Mock, size: int, reserved: int) -> None:
        with mock.patch("celery.worker.state.reserved_requests", [object()] * reserved):
            worker.LivePool(consumer).apply(size)

    def test_it_grows_the_pool_and_the_prefetch(self):
        consumer = fake_consumer(processes=1, busy=0, prefetch=1)
        self.resize(consumer, 3, reserved=0)
        assert consumer.pool.num_processes == 3
        assert (consumer.qos.value, consumer.initial_prefetch_count) == (3, 3)
        consumer.pool.maintain_pool.assert_called_once_with()
        consumer.qos.update.assert_called_once_with()

    def test_it_stops_only_idle_processes_and_the_rest_later(self):
        consumer = fake_consumer(processes=3, busy=3, prefetch=3)
        self.resize(consumer, 1, reserved=3)
        # Every process runs a task: none stops, but no more than 1 task is reserved from now.
        assert (consumer.pool.num_processes, consumer.qos.value) == (3, 1)
        consumer.pool.busy = 2
        self.resize(consumer, 1, reserved=2)
        assert consumer.pool.num_processes == 2
        consumer.pool.busy = 0
        self.resize(consumer, 1, reserved=0)
        assert (consumer.pool.num_processes, consumer.qos.value) == (1, 1)
        assert consumer.initial_prefetch_count == 1

    def test_it_survives_billiard_finding_fewer_idle_processes(self):
        consumer = fake_consumer(processes=3, busy=2, prefetch=3)
        self.resize(consumer, 1, reserved=0)  # a request finished but its process is not free
        assert (consumer.pool.num_processes, consumer.qos.value) == (2, 1)

    def test_it_does_nothing_when_the_pool_already_fits(self):
        consumer = fake_consumer(processes=2, busy=0, prefetch=2)
        self.resize(consumer, 2, reserved=0)
        consumer.call_soon.assert_not_called()

    def test_it_leaves_a_disabled_prefetch_alone(self):
        consumer = fake_consumer(processes=1, busy=0, prefetch=0)
        self.resize(consumer, 2, reserved=0)
        assert (consumer.pool.num_processes, consumer.qos.value) == (2, 0)
        consumer.qos.update.assert_not_called()

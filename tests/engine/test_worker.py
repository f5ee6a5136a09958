from __future__ import annotations

import datetime as dt
from unittest import mock

import time_machine
from django.db import OperationalError
from django.test import SimpleTestCase

from batchadmin.engine import worker
from batchadmin.jobs import io
from batchadmin.jobs.models import BatchStatus
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
)
from tests.base import BaseTestCase

ALERT_QUEUE = "batchadmin.alerts"  # settings.BATCH_SERVICE_QUEUES
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def fake_app(consumes: list[str]) -> mock.Mock:
    app = mock.Mock()
    app.amqp.queues.consume_from = dict.fromkeys(consumes)
    return app


class RegisterServerTestCase(BaseTestCase):
    def test_it_takes_the_server_name_from_the_node_name(self):
        assert worker.server_name("aos2@host1") == "aos2"
        assert worker.server_name("aos2") == "aos2"

    def test_a_node_name_becomes_a_valid_server_name(self):
        # Issue 13: a name the server-name validator refuses failed every heartbeat.
        long = "reporting-" + "x" * 60
        name = worker.server_name(f"{long}@host1")
        assert len(name) == 50
        assert name.startswith("reporting-xxx") and name != worker.server_name(long + "y")
        assert worker.server_name(f"{long}@host2") == name  # replicas share their server
        assert worker.server_name("aos 2.eu@host") == "aos-2-eu"
        assert worker.server_name("@host") == "worker"

    def test_a_worker_with_a_long_odd_node_name_heartbeats(self):
        hostname = "night batch." + "y" * 300 + "@host1"
        worker.heartbeat(fake_app([]), hostname, 2, worker.Beat())
        worker.heartbeat(fake_app([]), hostname, 2, worker.Beat(queues=set(), threads=2))
        replica = BatchServerReplica.objects.get()
        assert len(replica.hostname) == 200
        assert replica.server.name == worker.server_name(hostname)
        assert replica.server.name.startswith("night-batch-yyy")
        replica.server.full_clean()  # the name the server pages accept

    def test_it_registers_a_new_server_with_the_default_group(self):
        server = worker.register_server("aos2")
        assert server.enabled
        assert list(server.groups.all()) == [BatchGroup.objects.default()]

    def test_it_keeps_the_groups_of_a_known_server(self):
        nightly = BatchGroup.objects.create(code="nightly")
        server = BatchServer.objects.create(name="aos2")
        server.groups.set([nightly])
        assert worker.register_server("aos2") == server
        assert list(server.groups.all()) == [nightly]

    def test_it_caches_the_server_id_per_process(self):
        with mock.patch.dict(worker._server_ids, clear=True):
            server_id = worker.server_id("aos3@host1")
            assert server_id == BatchServer.objects.get(name="aos3").pk
            with self.assertNumQueries(0):
                assert worker.server_id("aos3@host2") == server_id  # another replica
        assert worker.server_id("") is None

    def test_it_consumes_the_queues_of_the_server_groups(self):
        server = worker.register_server("aos2")
        assert worker.wanted_queues(server) == ["batch.default", ALERT_QUEUE]
        server.groups.add(BatchGroup.objects.create(code="nightly"))
        server.groups.add(BatchGroup.objects.create(code="invoices"))
        assert worker.wanted_queues(server) == [
            "batch.default",
            "batch.invoices",
            "batch.nightly",
            ALERT_QUEUE,
        ]

    def test_it_finds_the_server_again_after_its_row_was_deleted(self):
        with mock.patch.dict(worker._server_ids, clear=True):
            worker.server_id("aos3@host1")
            BatchServer.objects.filter(name="aos3").delete()
            worker.register_server("aos3")  # the replica's next heartbeat registers it again
            server_id = worker.server_id("aos3@host1")
            assert server_id is not None
            assert BatchServer.objects.filter(pk=server_id).exists()

    def test_it_keeps_a_disabled_server_off_every_group_queue(self):
        io.import_data({"groups": [{"code": "-idle"}]})
        group = BatchGroup.objects.get(code="-idle")
        server = BatchServer.objects.create(name="aos2", enabled=False)
        assert group.queue_name not in worker.wanted_queues(server)

    def test_it_consumes_only_the_alerts_queue_without_groups_or_when_disabled(self):
        server = BatchServer.objects.create(name="aos2")
        assert worker.wanted_queues(server) == [ALERT_QUEUE]
        server.groups.add(BatchGroup.objects.default())
        server.enabled = False
        assert worker.wanted_queues(server) == [ALERT_QUEUE]


class WorkerSignalsTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        # Both would close the test's connection, and with it its transaction.
        self.enterContext(mock.patch.object(worker, "connections"))
        self.enterContext(mock.patch.object(worker, "close_old_connections"))

    def test_it_registers_the_server_and_picks_its_queues_when_the_worker_starts(self):
        instance = mock.Mock()
        worker.on_worker_init(sender="aos4@host1", instance=instance)
        server = BatchServer.objects.get(name="aos4")
        assert list(server.groups.all()) == [BatchGroup.objects.default()]
        assert instance.app.amqp.queues.select_add.call_args_list == [
            mock.call("batch.default"),
            mock.call(ALERT_QUEUE),
        ]
        instance.app.amqp.queues.select.assert_called_once_with(["batch.default", ALERT_QUEUE])

    def test_it_starts_on_the_service_queues_only_while_the_database_is_away(self):
        # Found by the chaos soak: the handler failed and the worker fell back to Celery's
        # default queue, batch.default, a group the server may not serve.
        instance = mock.Mock()
        down = OperationalError("the database system is starting up")
        with (
            mock.patch.object(worker, "register_server", side_effect=down),
            self.assertLogs("batchadmin.engine.worker", "WARNING") as logs,
        ):
            worker.on_worker_init(sender="aos4@host1", instance=instance)
        instance.app.amqp.queues.select.assert_called_once_with([ALERT_QUEUE])
        assert "the database is unavailable" in logs.output[0]

    def test_it_starts_the_heartbeat_when_the_worker_is_ready(self):
        consumer = mock.Mock(hostname="aos1@host1")
        consumer.pool.num_processes = 8
        consumer.controller.autoscaler = None
        with mock.patch("threading.Thread") as thread:
            worker.on_worker_ready(sender=consumer)
        app, hostname, ceiling, pool = thread.call_args.kwargs["args"]
        assert (app, hostname, ceiling) == (consumer.app, "aos1@host1", 8)
        assert pool.consumer is consumer
        assert thread.call_args.kwargs["daemon"] is True
        thread.return_value.start.assert_called_once_with()

    def test_it_unregisters_the_replica_when_the_worker_stops(self):
        BatchServerReplica.objects.create(server=self.server, hostname="aos1@host1")
        BatchServerReplica.objects.create(server=self.server, hostname="aos1@host2")
        worker.on_worker_shutdown(sender=mock.Mock(hostname="aos1@host1"))
        assert list(BatchServerReplica.objects.values_list("hostname", flat=True)) == ["aos1@host2"]


class HeartbeatTestCase(BaseTestCase):
    def test_it_records_a_replica_and_follows_new_groups(self):
        self.server.groups.add(BatchGroup.objects.create(code="nightly"))
        job = self.make_job()
        self.make_task(job, "T1", status=BatchStatus.EXECUTING, hostname="aos1@host1")
        self.make_task(job, "T2", status=BatchStatus.EXECUTING, hostname="aos1@host2")
        app = fake_app(["batch.default", ALERT_QUEUE])
        with time_machine.travel(NINE, tick=False):
            beat = worker.heartbeat(app, "aos1@host1", 4, worker.Beat())
        assert beat.queues == {"batch.default", "batch.nightly", ALERT_QUEUE}
        app.control.add_consumer.assert_called_once_with(
            "batch.nightly", destination=["aos1@host1"]
        )
        app.control.cancel_consumer.assert_not_called()
        replica = BatchServerReplica.objects.get(hostname="aos1@host1")
        assert replica.server == self.server
        assert (replica.concurrency, replica.busy) == (4, 1)
        assert replica.queues == ["batch.default", "batch.nightly", ALERT_QUEUE]
        assert replica.started_at == replica.last_heartbeat == NINE

    def test_it_stops_consuming_the_queue_of_a_removed_group(self):
        worker.heartbeat(fake_app([]), "aos1@host1", 2, worker.Beat())
        self.server.groups.set([BatchGroup.objects.create(code="nightly")])
        app = fake_app([])
        with time_machine.travel(NINE, tick=False):
            beat = worker.heartbeat(
                app, "aos1@host1", 2, worker.Beat({"batch.default", ALERT_QUEUE}, 2)
            )
        assert beat.queues == {"batch.nightly", ALERT_QUEUE}
        app.control.add_consumer.assert_called_once_with(
            "batch.nightly", destination=["aos1@host1"]
        )
        app.control.cancel_consumer.assert_called_once_with(
            "batch.default", destination=["aos1@host1"]
        )
        replica = BatchServerReplica.objects.get(hostname="aos1@host1")
        assert replica.last_heartbeat == NINE
        assert replica.started_at != NINE  # not a restart

    def test_it_keeps_delivering_alerts_when_the_server_is_disabled(self):
        BatchServer.objects.filter(pk=self.server.pk).update(enabled=False)
        app = fake_app(["batch.default", ALERT_QUEUE])
        beat = worker.heartbeat(app, "aos1@host1", 2, worker.Beat())
        assert beat.queues == {ALERT_QUEUE}
        app.control.cancel_consumer.assert_called_once_with(
            "batch.default", destination=["aos1@host1"]
        )
        app.control.add_consumer.assert_not_called()

    def test_it_tells_online_replicas_from_gone_ones(self):
        with time_machine.travel(NINE, tick=False):
            worker.heartbeat(fake_app(["batch.default"]), "aos1@host1", 2, worker.Beat())
        replica = BatchServerReplica.objects.get()
        offline_after = BatchServerReplica.offline_after()
        assert replica.is_online(NINE + offline_after)
        assert not replica.is_online(NINE + offline_after + dt.timedelta(seconds=1))
        assert list(BatchServerReplica.objects.online(NINE + offline_after)) == [replica]
        assert not BatchServerReplica.objects.online(NINE + 2 * offline_after).exists()


class ScheduleTestCase(SimpleTestCase):
    def test_it_covers_a_window_that_crosses_midnight(self):
        row = BatchServerSchedule(start_time=dt.time(20), end_time=dt.time(7, 30))
        assert row.covers(dt.time(23))
        assert row.covers(dt.time(0))
        assert not row.covers(dt.time(7, 30))
        assert not row.covers(dt.time(12))

    def test_it_covers_the_whole_day_when_start_equals_end(self):
        row = BatchServerSchedule(start_time=dt.time(6), end_time=dt.time(6))
        assert row.covers(dt.time(5, 59))
        assert row.covers(dt.time(6))


class MaxThreadsTestCase(BaseTestCase):
    def test_it_reads_the_schedule_in_the_server_time_zone(self):
        server = BatchServer.objects.create(name="aos2", time_zone="America/New_York")
        assert server.max_threads_at(NINE) is None  # no schedule: the worker's concurrency
        BatchServerSchedule.objects.create(
            server=server, start_time=dt.time(20), end_time=dt.time(7, 30), max_threads=8
        )
        BatchServerSchedule.objects.create(
            server=server, start_time=dt.time(7, 30), end_time=dt.time(12), max_threads=2
        )
        assert server.max_threads_at(NINE) == 8  # 04:00 in New York
        assert server.max_threads_at(NINE + dt.timedelta(hours=5)) == 2  # 09:00
        assert server.max_threads_at(NINE + dt.timedelta(hours=10)) == 0  # 14:00: no window

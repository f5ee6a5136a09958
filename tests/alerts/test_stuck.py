from __future__ import annotations

import datetime as dt

from django.test import override_settings

from batchadmin.alerts import delivery, stuck
from batchadmin.alerts.models import AlertEvent, AlertKind, AlertRule, BatchJobAlert
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, BatchTask
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
)
from tests.base import BaseTestCase

S = BatchStatus
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)


class LongRunningTestCase(BaseTestCase):
    def running_job(self, *, usual: list[float], status: str = S.ENDED) -> BatchJob:
        """A job running since NINE whose earlier runs took ``usual`` minutes each."""
        job = self.make_job(status=S.EXECUTING, started_at=NINE, scheduled_start=NINE)
        for n, minutes in enumerate(usual):
            started = NINE - dt.timedelta(days=len(usual) - n)
            BatchJobRun.objects.create(
                job=job,
                status=status,
                scheduled_start=started,
                started_at=started,
                ended_at=started + minutes * MIN,
            )
        run = BatchJobRun.objects.create(
            job=job, status=S.EXECUTING, scheduled_start=NINE, started_at=NINE
        )
        BatchJob.objects.filter(pk=job.pk).update(current_run=run)
        job.refresh_from_db()
        return job

    def test_it_raises_once_a_run_takes_three_times_its_median(self):
        job = self.running_job(usual=[7, 8, 8, 9, 30])  # median 8: one slow run doesn't count
        assert stuck.check_long_running(NINE + 23 * MIN) == 0
        assert stuck.check_long_running(NINE + 24 * MIN) == 1
        event = AlertEvent.objects.get()
        assert (event.kind, event.key, event.job_run_id) == (
            AlertKind.LONG_RUNNING,
            f"run:{job.current_run_id}:long_running",
            job.current_run_id,
        )
        assert event.details["reason"] == (
            "running 24 min 00 s, usually 8 min 00 s (median of the last 5 runs)"
        )
        assert event.details["status"] == S.EXECUTING
        self.send_alert.assert_not_called()  # after commit, like every event

    def test_it_raises_once_per_run(self):
        self.running_job(usual=[8] * 5)
        with self.captureOnCommitCallbacks(execute=True):
            assert stuck.check_long_running(NINE + 30 * MIN) == 1
        with self.assertNumQueries(1):  # the running jobs: this one is alerted already
            assert stuck.check_long_running(NINE + 60 * MIN) == 0
        assert AlertEvent.objects.count() == 1
        self.send_alert.assert_called_once_with(AlertEvent.objects.get().pk)

    def test_it_needs_five_ended_runs(self):
        self.running_job(usual=[8] * 4)
        assert stuck.check_long_running(NINE + 600 * MIN) == 0
        job = self.running_job(usual=[8] * 5, status=S.ERROR)  # failed runs are not "usual"
        assert stuck.check_long_running(NINE + 600 * MIN) == 0
        assert not AlertEvent.objects.filter(job=job).exists()

    def test_it_wants_a_short_job_to_be_ten_minutes_late(self):
        self.running_job(usual=[1] * 6)
        assert stuck.check_long_running(NINE + 10 * MIN) == 0  # 10x, but 9 minutes over
        assert stuck.check_long_running(NINE + 11 * MIN) == 1

    @override_settings(BATCH_STUCK_FACTOR=1.5, BATCH_STUCK_MIN_MINUTES=2, BATCH_STUCK_RUNS=3)
    def test_it_reads_its_rule_from_the_settings(self):
        # The last three runs (20, 20, 20) count; the older hour-long ones do not.
        self.running_job(usual=[60, 60, 60, 20, 20, 20])
        with override_settings(BATCH_STUCK_MIN_RUNS=4):
            assert stuck.check_long_running(NINE + 30 * MIN) == 0  # only 3 runs are read
        with override_settings(BATCH_STUCK_MIN_RUNS=3):
            assert stuck.check_long_running(NINE + 29 * MIN) == 0
            assert stuck.check_long_running(NINE + 30 * MIN) == 1
        assert "median of the last 3 runs" in AlertEvent.objects.get().details["reason"]

    def test_it_judges_many_jobs_in_two_queries(self):
        for _ in range(3):
            self.running_job(usual=[8] * 5)
        self.running_job(usual=[30] * 5)  # not late
        with self.assertNumQueries(5):  # running jobs, their runs, three inserts
            assert stuck.check_long_running(NINE + 30 * MIN) == 3

    def test_it_goes_to_rules_that_want_stuck_alerts_only(self):
        job = self.running_job(usual=[8] * 5)
        AlertRule.objects.create(user=self.alice, stuck=True, popup=True)
        AlertRule.objects.create(user=self.bob, error=True)  # errors only
        BatchJobAlert.objects.create(job=job, user=self.dave, ended=True, error=True)
        stuck.check_long_running(NINE + 30 * MIN)
        event = AlertEvent.objects.get()
        assert [r.user_id for r in delivery.recipients(event)] == [self.alice.pk]

    def test_the_tick_handler_checks_at_most_every_thirty_seconds(self):
        self.running_job(usual=[8] * 5)
        stuck.LONG_RUNNING_CHECK.reset()
        self.addCleanup(stuck.LONG_RUNNING_CHECK.reset)
        second = dt.timedelta(seconds=1)
        assert stuck.handle_long_running(NINE + 24 * MIN - 10 * second) == 0  # not yet
        with self.assertNumQueries(0):  # stuck by now, but checked 29 s ago
            assert stuck.handle_long_running(NINE + 24 * MIN + 19 * second) == 0
        assert stuck.handle_long_running(NINE + 24 * MIN + 20 * second) == 1


class UnservedTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.reporting = BatchGroup.objects.create(code="Reporting")
        self.job = self.make_job(status=S.EXECUTING, started_at=NINE, scheduled_start=NINE)
        run = BatchJobRun.objects.create(
            job=self.job, status=S.EXECUTING, scheduled_start=NINE, started_at=NINE
        )
        BatchJob.objects.filter(pk=self.job.pk).update(current_run=run)
        self.job.refresh_from_db()
        self.task = self.make_task(
            self.job, "T1", group=self.reporting, status=S.READY, ready_at=NINE
        )

    def online(self, server: BatchServer, at: dt.datetime) -> None:
        BatchServerReplica.objects.create(
            server=server, hostname=f"{server.name}@host1", last_heartbeat=at
        )

    def test_it_raises_when_no_server_has_the_group(self):
        assert stuck.check_unserved(NINE + dt.timedelta(seconds=59)) == 0
        assert stuck.check_unserved(NINE + dt.timedelta(seconds=60)) == 1
        event = AlertEvent.objects.get()
        assert (event.kind, event.key, event.job_run_id) == (
            AlertKind.UNSERVED,
            f"run:{self.job.current_run_id}:unserved",
            self.job.current_run_id,
        )
        assert event.details["reason"] == "no enabled batch server has group Reporting"
        assert event.details["scheduled_start"] == NINE.isoformat()

    def test_it_raises_when_the_servers_of_the_group_are_offline(self):
        aos2 = BatchServer.objects.create(name="aos2")
        aos2.groups.add(self.reporting)
        self.online(aos2, NINE - dt.timedelta(hours=1))  # its heartbeat stopped long ago
        assert stuck.check_unserved(NINE + 2 * MIN) == 1
        assert AlertEvent.objects.get().details["reason"] == (
            "no online server serves group Reporting (offline: aos2)"
        )

    def test_it_stays_quiet_while_an_online_server_serves_the_group(self):
        aos2 = BatchServer.objects.create(name="aos2")
        aos2.groups.add(self.reporting)
        self.online(aos2, NINE + 2 * MIN)  # busy: the task just waits for a thread
        assert stuck.check_unserved(NINE + 2 * MIN) == 0

    def test_it_stays_quiet_when_the_servers_are_outside_their_schedule(self):
        aos2 = BatchServer.objects.create(name="aos2")
        aos2.groups.add(self.reporting)
        BatchServerSchedule.objects.create(
            server=aos2, start_time=dt.time(22), end_time=dt.time(6), max_threads=4
        )
        self.online(aos2, NINE + 2 * MIN)
        assert stuck.check_unserved(NINE + 2 * MIN) == 0  # it starts at 22:00, as planned

    def test_it_raises_once_per_run(self):
        assert stuck.check_unserved(NINE + 2 * MIN) == 1
        assert stuck.check_unserved(NINE + 3 * MIN) == 0
        # A new run of the job (same scheduled start: "Waiting" again by hand) alerts again.
        run = BatchJobRun.objects.create(
            job=self.job, status=S.EXECUTING, scheduled_start=NINE, started_at=NINE + 5 * MIN
        )
        BatchJob.objects.filter(pk=self.job.pk).update(current_run=run)
        assert stuck.check_unserved(NINE + 7 * MIN) == 1
        assert AlertEvent.objects.count() == 2

    def test_it_names_every_unserved_group_of_a_job_once(self):
        nightly = BatchGroup.objects.create(code="Nightly")
        self.make_task(self.job, "T2", group=nightly, status=S.READY, ready_at=NINE)
        self.make_task(self.job, "T3", group=nightly, status=S.READY, ready_at=NINE)
        assert stuck.check_unserved(NINE + 2 * MIN) == 1
        assert AlertEvent.objects.get().details["reason"] == (
            "no enabled batch server has group Nightly; no enabled batch server has group Reporting"
        )

    def test_it_ignores_tasks_waiting_for_their_retry_and_jobs_not_running(self):
        BatchTask.objects.filter(pk=self.task.pk).update(ready_at=NINE + 10 * MIN)
        assert stuck.check_unserved(NINE + 2 * MIN) == 0
        BatchTask.objects.filter(pk=self.task.pk).update(ready_at=NINE)
        BatchJob.objects.filter(pk=self.job.pk).update(status=S.CANCELING)
        assert stuck.check_unserved(NINE + 2 * MIN) == 0

    def test_it_costs_one_query_when_nothing_waits(self):
        BatchTask.objects.filter(pk=self.task.pk).update(status=S.EXECUTING)
        with self.assertNumQueries(1):
            assert stuck.check_unserved(NINE + 2 * MIN) == 0

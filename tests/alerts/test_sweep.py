from __future__ import annotations

import datetime as dt
from typing import Any
from unittest import mock

import time_machine
from django.core import mail
from django.test import override_settings

from batchadmin.alerts import delivery, outbox
from batchadmin.alerts.models import AlertEvent, AlertKind, BatchJobAlert, Notification
from batchadmin.jobs.models import BatchJob
from batchadmin.lib import broker
from tests.base import BaseTestCase

Email = Notification.Email
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


class SweepTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.job = self.make_job()
        self.queue_size = self.enterContext(
            mock.patch.object(broker, "queue_length", return_value=0)
        )

    def event(self, key: str = "run:1:error", at: dt.datetime = NINE) -> AlertEvent:
        event_id = outbox.record(
            self.job, AlertKind.ERROR, key=key, details={"status": "error"}, at=at
        )
        assert event_id is not None
        return AlertEvent.objects.get(pk=event_id)

    def notification(self, event: AlertEvent, **fields: Any) -> Notification:
        event.processed_at = event.created
        event.save()
        return Notification.objects.create(event=event, user=self.alice, created=NINE, **fields)

    def test_it_resends_the_delivery_of_an_event_nobody_processed(self):
        event = self.event()
        self.event(key="run:2:error", at=NINE + 10 * SECOND)  # too young: its message may come
        assert delivery.sweep(NINE + 39 * SECOND) == 1
        self.send_alert.assert_called_once_with(event.pk)
        self.queue_size.assert_called_once_with("batchadmin.alerts")

    def test_it_leaves_them_while_deliveries_wait_in_the_queue(self):
        self.event()
        self.queue_size.return_value = 4
        assert delivery.sweep(NINE + 5 * dt.timedelta(minutes=1)) == 0
        self.send_alert.assert_not_called()

    def test_it_gives_up_on_an_event_whose_fan_out_keeps_failing(self):
        event = self.event()
        AlertEvent.objects.filter(pk=event.pk).update(attempts=10)
        assert delivery.sweep(NINE + dt.timedelta(hours=1)) == 0

    def test_it_resends_an_email_whose_retry_is_overdue(self):
        event = self.event()
        self.notification(
            event, email=Email.PENDING, email_attempts=2, email_attempt_at=NINE, email_error="down"
        )
        # Retry 2 is due 60 s after the attempt; the task's own retry had 30 s to come.
        assert delivery.sweep(NINE + 90 * SECOND) == 0
        assert delivery.sweep(NINE + 91 * SECOND) == 1
        self.send_alert.assert_called_once_with(event.pk)

    def test_it_resends_an_email_the_fan_out_left_unsent(self):
        event = self.event()
        self.notification(event, email=Email.PENDING)
        assert delivery.sweep(NINE + 31 * SECOND) == 1

    def test_it_sends_again_what_a_dead_worker_was_sending(self):
        event = self.event()
        n = self.notification(event, email=Email.SENDING, email_attempts=1, email_attempt_at=NINE)
        assert delivery.sweep(NINE + 10 * dt.timedelta(minutes=1)) == 0  # may still be sending
        with self.assertLogs("batchadmin.alerts.delivery", "WARNING"):
            assert delivery.sweep(NINE + 11 * dt.timedelta(minutes=1)) == 1
        n.refresh_from_db()
        assert (n.email, n.email_attempts, n.email_error) == (
            Email.PENDING,
            2,
            delivery.INTERRUPTED,
        )
        self.send_alert.assert_called_once_with(event.pk)
        with time_machine.travel(NINE + 12 * dt.timedelta(minutes=1), tick=False):
            delivery.deliver(event.pk)
        n.refresh_from_db()
        assert n.email == Email.SENT
        assert len(mail.outbox) == 1

    @override_settings(BATCH_ALERT_EMAIL_ATTEMPTS=2)
    def test_it_fails_an_email_that_keeps_killing_its_worker(self):
        event = self.event()
        n = self.notification(event, email=Email.SENDING, email_attempts=1, email_attempt_at=NINE)
        with self.assertLogs("batchadmin.alerts.delivery", "WARNING"):
            delivery.sweep(NINE + dt.timedelta(hours=1))
        n.refresh_from_db()
        assert (n.email, n.email_attempts) == (Email.FAILED, 2)

    def test_it_costs_three_queries_when_all_is_delivered(self):
        event = self.event()
        self.notification(event, email=Email.SENT, email_attempts=1, email_attempt_at=NINE)
        # E-mails and webhook requests stuck "sending", lost events, overdue e-mails and requests.
        with self.assertNumQueries(5):
            assert delivery.sweep(NINE + dt.timedelta(hours=1)) == 0
        self.queue_size.assert_not_called()

    def test_the_tick_handler_sweeps_at_most_every_thirty_seconds(self):
        delivery.SWEEP.reset()
        self.addCleanup(delivery.SWEEP.reset)
        self.event()
        assert delivery.handle_undelivered(NINE + 20 * SECOND) == 0  # too young
        with self.assertNumQueries(0):
            assert delivery.handle_undelivered(NINE + 49 * SECOND) == 0
        assert delivery.handle_undelivered(NINE + 50 * SECOND) == 1

    def test_the_tick_handler_never_breaks_the_tick(self):
        delivery.SWEEP.reset()
        self.addCleanup(delivery.SWEEP.reset)
        self.event()
        self.queue_size.side_effect = ConnectionError("broker down")
        with self.assertLogs("batchadmin.alerts.delivery", "ERROR"):
            assert delivery.handle_undelivered(NINE + dt.timedelta(minutes=1)) == 0


class RaceTestCase(BaseTestCase):
    """Two deliveries of one event interleaved at the worst moment, deterministically."""

    def setUp(self):
        super().setUp()
        self.job = self.make_job()
        BatchJobAlert.objects.create(job=self.job, user=self.alice, error=True, email=True)
        BatchJobAlert.objects.create(job=self.job, user=self.bob, error=True, email=True)
        event_id = outbox.record(self.job, AlertKind.ERROR, key="run:1:error", details={})
        assert event_id is not None
        self.event_id = event_id

    def test_two_fan_outs_racing_create_one_notification_per_user(self):
        real = delivery.recipients

        def racing(event: AlertEvent) -> list[delivery.Recipient]:
            chosen = real(event)
            # The other delivery read processed_at empty too and finishes first.
            with mock.patch.object(delivery, "recipients", real):
                delivery.deliver(self.event_id)
            return chosen

        with mock.patch.object(delivery, "recipients", racing):
            delivery.deliver(self.event_id)
        assert Notification.objects.count() == 2
        assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.org", "bob@example.org"]

    def test_two_senders_racing_send_one_email(self):
        real = delivery.is_due

        def racing(notification: Notification, at: dt.datetime) -> bool:
            # The other delivery read the same pending rows and claims them first.
            with mock.patch.object(delivery, "is_due", real):
                delivery.deliver(self.event_id)
            return real(notification, at)

        delivery.fan_out(AlertEvent.objects.get(pk=self.event_id))
        with mock.patch.object(delivery, "is_due", racing):
            result = delivery.deliver(self.event_id)
        assert result is not None and result.sent == 0
        assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.org", "bob@example.org"]
        assert set(Notification.objects.values_list("email", flat=True)) == {Email.SENT}

    def test_it_does_not_send_for_a_job_deleted_before_delivery(self):
        BatchJob.objects.filter(pk=self.job.pk).delete()
        assert delivery.deliver(self.event_id) is None
        assert mail.outbox == []

from __future__ import annotations

import datetime as dt
import smtplib
import unittest
from typing import Any
from unittest import mock

import time_machine
from celery.exceptions import Retry
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.locmem import EmailBackend as LocmemBackend
from django.db import connection
from django.test import override_settings

from batchadmin.accounts.models import MANAGER, UserPreference
from batchadmin.alerts import delivery, outbox, tasks
from batchadmin.alerts.models import (
    AlertEvent,
    AlertKind,
    AlertRule,
    BatchJobAlert,
    Notification,
)
from batchadmin.engine import transitions
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, Priority, SaveHistory
from batchadmin.servers.models import BatchGroup
from tests.base import BaseTestCase, drain, start
from tests.e2e.cluster import free_port

S = BatchStatus
Email = Notification.Email
NINE = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


class PickyBackend(LocmemBackend):
    """A mail server that refuses one recipient and takes the others."""

    def send_messages(self, messages: Any) -> int:
        for message in messages:
            if "bob@example.org" in message.to:
                raise smtplib.SMTPRecipientsRefused({"bob@example.org": (550, b"No such user")})
        return super().send_messages(messages)


class AlertTestCase(BaseTestCase):
    def run_job(self, *processes: str, **fields: Any) -> tuple[BatchJob, AlertEvent]:
        """Run a job with one task per process to its end; return it and its alert event."""
        job = self.make_job(**fields)
        for n, process in enumerate(processes, 1):
            self.make_task(
                job,
                f"T{n}",
                description=f"Post batch {n}",
                process=process,
                parameters={"message": f"Ledger {n} locked\nTraceback follows"}
                if process == "demo.fail"
                else {},
            )
        start(job)
        drain(job)
        return job, AlertEvent.objects.get(job=job)

    def subscribe(self, user: User, job: BatchJob, **choices: bool) -> BatchJobAlert:
        return BatchJobAlert.objects.create(job=job, user=user, **choices)

    def notifications(self, event: AlertEvent) -> dict[str, tuple[bool, str]]:
        rows = Notification.objects.filter(event=event).values_list(
            "user__username", "popup", "email"
        )
        return {name: (popup, email) for name, popup, email in rows}


class RecipientsTestCase(AlertTestCase):
    def test_it_alerts_the_users_whose_job_alerts_want_the_kind(self):
        job = self.make_job()
        self.subscribe(self.alice, job, error=True, popup=True, email=True)
        self.subscribe(self.bob, job, ended=True, canceled=True, popup=True)  # not on Error
        self.subscribe(self.dave, job, error=True, popup=False, email=True)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        assert event.kind == AlertKind.ERROR

        result = delivery.deliver(event.pk)

        assert result is not None and result.notified == 2
        assert self.notifications(event) == {
            "alice": (True, Email.SENT),
            "dave": (False, Email.SENT),
        }
        assert sorted(m.to[0] for m in mail.outbox) == ["alice@example.org", "dave@example.org"]
        event.refresh_from_db()
        assert event.processed_at is not None
        assert event.attempts == 1

    def test_it_tells_ended_from_error(self):
        job = self.make_job()
        self.subscribe(self.alice, job, ended=True, popup=True)
        self.subscribe(self.bob, job, error=True, popup=True)
        self.make_task(job, "T1")
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        delivery.deliver(event.pk)
        assert (event.kind, self.notifications(event)) == (
            AlertKind.ENDED,
            {"alice": (True, Email.NONE)},
        )
        assert mail.outbox == []

    def test_it_merges_every_reason_of_one_user_into_one_alert(self):
        integration = BatchGroup.objects.create(code="Integration")
        job = self.make_job(priority=Priority.HIGH, priority_overridden=True)
        self.make_task(job, "T1", group=integration, process="demo.fail")
        self.subscribe(self.alice, job, error=True, popup=True, email=False)
        AlertRule.objects.create(user=self.alice, group=integration, popup=False, email=True)
        AlertRule.objects.create(user=self.alice, priority=Priority.HIGH, popup=True)
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)

        delivery.deliver(event.pk)

        assert self.notifications(event) == {"alice": (True, Email.SENT)}
        assert len(mail.outbox) == 1

    def test_it_matches_rules_by_group_and_priority(self):
        integration = BatchGroup.objects.create(code="Integration")
        reporting = BatchGroup.objects.create(code="Reporting")
        AlertRule.objects.create(user=self.alice, group=integration)  # error, popup
        AlertRule.objects.create(user=self.bob, group=reporting)
        AlertRule.objects.create(user=self.charlie, priority=Priority.HIGH)
        AlertRule.objects.create(user=self.dave, priority=Priority.LOW)
        job = self.make_job(priority=Priority.HIGH, priority_overridden=True)
        self.make_task(job, "T1", group=integration, process="demo.fail")
        self.make_task(job, "T2")  # default group
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        assert sorted(r.user_id for r in delivery.recipients(event)) == [
            self.alice.pk,
            self.charlie.pk,
        ]

    def test_a_job_that_keeps_its_groups_priority_matches_rules_by_its_tasks_priorities(self):
        # Tasks run with their batch group's priority unless the job overrides it, so a rule
        # for High hears of a job whose tasks run High, whatever the job's own field holds.
        integration = BatchGroup.objects.create(code="Integration", default_priority=Priority.HIGH)
        AlertRule.objects.create(user=self.alice, priority=Priority.HIGH)
        AlertRule.objects.create(user=self.bob, priority=Priority.LOW)  # the job's own field
        AlertRule.objects.create(user=self.charlie, priority=Priority.NORMAL)  # T2's group
        job = self.make_job(priority=Priority.LOW, priority_overridden=False)
        self.make_task(job, "T1", group=integration, process="demo.fail")
        self.make_task(job, "T2")  # default group: Normal
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        assert event.details["priorities"] == [Priority.NORMAL, Priority.HIGH]
        assert sorted(r.user_id for r in delivery.recipients(event)) == [
            self.alice.pk,
            self.charlie.pk,
        ]
        # The group's priority changed after the run: the snapshot decides.
        BatchGroup.objects.filter(pk=integration.pk).update(default_priority=Priority.LOW)
        assert self.bob.pk not in [r.user_id for r in delivery.recipients(event)]

    def test_an_event_of_a_running_job_matches_rules_by_its_tasks_priorities_now(self):
        # A stuck alert snapshots no priorities: the job still runs, so they are read now.
        reporting = BatchGroup.objects.create(code="Reporting", default_priority=Priority.CRITICAL)
        AlertRule.objects.create(user=self.alice, priority=Priority.CRITICAL, stuck=True)
        AlertRule.objects.create(user=self.bob, priority=Priority.NORMAL, stuck=True)
        job = self.make_job(status=S.EXECUTING)
        self.make_task(job, "T1", group=reporting)
        event = AlertEvent.objects.create(job=job, kind=AlertKind.LONG_RUNNING, key="x", details={})
        assert [r.user_id for r in delivery.recipients(event)] == [self.alice.pk]

    def test_it_matches_a_rule_without_group_or_priority_to_every_job(self):
        AlertRule.objects.create(user=self.bob, ended=True, error=False)
        job, event = self.run_job("demo.noop")
        assert [r.user_id for r in delivery.recipients(event)] == [self.bob.pk]
        # A rule that wants only errors stays silent on Ended.
        AlertRule.objects.filter(user=self.bob).update(ended=False, error=True)
        assert delivery.recipients(event) == []

    def test_it_alerts_every_batch_job_manager_when_a_critical_job_fails(self):
        erin = User.objects.create_user("erin", "", "password")  # a manager without an address
        erin.groups.add(Group.objects.get(name=MANAGER))
        gone = User.objects.create_user("frank", "frank@example.org", "password", is_active=False)
        gone.groups.add(Group.objects.get(name=MANAGER))
        job, event = self.run_job("demo.fail", critical=True)

        with self.assertLogs("batchadmin.alerts.delivery", "WARNING") as logs:
            delivery.deliver(event.pk)

        assert self.notifications(event) == {
            "alice": (True, Email.SENT),
            "erin": (True, Email.NONE),
        }
        assert [m.to for m in mail.outbox] == [["alice@example.org"]]
        assert mail.outbox[0].subject.startswith(f"Critical batch job {job.pk} ended in Error")
        assert "no e-mail address" in logs.output[0]

    def test_it_does_not_alert_managers_when_a_critical_job_ends_well(self):
        job, event = self.run_job("demo.noop", critical=True)
        assert delivery.recipients(event) == []

    def test_it_gives_a_user_without_an_address_a_popup_instead_of_an_email(self):
        job = self.make_job()
        nobody = User.objects.create_user("nobody", "", "password")
        self.subscribe(nobody, job, error=True, popup=False, email=True)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        with self.assertLogs("batchadmin.alerts.delivery", "WARNING"):
            delivery.deliver(event.pk)
        assert self.notifications(event) == {"nobody": (True, Email.NONE)}

    def test_it_skips_deactivated_users_and_alerts_that_choose_no_channel(self):
        job = self.make_job()
        self.subscribe(self.alice, job, error=True, popup=False, email=False)
        self.subscribe(self.bob, job, error=True, popup=True)
        User.objects.filter(pk=self.bob.pk).update(is_active=False)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        drain(job)
        assert delivery.recipients(AlertEvent.objects.get(job=job)) == []


class ExactlyOnceTestCase(AlertTestCase):
    def test_it_alerts_once_however_often_the_run_ends_or_is_delivered(self):
        job = self.make_job()
        self.subscribe(self.alice, job, error=True, popup=True, email=True)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        job.refresh_from_db()
        assert job.ended_at is not None
        # The finishing step again for the same run: no second event.
        assert (
            outbox.job_ended(job, run_id=event.job_run_id, final=S.ERROR, at=job.ended_at) is None
        )
        assert AlertEvent.objects.filter(job=job).count() == 1

        first = delivery.deliver(event.pk)
        second = delivery.deliver(event.pk)

        assert first is not None and (first.notified, first.sent) == (1, 1)
        assert second is not None and (second.notified, second.sent) == (0, 0)
        assert Notification.objects.filter(event=event).count() == 1
        assert len(mail.outbox) == 1

    def test_it_does_not_fan_out_again_to_users_who_subscribe_later(self):
        job, event = self.run_job("demo.fail")
        delivery.deliver(event.pk)
        self.subscribe(self.alice, job, error=True, popup=True, email=True)
        delivery.deliver(event.pk)
        assert not Notification.objects.exists()

    def test_it_sends_an_email_only_to_the_delivery_that_claims_it(self):
        job = self.make_job()
        self.subscribe(self.alice, job, error=True, email=True)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)
        delivery.fan_out(event)
        notification = Notification.objects.get(event=event)
        assert delivery.claim(notification) is not None
        assert delivery.claim(notification) is None  # a racing delivery read it as pending too
        delivery.send_emails(event, delivery.Result())  # it is "sending": nothing to do
        assert mail.outbox == []

    def test_it_returns_quietly_for_an_event_whose_job_was_deleted(self):
        job, event = self.run_job("demo.fail")
        job.delete()
        with self.assertLogs("batchadmin.alerts.delivery", "INFO"):
            assert delivery.deliver(event.pk) is None
        tasks.deliver_alerts.run(event.pk)  # the task neither raises nor retries


class MessageTestCase(AlertTestCase):
    def test_it_sends_text_and_html_with_the_failing_tasks_and_a_link_to_the_run(self):
        UserPreference.objects.create(user=self.alice, time_zone="Europe/Oslo")
        with time_machine.travel(NINE, tick=False):
            job = self.make_job(description="Settle <vendors> & pay")
            self.subscribe(self.alice, job, error=True, email=True)
            for n in range(1, 13):
                self.make_task(
                    job,
                    f"T{n:02d}",
                    description=f"Post batch {n}",
                    process="demo.fail",
                    parameters={"message": f"Ledger {n} locked\nsecond line"},
                )
            start(job)
        with time_machine.travel(NINE + dt.timedelta(minutes=3, seconds=5), tick=False):
            drain(job)
        event = AlertEvent.objects.get(job=job)
        run = BatchJobRun.objects.get(job=job)

        delivery.deliver(event.pk)

        [message] = mail.outbox
        url = f"http://localhost:8000/jobs/{job.pk}/history/{run.pk}/"
        assert message.subject == f"Batch job {job.pk} ended in Error: Settle <vendors> & pay"
        assert message.to == ["alice@example.org"]
        assert message.extra_headers["Auto-Submitted"] == "auto-generated"
        text = message.body
        assert "Job:       Settle <vendors> & pay" in text
        assert "Status:    Error" in text
        assert "Started:   2025-03-01 10:00:00 Europe/Oslo" in text  # Alice's zone
        assert "Ended:     2025-03-01 10:03:05 Europe/Oslo" in text
        assert "Duration:  3 min 05 s" in text
        assert "Failed tasks (12):\n- T01 Post batch 1: DemoFailure: Ledger 1 locked\n" in text
        assert "second line" not in text
        assert "T10 Post batch 10" in text and "T11" not in text
        assert "and 2 more" in text
        assert f"Open the run: {url}" in text
        assert isinstance(message, EmailMultiAlternatives)
        [(content, mimetype)] = message.alternatives
        html = str(content)
        assert mimetype == "text/html"
        assert "Settle &lt;vendors&gt; &amp; pay" in html
        assert "DemoFailure: Ledger 1 locked" in html
        assert f'href="{url}"' in html
        assert "and 2 more" in html
        assert "<link" not in html and "<script" not in html  # no external assets

    def test_it_links_to_the_job_when_the_run_was_not_kept_in_history(self):
        job = self.make_job(save_history=SaveHistory.NEVER)
        self.subscribe(self.alice, job, error=True, email=True)
        self.make_task(job, "T1", process="demo.fail", parameters={"message": "Out of paper"})
        start(job)
        drain(job)
        assert not BatchJobRun.objects.filter(job=job).exists()
        event = AlertEvent.objects.get(job=job)

        delivery.deliver(event.pk)

        [message] = mail.outbox
        assert f"Open the job: http://localhost:8000/jobs/{job.pk}/\n" in message.body
        assert "DemoFailure: Out of paper" in message.body  # from the snapshot

    @override_settings(SITE_ROOT="https://batch.example.com")
    def test_it_explains_a_stuck_alert(self):
        job = self.make_job(status=S.EXECUTING, started_at=NINE)
        AlertRule.objects.create(user=self.bob, stuck=True, email=True)
        reason = "running 42 min 00 s, usually 8 min 00 s (median of the last 10 runs)"
        event_id = outbox.record(
            job,
            AlertKind.LONG_RUNNING,
            key="run:1:long_running",
            details={"status": "executing", "started_at": NINE.isoformat(), "reason": reason},
        )
        assert event_id is not None

        delivery.deliver(event_id)

        [message] = mail.outbox
        assert message.subject == (
            f"Batch job {job.pk} is running far longer than usual: Nightly settlement"
        )
        assert f"Why:       {reason}" in message.body
        assert "Status:    Executing" in message.body
        assert f"https://batch.example.com/jobs/{job.pk}/" in message.body


class RetryTestCase(AlertTestCase):
    def setUp(self):
        super().setUp()
        self.closed_port = free_port()

    def smtp_down(self) -> Any:
        return override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=self.closed_port,
            EMAIL_TIMEOUT=2,
        )

    def failed_event(self) -> AlertEvent:
        job = self.make_job()
        self.subscribe(self.alice, job, error=True, email=True)
        self.subscribe(self.bob, job, error=True, email=True)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        drain(job)
        return AlertEvent.objects.get(job=job)

    def test_it_puts_the_email_back_and_retries_with_backoff_while_the_server_is_down(self):
        event = self.failed_event()
        with self.smtp_down(), time_machine.travel(NINE, tick=False):
            result = delivery.deliver(event.pk)
        assert result is not None and (result.sent, result.failed) == (0, 2)
        assert result.retry_in == 30  # BATCH_ALERT_RETRY_SECONDS
        rows = Notification.objects.filter(event=event).order_by("user__username")
        assert [(n.email, n.email_attempts) for n in rows] == [(Email.PENDING, 1)] * 2
        assert "ConnectionRefusedError" in rows[0].email_error
        # The popup is there at once; only the e-mail waits.
        assert all(n.popup for n in rows)

        # Not due yet: a delivery now (a duplicate message) leaves them alone.
        with time_machine.travel(NINE + dt.timedelta(seconds=29), tick=False):
            result = delivery.deliver(event.pk)
        assert result is not None and (result.sent, result.failed) == (0, 0)

        with self.smtp_down(), time_machine.travel(NINE + dt.timedelta(seconds=30), tick=False):
            result = delivery.deliver(event.pk)
        assert result is not None and result.retry_in == 60  # doubled

        with time_machine.travel(NINE + dt.timedelta(seconds=90), tick=False):
            result = delivery.deliver(event.pk)  # the server is back (locmem)
        assert result is not None and result.sent == 2
        assert Notification.objects.filter(event=event, email=Email.SENT).count() == 2
        assert len(mail.outbox) == 2

    @override_settings(BATCH_ALERT_EMAIL_ATTEMPTS=2)
    def test_it_gives_up_after_the_last_attempt(self):
        event = self.failed_event()
        with self.smtp_down(), time_machine.travel(NINE, tick=False):
            delivery.deliver(event.pk)
        with (
            self.smtp_down(),
            time_machine.travel(NINE + dt.timedelta(minutes=1), tick=False),
            self.assertLogs("batchadmin.alerts.delivery", "ERROR"),
        ):
            result = delivery.deliver(event.pk)
        assert result is not None and result.retry_in is None
        assert set(Notification.objects.values_list("email", "email_attempts")) == {
            (Email.FAILED, 2)
        }

    @override_settings(EMAIL_BACKEND="tests.alerts.test_delivery.PickyBackend")
    def test_it_still_sends_the_others_when_one_recipient_is_refused(self):
        event = self.failed_event()
        result = delivery.deliver(event.pk)
        assert result is not None and (result.sent, result.failed) == (1, 1)
        assert [m.to for m in mail.outbox] == [["alice@example.org"]]
        bob = Notification.objects.get(event=event, user=self.bob)
        assert (bob.email, bob.email_attempts) == (Email.PENDING, 1)
        assert "SMTPRecipientsRefused" in bob.email_error

    def test_it_does_not_fail_the_job_when_the_mail_server_is_down(self):
        # Delivery runs after the settling transaction, in its own task: the job is Error
        # (its own result), history is written, whatever the mail server does.
        with self.smtp_down():
            event = self.failed_event()
            event.job.refresh_from_db()
            assert event.job.status == S.ERROR
            with self.assertRaises(Retry):
                tasks.deliver_alerts.run(event.pk)

    def test_the_task_retries_when_an_email_failed(self):
        event = self.failed_event()
        retry = Retry("retry")
        with (
            self.smtp_down(),
            mock.patch.object(tasks.deliver_alerts, "retry", return_value=retry) as task_retry,
            time_machine.travel(NINE, tick=False),
            self.assertRaises(Retry),
        ):
            tasks.deliver_alerts.run(event.pk)
        task_retry.assert_called_once_with(countdown=30)

    def test_the_task_does_not_retry_when_everything_went_out(self):
        event = self.failed_event()
        with mock.patch.object(tasks.deliver_alerts, "retry") as task_retry:
            tasks.deliver_alerts.run(event.pk)
        task_retry.assert_not_called()
        assert len(mail.outbox) == 2


class OutboxTestCase(AlertTestCase):
    def test_it_queues_the_delivery_after_the_job_ends(self):
        job = self.make_job()
        self.subscribe(self.bob, job, error=True, popup=True)
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        with self.captureOnCommitCallbacks(execute=True):
            drain(job)
        event = AlertEvent.objects.get(job=job)
        assert event.processed_at is None
        self.send_alert.assert_called_once_with(event.pk)

    @unittest.skipUnless(connection.vendor == "postgresql", "SQLite queues every delivery")
    def test_it_queues_no_delivery_when_nobody_can_hear_of_it(self):
        # Kept as delivery would leave it (processed, nobody notified), with its snapshot.
        job = self.make_job()
        self.subscribe(self.bob, job, ended=True, popup=True)  # not this kind
        AlertRule.objects.create(user=self.bob, error=False, stuck=True)  # nor this
        self.make_task(job, "T1", process="demo.fail")
        start(job)
        with self.captureOnCommitCallbacks(execute=True):
            drain(job)
        event = AlertEvent.objects.get(job=job)
        assert event.processed_at is not None
        assert event.details["failed_count"] == 1
        assert event.details["priorities"] == [BatchGroup.objects.default().default_priority]
        self.send_alert.assert_not_called()
        assert delivery.deliver(event.pk) == delivery.Result()
        assert not Notification.objects.filter(event=event).exists()

    def test_it_queues_the_delivery_for_an_alert_rule_or_a_critical_error(self):
        for critical, rule in ((True, False), (False, True)):
            with self.subTest(critical=critical, rule=rule):
                AlertRule.objects.all().delete()
                if rule:
                    AlertRule.objects.create(user=self.bob, error=True)
                job = self.make_job(critical=critical)
                self.make_task(job, "T1", process="demo.fail")
                start(job)
                self.send_alert.reset_mock()
                with self.captureOnCommitCallbacks(execute=True):
                    drain(job)
                event = AlertEvent.objects.get(job=job)
                assert event.processed_at is None
                self.send_alert.assert_called_once_with(event.pk)

    def test_it_sends_the_delivery_task_to_the_alerts_queue(self):
        # outbox.send is a mock in every test (tests/base.py); this is the real one.
        with mock.patch("batchadmin.celery.app.send_task") as send_task:
            REAL_SEND(7)
        send_task.assert_called_once_with(
            "batchadmin.deliver_alerts", args=[7], queue="batchadmin.alerts"
        )

    def test_it_alerts_on_cancel(self):
        job = self.make_job()
        self.subscribe(self.alice, job, canceled=True, popup=True)
        self.subscribe(self.bob, job, error=True, popup=True)
        self.make_task(job, "T1")
        start(job)
        assert transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        event = AlertEvent.objects.get(job=job)
        delivery.deliver(event.pk)
        assert (event.kind, self.notifications(event)) == (
            AlertKind.CANCELED,
            {"alice": (True, Email.NONE)},
        )


REAL_SEND = outbox.send

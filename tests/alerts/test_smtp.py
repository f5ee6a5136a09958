from __future__ import annotations

from django.test import override_settings

from batchadmin.alerts import delivery
from batchadmin.alerts.models import AlertEvent, BatchJobAlert, Notification
from tests.alerts.smtp import Inbox, bodies
from tests.base import BaseTestCase, drain, start
from tests.e2e.cluster import free_port


class SmtpTestCase(BaseTestCase):
    """Real SMTP: Django's SMTP backend talks to a local aiosmtpd server."""

    def test_it_sends_the_alert_through_an_smtp_server(self):
        inbox = Inbox(free_port()).start()
        self.addCleanup(inbox.stop)
        job = self.make_job()
        BatchJobAlert.objects.create(job=job, user=self.alice, error=True, email=True)
        self.make_task(job, "T1", process="demo.fail", parameters={"message": "Disk full"})
        start(job)
        drain(job)
        event = AlertEvent.objects.get(job=job)

        with override_settings(
            EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
            EMAIL_HOST="127.0.0.1",
            EMAIL_PORT=inbox.port,
            DEFAULT_FROM_EMAIL="batch@example.org",
        ):
            result = delivery.deliver(event.pk)

        assert result is not None and result.sent == 1
        [message] = inbox.to("alice@example.org")
        assert message["From"] == "batch@example.org"
        assert message["Subject"] == f"Batch job {job.pk} ended in Error: Nightly settlement"
        text, html = bodies(message)
        assert "- T1 Task T1: DemoFailure: Disk full" in text
        assert "DemoFailure: Disk full" in html
        assert Notification.objects.get().email == Notification.Email.SENT

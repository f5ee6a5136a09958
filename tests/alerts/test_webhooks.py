"""Webhooks: one signed POST per alert event and webhook, to a real HTTP server on loopback."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Any

import time_machine
from django.test import override_settings
from django.utils.timezone import now

from batchadmin.alerts import delivery, webhooks
from batchadmin.alerts.models import (
    AlertEvent,
    AlertKind,
    AlertRule,
    JobWebhook,
    Webhook,
    WebhookDelivery,
)
from batchadmin.alerts.stuck import check_long_running
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus
from tests.alerts.receiver import Receiver
from tests.base import BaseTestCase, drain, start

State = WebhookDelivery.State
SECRET = "s3cret-shared-with-the-receiver"


@override_settings(
    BATCH_WEBHOOK_ALLOW_PRIVATE=True,  # the receiver listens on 127.0.0.1
    BATCH_WEBHOOK_TIMEOUT_SECONDS=5,
    SITE_ROOT="https://batch.example.org",
)
class WebhookTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.receiver = Receiver().start()
        self.addCleanup(self.receiver.stop)

    def hook(self, format: str = "json", **fields: Any) -> Webhook:
        defaults = {"code": f"ops-{format}", "url": self.receiver.url, "secret": SECRET}
        return Webhook.objects.create(format=format, **(defaults | fields))

    def run_job(self, process: str = "demo.fail", **events: bool) -> tuple[BatchJob, AlertEvent]:
        job = self.make_job(description="Post invoices USMF")
        self.make_task(
            job,
            "post",
            description="Post the journal",
            process=process,
            parameters={"message": "Ledger USMF-2025 locked\nsecond line"}
            if process == "demo.fail"
            else {},
        )
        for hook in Webhook.objects.all():
            JobWebhook.objects.create(job=job, webhook=hook, **events)
        start(job)
        drain(job)
        return job, AlertEvent.objects.get(job=job)

    def test_it_posts_one_signed_request_per_event_and_webhook(self):
        self.hook()
        job, event = self.run_job(error=True)
        result = delivery.deliver(event.pk)
        assert result is not None and result.posted == 1
        # The same event delivered again, as the sweep or a second message would: nothing new.
        assert delivery.deliver(event.pk).posted == 0  # type: ignore[union-attr]
        [request] = self.receiver.received()
        assert request.path == "/hooks/batch"
        expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
        assert request.headers["X-Batchadmin-Signature"] == f"sha256={expected}"
        [row] = WebhookDelivery.objects.filter(event=event)
        assert request.headers["X-Batchadmin-Event"] == "error"
        assert request.headers["X-Batchadmin-Delivery"] == str(row.pk)
        assert request.headers["Content-Type"] == "application/json; charset=utf-8"
        run = BatchJobRun.objects.get(job=job)
        body = request.json
        assert body | {"created": None, "duration_seconds": None} == {
            "event": "error",
            "event_id": event.pk,
            "delivery_id": row.pk,
            "headline": f"Batch job {job.pk} ended in Error",
            "job": {
                "id": job.pk,
                "description": "Post invoices USMF",
                "link": f"https://batch.example.org/jobs/{job.pk}/",
                "critical": False,
            },
            "run": {
                "id": run.pk,
                "link": f"https://batch.example.org/jobs/{job.pk}/history/{run.pk}/",
            },
            "status": "error",
            "started_at": job.started_at.isoformat(),  # type: ignore[union-attr]
            "ended_at": job.ended_at.isoformat(),  # type: ignore[union-attr]
            "failed_tasks": [
                {
                    "key": "post",
                    "description": "Post the journal",
                    "error": "DemoFailure: Ledger USMF-2025 locked",
                }
            ],
            "failed_count": 1,
            "reason": "",
            "created": None,
            "duration_seconds": None,
        }
        assert isinstance(body["duration_seconds"], int)
        row.refresh_from_db()
        assert (row.state, row.attempts, row.last_status) == (State.SENT, 1, 200)
        assert row.sent_at is not None

    def test_it_posts_nothing_for_an_end_the_job_did_not_subscribe(self):
        self.hook()
        _, event = self.run_job("demo.noop", error=True, canceled=True)  # it Ended
        delivery.deliver(event.pk)
        assert self.receiver.received() == []
        assert not WebhookDelivery.objects.exists()

    def test_it_retries_while_the_receiver_answers_503_and_then_sends(self):
        self.hook()
        _, event = self.run_job(error=True)
        self.receiver.answer(503, 503)
        at = now()
        result = delivery.deliver(event.pk)
        assert result is not None and result.posted == 0 and result.retry_in is not None
        row = WebhookDelivery.objects.get(event=event)
        assert (row.state, row.attempts, row.last_status) == (State.PENDING, 1, 503)
        assert row.last_error == "HTTP 503: busy, try later"
        delivery.deliver(event.pk)  # too early: the backoff (30 s) is not over
        assert len(self.receiver.received()) == 1
        with time_machine.travel(at + dt.timedelta(seconds=31), tick=False):
            delivery.deliver(event.pk)
        with time_machine.travel(at + dt.timedelta(seconds=31 + 61), tick=False):
            delivery.deliver(event.pk)
        requests = self.receiver.received()
        assert len(requests) == 3
        # Every attempt is the same request: a receiver drops repeats by the delivery id.
        assert len({r.body for r in requests}) == 1
        row.refresh_from_db()
        assert (row.state, row.attempts, row.last_status) == (State.SENT, 3, 200)

    def test_a_receiver_that_refuses_the_request_is_not_asked_again(self):
        self.hook()
        _, event = self.run_job(error=True)
        self.receiver.answer(400)
        result = delivery.deliver(event.pk)
        assert result is not None and result.retry_in is None
        row = WebhookDelivery.objects.get(event=event)
        assert (row.state, row.attempts, row.last_status) == (State.FAILED, 1, 400)

    @override_settings(BATCH_WEBHOOK_ATTEMPTS=2)
    def test_a_receiver_that_stays_down_fails_after_the_last_attempt(self):
        self.hook(url="http://127.0.0.1:1/nobody-listens")
        _, event = self.run_job(error=True)
        delivery.deliver(event.pk)
        row = WebhookDelivery.objects.get(event=event)
        assert (row.state, row.attempts, row.last_status) == (State.PENDING, 1, None)
        assert row.last_error.startswith("ConnectionRefusedError")
        with time_machine.travel(now() + dt.timedelta(minutes=5), tick=False):
            delivery.deliver(event.pk)
        row.refresh_from_db()
        assert (row.state, row.attempts) == (State.FAILED, 2)

    def test_teams_gets_a_message_with_an_adaptive_card(self):
        self.hook("teams")
        job, event = self.run_job(error=True)
        delivery.deliver(event.pk)
        [request] = self.receiver.received()
        run = BatchJobRun.objects.get(job=job)
        message = request.json
        assert message["type"] == "message"
        [attachment] = message["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        assert attachment["contentUrl"] is None
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard"
        assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
        assert card["version"] == "1.4"
        title, facts, *failed = card["body"]
        assert title == {
            "type": "TextBlock",
            "text": f"Batch job {job.pk} ended in Error",
            "size": "Medium",
            "weight": "Bolder",
            "wrap": True,
            "color": "attention",
        }
        assert facts["type"] == "FactSet"
        assert facts["facts"][:2] == [
            {"title": "Job", "value": f"Post invoices USMF (batch job {job.pk})"},
            {"title": "Status", "value": "Error"},
        ]
        assert failed[-1]["text"] == "- post Post the journal: DemoFailure: Ledger USMF-2025 locked"
        assert card["actions"] == [
            {
                "type": "Action.OpenUrl",
                "title": "Open the run",
                "url": f"https://batch.example.org/jobs/{job.pk}/history/{run.pk}/",
            }
        ]
        assert request.headers["X-Batchadmin-Signature"].startswith("sha256=")

    def test_slack_gets_a_message_in_blocks(self):
        self.hook("slack")
        job, event = self.run_job(error=True)
        delivery.deliver(event.pk)
        [request] = self.receiver.received()
        run = BatchJobRun.objects.get(job=job)
        message = request.json
        assert message["text"] == f"Batch job {job.pk} ended in Error: Post invoices USMF"
        headline, facts, failed = message["blocks"]
        link = f"https://batch.example.org/jobs/{job.pk}/history/{run.pk}/"
        assert headline == {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"*<{link}|Batch job {job.pk} ended in Error>*"},
        }
        assert facts["fields"][1] == {"type": "mrkdwn", "text": "*Status*\nError"}
        assert all(f["type"] == "mrkdwn" for f in facts["fields"])
        assert failed["text"]["text"] == (
            "*Failed tasks (1)*\n• post Post the journal: DemoFailure: Ledger USMF-2025 locked"
        )

    def test_slack_text_is_escaped(self):
        context = {
            "headline": "Batch job 1 ended",
            "description": "A <b> & c",
            "url": "https://x/jobs/1/",
            "job_id": 1,
            "status": "Ended",
            "started_at": None,
            "ended_at": None,
            "duration": "",
            "reason": "",
            "failed_tasks": [],
            "failed_count": 0,
            "more_failed": 0,
        }
        fields = webhooks.slack(context)["blocks"][1]["fields"]
        assert fields[0]["text"] == "*Job*\nA &lt;b&gt; &amp; c (batch job 1)"

    def test_alert_rules_post_their_kinds_stuck_included_and_each_webhook_once(self):
        hook = self.hook()
        rule = AlertRule.objects.create(user=self.alice, error=True, stuck=True, popup=False)
        rule.webhooks.add(hook)
        job, event = self.run_job(error=True)  # the job's own subscription too: still once
        delivery.deliver(event.pk)
        assert len(self.receiver.received()) == 1
        # A stuck job: the rule wants it, the job's own webhooks (ended/error/canceled) do not.
        running = self.make_job(description="Month-end close", status=BatchStatus.WAITING)
        self.make_task(running, "close", process="demo.sleep", parameters={"seconds": 1})
        start(running)
        for n in range(5):
            BatchJobRun.objects.create(
                job=running,
                status=BatchStatus.ENDED,
                scheduled_start=now() - dt.timedelta(days=n + 1),
                started_at=now() - dt.timedelta(days=n + 1),
                ended_at=now() - dt.timedelta(days=n + 1) + dt.timedelta(minutes=1),
            )
        with time_machine.travel(now() + dt.timedelta(hours=1), tick=False):
            assert check_long_running(now()) == 1
            stuck = AlertEvent.objects.get(job=running, kind=AlertKind.LONG_RUNNING)
            delivery.deliver(stuck.pk)
        body = self.receiver.received()[-1].json
        assert (body["event"], body["job"]["id"]) == ("long_running", running.pk)
        assert body["reason"].startswith("running 1 h")

    def test_a_disabled_webhook_gets_nothing(self):
        self.hook(enabled=False)
        _, event = self.run_job(error=True)
        delivery.deliver(event.pk)
        assert self.receiver.received() == []

    @override_settings(BATCH_WEBHOOK_ALLOW_PRIVATE=False)
    def test_a_private_address_is_refused_unless_allowed(self):
        hook = self.hook()  # saved directly: the form would refuse it (test_webhook_pages)
        _, event = self.run_job(error=True)
        delivery.deliver(event.pk)
        assert self.receiver.received() == []
        row = WebhookDelivery.objects.get(event=event, webhook=hook)
        assert row.state == State.FAILED
        assert "127.0.0.1 is a private, loopback or reserved address" in row.last_error

    def test_two_deliveries_claim_a_request_once(self):
        self.hook()
        _, event = self.run_job(error=True)
        delivery.fan_out(event)
        row = WebhookDelivery.objects.get(event=event)
        assert webhooks.claim(row) is not None
        assert webhooks.claim(row) is None  # the second delivery read it pending, too late

    def test_the_sweep_resends_overdue_requests_and_frees_interrupted_ones(self):
        self.hook()
        _, event = self.run_job(error=True)
        self.receiver.answer(503)
        delivery.deliver(event.pk)
        self.send_alert.reset_mock()
        with self.captureOnCommitCallbacks(execute=True):
            assert delivery.sweep(now() + dt.timedelta(minutes=2)) == 1
        self.send_alert.assert_called_once_with(event.pk)
        WebhookDelivery.objects.filter(event=event).update(state=State.SENDING, attempt_at=now())
        assert delivery.free_interrupted(now() + dt.timedelta(hours=1)) == 1
        row = WebhookDelivery.objects.get(event=event)
        assert (row.state, row.attempts) == (State.PENDING, 2)

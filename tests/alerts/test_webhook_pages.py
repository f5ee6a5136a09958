"""The webhook pages (managers), the job's Alerts dialog and alert rules choosing webhooks."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.test import override_settings

from batchadmin.alerts.models import AlertEvent, AlertKind, AlertRule, JobWebhook, Webhook
from batchadmin.alerts.models import WebhookDelivery as Delivery
from batchadmin.jobs import copying
from tests.base import BaseTestCase

URL = "/alerts/webhooks/"
HTMX = {"HX-Request": "true"}


def hook_data(**overrides: str) -> dict[str, str]:
    data = {
        "code": "ops-teams",
        "description": "Operations channel",
        "url": "https://contoso.webhook.office.com/webhookb2/abc",
        "format": "teams",
        "secret": "a-long-shared-secret",
        "enabled": "on",
    }
    return data | overrides


class WebhookPagesTestCase(BaseTestCase):
    def test_only_managers_may_open_them(self):
        hook = Webhook.objects.create(code="x", url="https://example.org/h", secret="s")
        for user in (self.bob, self.dave, self.charlie):
            self.client.force_login(user)
            assert self.client.get(URL).status_code == 403
            assert self.client.post(URL + "new/", hook_data()).status_code == 403
            assert self.client.post(f"{URL}{hook.pk}/edit/", hook_data()).status_code == 403
            assert self.client.post(f"{URL}{hook.pk}/delete/").status_code == 403
        assert Webhook.objects.get().code == "x"

    def test_a_manager_creates_edits_and_deletes_one(self):
        self.client.force_login(self.alice)
        form = self.client.get(URL + "new/", headers=HTMX).content.decode()
        assert 'name="secret"' in form and 'value="' in form.split('name="secret"')[1][:200]
        r = self.client.post(URL + "new/", hook_data(), headers=HTMX)
        assert r.status_code == 200 and "dialog-close" in r["HX-Trigger"]
        hook = Webhook.objects.get(code="ops-teams")
        assert (hook.format, hook.enabled) == ("teams", True)
        self.client.post(f"{URL}{hook.pk}/edit/", hook_data(enabled=""), headers=HTMX)
        hook.refresh_from_db()
        assert not hook.enabled
        page = self.client.get(URL).content.decode()
        assert "ops-teams" in page and "Microsoft Teams" in page and "Disabled" in page
        self.client.post(f"{URL}{hook.pk}/delete/", headers=HTMX)
        assert not Webhook.objects.exists()

    def test_only_http_urls_to_public_addresses_unless_allowed(self):
        self.client.force_login(self.alice)
        for url, message in [
            ("ftp://example.org/x", "Only http and https URLs can be called"),
            ("http://127.0.0.1:6379/", "127.0.0.1 is a private, loopback or reserved address"),
            ("http://10.1.2.3/hook", "10.1.2.3 is a private, loopback or reserved address"),
            ("http://localhost:8000/", "localhost is this machine"),
            ("http://[::1]/x", "::1 is a private, loopback or reserved address"),
        ]:
            html = self.client.post(URL + "new/", hook_data(url=url), headers=HTMX)
            assert message in html.content.decode(), url
        assert not Webhook.objects.exists()
        with override_settings(BATCH_WEBHOOK_ALLOW_PRIVATE=True):
            self.client.post(URL + "new/", hook_data(url="http://10.1.2.3/hook"), headers=HTMX)
        assert Webhook.objects.get().url == "http://10.1.2.3/hook"

    def test_the_delivery_log_shows_each_request_s_state_and_answer(self):
        hook = Webhook.objects.create(code="ops", url="https://example.org/h", secret="s")
        job = self.make_job()
        event = AlertEvent.objects.create(job=job, kind=AlertKind.ERROR, key="e1")
        Delivery.objects.create(
            event=event,
            webhook=hook,
            state=Delivery.State.PENDING,
            attempts=2,
            last_status=503,
            last_error="HTTP 503: busy",
        )
        self.client.force_login(self.alice)
        page = self.client.get(URL + "?webhook=ops").content.decode()
        assert "Delivery log" in page and "of ops" in page
        assert "HTTP 503" in page and "busy" in page and "Pending" in page
        assert f"job {job.pk}" in page


class JobAlertsDialogTestCase(BaseTestCase):
    def test_the_dialog_sets_the_job_s_webhooks(self):
        teams = Webhook.objects.create(code="teams", url="https://a.example/h", secret="s")
        slack = Webhook.objects.create(
            code="slack", url="https://b.example/h", secret="s", format="slack"
        )
        Webhook.objects.create(code="off", url="https://c.example/h", secret="s", enabled=False)
        job = self.make_job(created_by=self.dave)
        JobWebhook.objects.create(job=job, webhook=slack, ended=True)
        self.client.force_login(self.dave)
        url = f"/jobs/{job.pk}/alerts/"
        html = self.client.get(url, headers=HTMX).content.decode()
        assert "Post to webhooks" in html and "teams" in html and ">off<" not in html
        data = {f"hook{teams.pk}_error": "on", f"hook{teams.pk}_canceled": "on"}
        r = self.client.post(url, data, headers=HTMX)
        assert "dialog-close" in r["HX-Trigger"]
        assert [(h.webhook.code, h.events()) for h in JobWebhook.objects.filter(job=job)] == [
            ("teams", ["error", "canceled"])
        ]  # slack unticked: gone

    def test_without_webhooks_the_dialog_has_no_such_section(self):
        job = self.make_job(created_by=self.dave)
        self.client.force_login(self.dave)
        html = self.client.get(f"/jobs/{job.pk}/alerts/", headers=HTMX).content.decode()
        assert "Post to webhooks" not in html


class RuleWebhooksTestCase(BaseTestCase):
    def test_a_rule_may_post_to_a_webhook_and_alert_nobody_in_person(self):
        hook = Webhook.objects.create(code="ops", url="https://a.example/h", secret="s")
        self.client.force_login(self.alice)
        r = self.client.post(
            "/alerts/rules/new/", {"error": "on", "webhooks": [hook.pk]}, headers=HTMX
        )
        assert "dialog-close" in r["HX-Trigger"], r.content.decode()
        rule = AlertRule.objects.get(user=self.alice)
        assert (rule.popup, rule.email, list(rule.webhooks.all())) == (False, False, [hook])
        page = self.client.get("/alerts/rules/").content.decode()
        assert '<span class="webhook-name">ops</span>' in page
        r = self.client.post("/alerts/rules/new/", {"ended": "on"}, headers=HTMX)
        assert "Choose how to be alerted: popup, e-mail or both." in r.content.decode()


class CopyTestCase(BaseTestCase):
    def test_a_copy_posts_to_the_same_webhooks(self):
        hook = Webhook.objects.create(code="ops", url="https://a.example/h", secret="s")
        job = self.make_job()
        JobWebhook.objects.create(job=job, webhook=hook, error=True)
        new = copying.copy_job(
            job,
            by=self.alice,
            description="Copy",
            company=None,
            scheduled_start=job.scheduled_start,
            run_as=None,
        )
        [copied] = JobWebhook.objects.filter(job=new)
        assert (copied.webhook, copied.events()) == (hook, ["error"])


class AdminTestCase(BaseTestCase):
    def test_the_admin_shows_webhooks_and_the_delivery_log(self):
        admin = User.objects.create_superuser("root", "root@example.org", "pw")
        self.client.force_login(admin)
        for url in (
            "/admin/alerts/webhook/add/",
            "/admin/alerts/webhookdelivery/",
            "/admin/alerts/jobwebhook/",
        ):
            assert self.client.get(url).status_code == 200, url

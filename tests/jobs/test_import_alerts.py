"""Import keys for webhooks and a job's alerts; export writes them back."""

from __future__ import annotations

from typing import Any

from django.test import override_settings

from batchadmin.alerts.models import BatchJobAlert, JobWebhook, Webhook
from batchadmin.jobs import io
from tests.base import BaseTestCase

HOOK = {
    "code": "ops-teams",
    "url": "https://contoso.example/hook",
    "secret": "s",
    "format": "teams",
}


def job(**extra: Any) -> dict[str, Any]:
    return {"description": "Post", "tasks": [{"key": "A", "process": "demo.noop"}]} | extra


class ImportAlertsTestCase(BaseTestCase):
    def test_it_creates_webhooks_and_the_job_s_alerts_and_exports_them_back(self):
        alerts = [
            {"webhook": "ops-teams", "on": ["error", "canceled"]},
            {"user": "bob", "on": ["ended"], "popup": True, "email": True},
            {"user": "alice", "on": ["error"]},
        ]
        [saved] = io.import_data({"webhooks": [HOOK], "jobs": [job(alerts=alerts)]})
        hook = Webhook.objects.get(code="ops-teams")
        assert (hook.url, hook.secret, hook.format) == (HOOK["url"], "s", "teams")
        [jw] = JobWebhook.objects.filter(job=saved)
        assert (jw.webhook, jw.ended, jw.error, jw.canceled) == (hook, False, True, True)
        bob = BatchJobAlert.objects.get(job=saved, user=self.bob)
        assert (bob.ended, bob.error, bob.popup, bob.email) == (True, False, True, True)
        exported = io.export_job(saved)
        assert exported["alerts"] == [
            {"webhook": "ops-teams", "on": ["error", "canceled"]},
            {"user": "alice", "on": ["error"], "popup": True, "email": False},
            {"user": "bob", "on": ["ended"], "popup": True, "email": True},
        ]
        # The export imports again to the same alerts (the webhook exists by now).
        [again] = io.import_data(exported)
        assert io.export_job(again)["alerts"] == exported["alerts"]

    def test_a_job_without_alerts_exports_no_key(self):
        [saved] = io.import_data(job())
        assert "alerts" not in io.export_job(saved)

    def test_an_existing_webhook_is_updated_by_code(self):
        Webhook.objects.create(code="ops-teams", url="https://old.example/h", secret="old")
        io.import_data({"webhooks": [HOOK]})
        assert Webhook.objects.get().url == HOOK["url"]

    def test_bad_alerts_and_webhooks_are_named_and_nothing_is_created(self):
        cases = [
            (
                {"webhooks": [HOOK | {"url": "ftp://x/y"}]},
                "webhook 'ops-teams': url: Enter a valid URL.",
            ),
            (
                {"webhooks": [HOOK | {"url": "http://192.168.1.5/hook"}]},
                "webhook 'ops-teams': url: 192.168.1.5 is a private, loopback or reserved address",
            ),
            (
                {"webhooks": [HOOK | {"format": "email"}]},
                "webhook 'ops-teams': format 'email' is not one of json, teams, slack.",
            ),
            (
                {"webhooks": [{"code": "x", "url": "https://a.b/c"}]},
                "webhook 'x': \"secret\" is required",
            ),
            (
                job(alerts=[{"webhook": "nope", "on": ["error"]}]),
                "alert 1: unknown webhook 'nope'.",
            ),
            (job(alerts=[{"user": "zed", "on": ["error"]}]), "alert 1: unknown user 'zed'."),
            (job(alerts=[{"user": "bob", "on": []}]), 'alert 1: "on" lists one or more of'),
            (job(alerts=[{"user": "bob", "on": ["late"]}]), "alert 1: event 'late' is not one of"),
            (
                job(alerts=[{"user": "bob", "on": ["error"], "popup": False}]),
                "alert 1: choose how to alert bob: popup, email or both.",
            ),
            (
                job(alerts=[{"user": "bob", "on": ["error"]}, {"user": "bob", "on": ["ended"]}]),
                "alert 2: user bob is listed twice.",
            ),
            (job(alerts=[{"on": ["error"]}]), 'alert 1: each alert is {"webhook": CODE'),
            (job(alerts="all"), '"alerts" must be a list.'),
        ]
        for data, message in cases:
            with self.subTest(message), self.assertRaisesMessage(io.ImportFailure, message):
                io.import_data(data)
        assert not Webhook.objects.exists()
        assert not BatchJobAlert.objects.exists()

    @override_settings(BATCH_WEBHOOK_ALLOW_PRIVATE=True)
    def test_private_addresses_import_where_allowed(self):
        io.import_data({"webhooks": [HOOK | {"url": "http://10.0.0.5/hook"}]})
        assert Webhook.objects.get().url == "http://10.0.0.5/hook"

    def test_e_mail_alerts_need_an_address(self):
        self.bob.email = ""
        self.bob.save()
        with self.assertRaisesMessage(io.ImportFailure, "user 'bob' has no e-mail address."):
            io.import_data(job(alerts=[{"user": "bob", "on": ["error"], "email": True}]))

    def test_what_only_a_manager_may_set_in_alerts_and_webhooks(self):
        assert io.needs_manager({"webhooks": [HOOK]}, username="dave") == (
            "Only a Batch job manager can set up webhooks."
        )
        others = job(alerts=[{"user": "bob", "on": ["error"]}])
        assert io.needs_manager(others, username="dave") == (
            "job 1, alert 1: only a Batch job manager can set alerts for others."
        )
        mine = job(alerts=[{"user": "dave", "on": ["error"]}, {"webhook": "x", "on": ["error"]}])
        assert io.needs_manager(mine, username="dave") == ""

from __future__ import annotations

from django.contrib.auth.models import User

from batchadmin.alerts import delivery, outbox
from batchadmin.alerts.models import AlertKind, AlertRule, BatchJobAlert
from tests.base import BaseTestCase


class AlertAdminTestCase(BaseTestCase):
    def test_it_lists_events_notifications_and_rules(self):
        root = User.objects.create_superuser("root", "root@example.org", "password")
        job = self.make_job()
        BatchJobAlert.objects.create(job=job, user=self.alice, error=True, email=True)
        AlertRule.objects.create(user=self.bob, stuck=True)
        event_id = outbox.record(job, AlertKind.ERROR, key="run:1:error", details={})
        assert event_id is not None
        delivery.deliver(event_id)
        self.client.force_login(root)
        for url, expected in [
            ("/admin/alerts/alertevent/", "run:1:error"),
            (f"/admin/alerts/alertevent/{event_id}/change/", "alice"),
            ("/admin/alerts/notification/", "alice"),
            ("/admin/alerts/notification/?email__exact=sent", "alice"),
            ("/admin/alerts/alertrule/", "bob"),
        ]:
            r = self.client.get(url)
            assert r.status_code == 200, url
            assert expected in r.content.decode(), url

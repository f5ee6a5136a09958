from __future__ import annotations

from django.contrib.auth.models import User

from batchadmin.engine import transitions
from batchadmin.jobs.models import BatchStatus, StatusChange
from tests.base import BaseTestCase


class StatusHistoryAdminTestCase(BaseTestCase):
    def test_the_status_history_is_read_only(self):
        root = User.objects.create_superuser("root", "root@example.org", "password")
        job = self.make_job(status=BatchStatus.WITHHOLD)
        self.make_task(job, "T1")
        assert transitions.change_status(job_id=job.pk, to=BatchStatus.WAITING, by_id=root.pk)
        change = StatusChange.objects.get(job=job)
        self.client.force_login(root)
        listing = self.client.get("/admin/jobs/statuschange/").content.decode()
        assert f"/admin/jobs/statuschange/{change.pk}/change/" in listing
        assert "/admin/jobs/statuschange/add/" not in listing
        page = self.client.get(f"/admin/jobs/statuschange/{change.pk}/change/").content.decode()
        assert 'name="_save"' not in page  # a view, not a form
        assert self.client.get("/admin/jobs/statuschange/add/").status_code == 403
        r = self.client.post(f"/admin/jobs/statuschange/{change.pk}/delete/", {"post": "yes"})
        assert r.status_code == 403
        assert StatusChange.objects.filter(pk=change.pk).exists()

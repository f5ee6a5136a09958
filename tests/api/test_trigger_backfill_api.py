"""PUT /jobs/{id}/trigger and POST /jobs/{id}/backfill."""

from __future__ import annotations

import datetime as dt

import time_machine

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchRecurrence, QueuedRun
from tests.api.base import ApiTestCase

NOW = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.UTC)


class TriggerApiTestCase(ApiTestCase):
    def test_it_sets_shows_and_clears_a_trigger(self):
        parent = self.make_job(description="Parent")
        job = self.make_job(description="Follower")
        r = self.call(
            "PUT", f"/api/v1/jobs/{job.pk}/trigger", as_user=self.alice,
            body={"after": parent.pk, "status": "ended_or_error"},
        )  # fmt: skip
        assert r.status_code == 200, r.content
        assert r.data == {"after": parent.pk, "status": "ended_or_error", "followers": []}
        shown = self.call("GET", f"/api/v1/jobs/{parent.pk}/trigger", as_user=self.alice).data
        assert shown == {"after": None, "status": "ended", "followers": [job.pk]}
        assert AuditEntry.objects.get(action="trigger_edit").via == "api"
        r = self.call(
            "PUT", f"/api/v1/jobs/{job.pk}/trigger", as_user=self.alice, body={"after": None}
        )
        assert r.data["after"] is None

    def test_it_refuses_a_loop(self):
        a = self.make_job(description="A")
        b = self.make_job(description="B", after_job=a)
        r = self.call(
            "PUT", f"/api/v1/jobs/{a.pk}/trigger", as_user=self.alice, body={"after": b.pk}
        )
        assert r.status_code == 400
        assert r.data["message"] == (
            f"Nothing was changed. Job {a.pk} can't follow job {b.pk}: job {b.pk} already runs "
            f"after job {a.pk}, and the triggers would loop ({a.pk} → {b.pk} → {a.pk})."
        )

    def test_it_refuses_a_job_the_caller_cannot_see(self):
        hidden = self.make_job(description="Alice's", created_by=self.alice)
        mine = self.make_job(description="Dave's", created_by=self.dave)
        r = self.call(
            "PUT", f"/api/v1/jobs/{mine.pk}/trigger", as_user=self.dave, body={"after": hidden.pk}
        )
        assert r.status_code == 400
        assert r.data["message"] == f"There is no batch job {hidden.pk} that you can see to follow."


@time_machine.travel(NOW, tick=False)
class BackfillApiTestCase(ApiTestCase):
    def test_it_previews_and_starts_a_backfill(self):
        job = self.make_job(scheduled_start=dt.datetime(2025, 3, 11, 2, 0, tzinfo=dt.UTC))
        BatchRecurrence.objects.create(
            job=job, start_date=dt.date(2025, 3, 1), start_time=dt.time(2, 0), time_zone="UTC",
            unit=BatchRecurrence.Unit.DAYS, every=1,
        )  # fmt: skip
        self.make_task(job, "T1")
        path = f"/api/v1/jobs/{job.pk}/backfill"
        body = {"from": "2025-03-07", "to": "2025-03-09", "dry_run": True}
        r = self.call("POST", path, as_user=self.alice, body=body)
        assert r.status_code == 200, r.content
        assert r.data == {
            "id": job.pk,
            "occurrences": [f"2025-03-0{d}T02:00:00+00:00" for d in (7, 8, 9)],
            "started": 0,
        }
        assert not QueuedRun.objects.exists()
        r = self.call("POST", path, as_user=self.alice, body=body | {"dry_run": False})
        assert r.data["started"] == 3
        assert QueuedRun.objects.count() == 3
        r = self.call("POST", path, as_user=self.alice, body={"from": "2025-03-09", "to": "x"})
        assert r.status_code == 400
        assert "to" in r.data["message"], r.data

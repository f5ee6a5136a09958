from __future__ import annotations

import json

from batchadmin.alerts.models import BatchJobAlert
from batchadmin.jobs.models import BatchJob, BatchStatus
from tests.jobs.form_base import FormTestCase, squash

S = BatchStatus


class AlertModelTestCase(FormTestCase):
    def test_it_describes_the_choices(self):
        alert = BatchJobAlert(error=True, popup=True, email=True)
        assert alert.describe() == "Error (popup, e-mail)"
        assert BatchJobAlert(ended=True, canceled=True, popup=True).describe() == (
            "Ended, Canceled (popup)"
        )
        assert BatchJobAlert(popup=True, email=True).describe() == ""


class AlertsDialogTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.login(self.dave)

    def url(self, job: BatchJob | None = None) -> str:
        return f"/jobs/{(job or self.job).pk}/alerts/"

    def test_it_is_a_dialog_fragment_for_htmx_and_a_page_without(self):
        r = self.client.get(self.url(), headers=self.htmx("dialog"))
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" not in html
        assert 'id="alerts-form"' in html
        assert "<html" in self.client.get(self.url()).content.decode()

    def test_it_saves_the_choices_and_the_job_page_shows_them(self):
        data = {"error": "on", "popup": "on", "email": "on"}
        r = self.client.post(self.url(), data, headers=self.htmx("dialog"))
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "alerts-changed": {}}
        alert = BatchJobAlert.objects.get(job=self.job, user=self.dave)
        assert (alert.ended, alert.error, alert.canceled, alert.popup, alert.email) == (
            False,
            True,
            False,
            True,
            True,
        )
        page = squash(self.client.get(f"/jobs/{self.job.pk}/").content.decode())
        assert "You get alerts on: <strong>Error (popup, e-mail)</strong>" in page
        fragment = self.client.get(f"/jobs/{self.job.pk}/", headers=self.htmx("job-alerts"))
        assert "Error (popup, e-mail)" in fragment.content.decode()

    def test_it_shows_the_saved_choices_when_opened_again(self):
        BatchJobAlert.objects.create(
            job=self.job, user=self.dave, ended=True, popup=False, email=True
        )
        html = self.client.get(self.url(), headers=self.htmx()).content.decode()
        assert 'id="id_ended" checked>' in html
        assert 'id="id_popup">' in html
        assert 'id="id_email" checked>' in html

    def test_no_event_means_no_alerts(self):
        BatchJobAlert.objects.create(job=self.job, user=self.dave, error=True)
        self.client.post(self.url(), {"popup": "on"}, headers=self.htmx())
        assert not BatchJobAlert.objects.exists()
        page = self.client.get(f"/jobs/{self.job.pk}/").content.decode()
        assert "You get no alerts for this job." in page

    def test_an_event_needs_a_channel(self):
        r = self.client.post(self.url(), {"ended": "on"}, headers=self.htmx())
        html = r.content.decode()
        assert "Choose how to be alerted: popup, e-mail or both." in html
        assert 'id="id_ended" checked>' in html  # the choice is kept
        assert "HX-Trigger" not in r.headers
        assert not BatchJobAlert.objects.exists()

    def test_e_mail_needs_an_address(self):
        self.dave.email = ""
        self.dave.save()
        r = self.client.post(self.url(), {"error": "on", "email": "on"}, headers=self.htmx())
        assert "Your account has no e-mail address." in r.content.decode()
        assert not BatchJobAlert.objects.exists()

    def test_alerts_are_per_user(self):
        BatchJobAlert.objects.create(job=self.job, user=self.alice, canceled=True)
        self.client.post(self.url(), {"ended": "on", "popup": "on"}, headers=self.htmx())
        mine = BatchJobAlert.objects.get(user=self.dave)
        theirs = BatchJobAlert.objects.get(user=self.alice)
        assert (mine.ended, mine.canceled, theirs.ended, theirs.canceled) == (
            True,
            False,
            False,
            True,
        )
        page = self.client.get(f"/jobs/{self.job.pk}/").content.decode()
        assert "Canceled" not in page.split('id="job-alerts"')[1].split("</p>")[0]

    def test_a_viewer_can_neither_open_nor_post(self):
        self.login(self.bob)
        assert self.client.get(self.url()).status_code == 404
        assert self.client.post(self.url(), {"error": "on", "popup": "on"}).status_code == 404
        assert not BatchJobAlert.objects.exists()

    def test_a_batch_user_cannot_open_the_alerts_of_others_jobs(self):
        job = self.make_job(created_by=self.alice)
        assert self.client.get(self.url(job)).status_code == 404
        assert self.client.post(self.url(job), {"error": "on", "popup": "on"}).status_code == 404

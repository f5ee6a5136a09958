"""Pausing a recurrence with a note (issue 14, item 6): who, why and until when; resumed by
hand or by the tick at its date; audited; shown on the list, the job page, the CLI and the API."""

from __future__ import annotations

import datetime as dt
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from batchadmin.audit.models import AuditEntry
from batchadmin.engine import tick, transitions
from batchadmin.jobs.models import BatchJob, BatchRecurrence, BatchStatus, MissedOccurrence
from tests.api.base import ApiTestCase
from tests.engine.test_recurrence import NINE, RecurrenceTestCase

S = BatchStatus
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def batch(*args: Any) -> str:
    out = StringIO()
    call_command("batch", *[str(a) for a in args], stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args: Any) -> str:
    with pytest.raises(CommandError) as excinfo:
        batch(*args)
    return str(excinfo.value)


class PauseTestCase(RecurrenceTestCase):
    def pause(self, job: BatchJob, **kw: Any) -> bool:
        kw.setdefault("at", NINE - HOUR)
        kw.setdefault("reason", "month-end freeze")
        return transitions.pause_recurrence(job_id=job.pk, by_id=self.alice.pk, **kw)

    def recurrence(self, job: BatchJob) -> BatchRecurrence:
        return BatchRecurrence.objects.select_related("paused_by").get(job=job)

    def test_a_paused_recurrence_starts_nothing(self):
        job = self.make_recurring()
        assert self.pause(job)
        assert tick.handle_due_jobs(NINE + HOUR) == 0
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert not BatchJob.objects.due(NINE + HOUR).filter(pk=job.pk).exists()
        assert transitions.start_job(job_id=job.pk, at=NINE + HOUR) is False

    def test_it_keeps_who_why_and_until_when_and_audits_it(self):
        job = self.make_recurring()
        assert self.pause(job, until=NINE + 2 * DAY)
        r = self.recurrence(job)
        assert (r.paused_by, r.pause_reason, r.paused_until) == (
            self.alice,
            "month-end freeze",
            NINE + 2 * DAY,
        )
        assert r.pause_note() == (
            "Paused by alice on 2025-03-03 08:00 UTC: month-end freeze; until 2025-03-05 09:00 UTC"
        )
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert (entry.action, entry.username, entry.reason) == (
            "recurrence_pause",
            "alice",
            "month-end freeze",
        )

    def test_it_refuses_without_a_recurrence_a_reason_or_a_future_date(self):
        once = self.make_job()
        with pytest.raises(transitions.Refused, match="has no recurrence to pause"):
            self.pause(once)
        job = self.make_recurring()
        with pytest.raises(transitions.Refused, match="Give a reason"):
            self.pause(job, reason="  ")
        with pytest.raises(transitions.Refused, match="that time has passed"):
            self.pause(job, until=NINE - 2 * HOUR)
        assert self.pause(job)
        with pytest.raises(transitions.Refused, match="Resume it first"):
            self.pause(job)
        assert AuditEntry.objects.filter(job_id=job.pk).count() == 1

    def test_resuming_by_hand_moves_to_the_next_occurrence_and_records_the_missed(self):
        job = self.make_recurring()
        assert self.pause(job)
        later = NINE + 2 * DAY + HOUR  # three occurrences passed while paused
        assert transitions.resume_recurrence(job_id=job.pk, by_id=self.alice.pk, at=later)
        job.refresh_from_db()
        assert job.scheduled_start == NINE + 3 * DAY
        missed = MissedOccurrence.objects.get(job=job)
        assert (missed.occurrences, missed.reason) == (3, MissedOccurrence.Reason.PAUSED)
        assert not self.recurrence(job).is_paused()
        actions = list(AuditEntry.objects.filter(job_id=job.pk).values_list("action", flat=True))
        assert sorted(actions) == ["recurrence_pause", "recurrence_resume"]
        with pytest.raises(transitions.Refused, match="is not paused"):
            transitions.resume_recurrence(job_id=job.pk, by_id=self.alice.pk, at=later)

    def test_the_tick_resumes_it_at_its_date_and_starts_what_is_due(self):
        job = self.make_recurring()
        assert self.pause(job, until=NINE + DAY)
        assert tick.handle_paused_until(NINE + DAY - HOUR) == 0
        # In the tick's order: resume first, then start what is due.
        assert tick.handle_paused_until(NINE + DAY) == 1
        assert tick.handle_due_jobs(NINE + DAY) == 1
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        entry = AuditEntry.objects.get(job_id=job.pk, action="recurrence_resume")
        assert (entry.username, entry.via) == ("", "tick")
        assert tick.handle_paused_until(NINE + DAY) == 0  # once

    def test_a_running_job_finishes_its_run_and_then_waits(self):
        job = self.make_recurring()
        assert transitions.start_job(job_id=job.pk, at=NINE)
        assert self.pause(job, at=NINE + dt.timedelta(seconds=5))
        self.finish_tasks(job, NINE + dt.timedelta(seconds=10))
        assert job.status == S.WAITING
        assert tick.handle_due_jobs(NINE + DAY + HOUR) == 0


class PauseCommandTestCase(RecurrenceTestCase):
    def test_batch_pause_and_resume(self):
        job = self.make_recurring()
        out = batch(
            "pause", job.pk, "--reason", "audit", "--until", "2099-01-02", "--user", "alice"
        )
        assert out == "paused\n"
        r = BatchRecurrence.objects.get(job=job)
        assert r.paused_until == dt.datetime(2099, 1, 2, tzinfo=dt.UTC)  # the recurrence's zone
        assert batch("resume", job.pk, "--user", "alice") == "resumed\n"
        entries = AuditEntry.objects.filter(job_id=job.pk)
        assert set(entries.values_list("via", flat=True)) == {"cli"}

    def test_it_checks_the_role_and_the_input(self):
        job = self.make_recurring()
        assert "may see batch job" in refused("pause", job.pk, "--reason", "x", "--user", "bob")
        assert "may not see" in refused("pause", job.pk, "--reason", "x", "--user", "charlie")
        assert "--until 'soon'" in refused(
            "pause", job.pk, "--reason", "x", "--until", "soon", "--user", "alice"
        )
        assert "is not paused" in refused("resume", job.pk, "--user", "alice")
        once = self.make_job()
        assert "has no recurrence" in refused("pause", once.pk, "--reason", "x", "--user", "alice")
        assert not AuditEntry.objects.exists()


class PausePagesTestCase(RecurrenceTestCase):
    def test_the_list_and_the_job_page_show_the_pause_with_its_note(self):
        job = self.make_recurring()
        transitions.pause_recurrence(job_id=job.pk, by_id=self.alice.pk, reason="freeze")
        self.client.force_login(self.alice)
        html = self.client.get("/jobs/").content.decode()
        assert 'class="badge recurrence-paused" title="Paused by alice on ' in html
        assert ": freeze" in html
        page = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert "Paused by alice on" in page
        assert "no run starts until it is resumed" in page


class PauseDialogTestCase(RecurrenceTestCase):
    def test_a_manager_pauses_from_the_job_page_and_resumes(self):
        job = self.make_recurring()
        self.client.force_login(self.alice)
        page = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert f'hx-get="/jobs/{job.pk}/pause/"' in page
        dialog = self.client.get(f"/jobs/{job.pk}/pause/", headers={"HX-Request": "true"})
        assert "<html" not in dialog.content.decode()
        assert "Pause the recurrence" in dialog.content.decode()
        r = self.client.post(
            f"/jobs/{job.pk}/pause/", {"reason": "freeze", "until": "2099-01-02T06:00"}
        )
        assert r.status_code == 302
        recurring = BatchRecurrence.objects.get(job=job)
        assert recurring.pause_reason == "freeze"
        assert recurring.paused_until == dt.datetime(2099, 1, 2, 6, tzinfo=dt.UTC)
        page = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert f'action="/jobs/{job.pk}/resume/"' in page
        assert self.client.post(f"/jobs/{job.pk}/resume/").status_code == 302
        assert not BatchRecurrence.objects.get(job=job).is_paused()

    def test_bad_input_is_named_and_nothing_is_paused(self):
        job = self.make_recurring()
        self.client.force_login(self.alice)
        r = self.client.post(
            f"/jobs/{job.pk}/pause/",
            {"reason": "x", "until": "soon"},
            headers={"HX-Request": "true"},
        )
        assert "Write a date and time as YYYY-MM-DD HH:MM" in r.content.decode()
        assert not BatchRecurrence.objects.get(job=job).is_paused()

    def test_a_viewer_may_not_pause_or_resume(self):
        job = self.make_recurring()
        self.client.force_login(self.bob)
        assert self.client.post(f"/jobs/{job.pk}/pause/", {"reason": "x"}).status_code == 403
        assert self.client.post(f"/jobs/{job.pk}/resume/").status_code == 403
        self.client.force_login(self.charlie)
        assert self.client.post(f"/jobs/{job.pk}/pause/", {"reason": "x"}).status_code in (403, 404)
        assert not BatchRecurrence.objects.get(job=job).is_paused()


class PauseApiTestCase(ApiTestCase):
    def test_pause_and_resume_over_the_api(self):
        job = self.make_job(scheduled_start=NINE)
        BatchRecurrence.objects.create(
            job=job, start_date=NINE.date(), start_time=NINE.time(), time_zone="Europe/Oslo"
        )
        r = self.call(
            "POST",
            f"/api/v1/jobs/{job.pk}/pause",
            as_user=self.alice,
            body={"reason": "freeze", "until": "2099-01-02T06:00:00"},
        )
        assert r.status_code == 200, r.content
        assert r.data["paused"] is True
        assert r.data["paused_until"] == "2099-01-02T05:00:00+00:00"  # 06:00 in Oslo
        assert r.data["note"].startswith("Paused by alice on ")
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/pause", as_user=self.alice, body={"reason": "x"}
        )
        assert r.status_code == 409
        assert "Resume it first" in r.data["message"]
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/resume", as_user=self.alice)
        assert r.status_code == 200, r.content
        assert (r.data["paused"], r.data["note"]) == (False, "")
        vias = set(AuditEntry.objects.filter(job_id=job.pk).values_list("via", flat=True))
        assert vias == {"api"}

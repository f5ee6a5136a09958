"""The Recurrence dialog on the batch job page, and what the header shows of the schedule."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import time_machine

from batchadmin.accounts.models import UserPreference
from batchadmin.jobs.models import (
    ActivePeriod,
    BatchJob,
    BatchRecurrence,
    BatchStatus,
    MissedOccurrence,
    Priority,
)
from tests.jobs.form_base import FormTestCase, squash

S = BatchStatus
UTC = dt.UTC
NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=UTC)  # a Saturday
WORDS = "Every 2 weeks on Mon and Thu at 22:00 Europe/Oslo, 7 runs left"


def weekly(**overrides: Any) -> dict[str, Any]:
    """What the dialog posts for every 2 weeks on Mon and Thu at 22:00 in Oslo, 7 runs."""
    data = {
        "start_date": "2025-03-03",
        "start_time": "22:00",
        "time_zone": "Europe/Oslo",
        "end": "after",
        "end_after": "7",
        "end_by": "",
        "unit": "weeks",
        "every": "2",
        "weekdays": ["mon", "thu"],
        "on": "day",
        "day": "",
        "nth": "",
        "weekday": "",
        "month": "",
        "cron": "",
        "missed": "run_once",
    }
    return dict(data, **overrides)


def rows(html: str) -> list[str]:
    """The preview's rows, each as its cells' text joined with " | "."""
    body = html.split('class="grid compact runs"')[1].split("</tbody>")[0].split("<tbody>")[1]
    return [
        " | ".join(
            squash(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<td.*?</td>", tr, re.S)
        )
        for tr in re.findall(r"<tr>.*?</tr>", body, re.S)
    ]


class RecurrenceDialogTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(time_machine.travel(NOW, tick=False))
        self.job = self.make_job(created_by=self.dave, scheduled_start=NOW + dt.timedelta(hours=1))
        self.login(self.dave)

    def url(self, job: BatchJob | None = None, action: str = "") -> str:
        return f"/jobs/{(job or self.job).pk}/recurrence/{action}"

    def save_weekly(self) -> BatchRecurrence:
        r = self.client.post(self.url(), weekly(), headers=self.htmx("dialog"))
        assert r.status_code == 200
        return BatchRecurrence.objects.get(job=self.job)

    # --- the dialog -------------------------------------------------------------------------

    def test_it_is_a_dialog_fragment_for_htmx_and_a_page_without(self):
        r = self.client.get(self.url(), headers=self.htmx("dialog"))
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" not in html
        assert 'id="recurrence-form"' in html
        assert "Define recurrence" in html
        # The preview asks for itself once the dialog is in the page, and follows typing.
        assert (
            'hx-trigger="load, change from:closest form delay:300ms, '
            'input from:closest form delay:500ms"'
        ) in html
        page = self.client.get(self.url()).content.decode()
        assert "<html" in page
        assert 'id="recurrence-form"' in page

    def test_it_offers_and_saves_the_overlap_policy(self):
        html = self.client.get(self.url(), headers=self.htmx("dialog")).content.decode()
        assert "When the next run comes while one runs" in html
        assert 'value="buffer_one"' in html
        assert 'value="cancel_running"' in html
        r = self.client.post(
            self.url(), weekly(overlap="cancel_running"), headers=self.htmx("dialog")
        )
        assert r.status_code == 200
        assert BatchRecurrence.objects.get(job=self.job).overlap == "cancel_running"

    def test_the_job_page_opens_it_from_the_action_bar(self):
        html = self.client.get(f"/jobs/{self.job.pk}/").content.decode()
        assert f'hx-get="/jobs/{self.job.pk}/recurrence/" hx-target="#dialog"' in html

    def test_a_new_recurrence_starts_in_the_viewers_zone(self):
        UserPreference.objects.create(user=self.dave, time_zone="Europe/Oslo")
        self.login(self.dave)  # a new session picks up the zone
        html = self.client.get(self.url(), headers=self.htmx()).content.decode()
        # The zone as pages spell it, in a text box that suggests zones as you type.
        assert 'name="time_zone" value="Europe/Oslo" list="zone-list"' in html
        assert '<datalist id="zone-list">' in html
        # The job's start (13:00 UTC) in Oslo, on that day's weekday, as ISO-like text.
        assert 'value="2025-03-01"' in html
        assert 'value="14:00"' in html
        assert 'value="sat" id="id_weekdays_5" checked' in html

    def test_it_shows_every_pattern_part_for_the_radio_to_pick(self):
        html = self.client.get(self.url(), headers=self.htmx()).content.decode()
        for unit in ("minutes", "hours", "days", "weeks", "months", "years", "cron"):
            assert f'name="unit" value="{unit}"' in html
        for part in ("for-weeks", "for-calendar", "for-years", "for-cron", "not-cron"):
            assert f"{part}" in html
        assert 'name="missed" value="skip"' in html

    def test_it_opens_with_the_saved_recurrence_and_offers_to_remove_it(self):
        self.save_weekly()
        html = self.client.get(self.url(), headers=self.htmx()).content.decode()
        assert 'value="weeks" id="id_unit_3" required checked' in html
        assert 'value="thu" id="id_weekdays_3" checked' in html
        assert 'name="end_after" value="7"' in html
        assert f"recurs: {WORDS}." in squash(html)
        assert "Remove recurrence" in html

    def test_a_job_without_recurrence_has_nothing_to_remove(self):
        html = self.client.get(self.url(), headers=self.htmx()).content.decode()
        assert "Remove recurrence" not in html
        assert "runs once: it has no recurrence yet." in squash(html)

    # --- preview ----------------------------------------------------------------------------

    def test_the_preview_shows_five_runs_in_both_zones_without_saving(self):
        r = self.client.post(self.url(action="preview/"), weekly(), headers=self.htmx())
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="recurrence-preview"')
        assert rows(html) == [
            "1 | Mon 2025-03-03 22:00 | Mon 2025-03-03 21:00",
            "2 | Thu 2025-03-06 22:00 | Thu 2025-03-06 21:00",
            "3 | Mon 2025-03-17 22:00 | Mon 2025-03-17 21:00",
            "4 | Thu 2025-03-20 22:00 | Thu 2025-03-20 21:00",
            "5 | Mon 2025-03-31 22:00 | Mon 2025-03-31 20:00",  # Oslo on summer time
        ]
        assert 'UTC <span class="muted">(your time zone)</span>' in html
        assert WORDS in html
        assert not BatchRecurrence.objects.filter(job=self.job).exists()
        self.job.refresh_from_db()
        assert self.job.scheduled_start == NOW + dt.timedelta(hours=1)

    def test_the_preview_uses_the_viewers_zone_for_the_second_column(self):
        UserPreference.objects.create(user=self.dave, time_zone="America/New_York")
        self.login(self.dave)
        html = self.client.post(
            self.url(action="preview/"), weekly(), headers=self.htmx()
        ).content.decode()
        assert rows(html)[2] == "3 | Mon 2025-03-17 22:00 | Mon 2025-03-17 17:00"
        # The zone as every page spells it.
        assert 'America/New York <span class="muted">(your time zone)</span>' in html
        assert "America/New_York" not in html

    def test_the_preview_has_one_column_when_the_zones_are_the_same(self):
        html = self.client.post(
            self.url(action="preview/"), weekly(time_zone="UTC"), headers=self.htmx()
        ).content.decode()
        assert rows(html)[0] == "1 | Mon 2025-03-03 22:00"
        assert "(your time zone)" not in html

    def test_the_preview_says_when_the_range_ends_sooner(self):
        html = self.client.post(
            self.url(action="preview/"), weekly(end_after="3"), headers=self.htmx()
        ).content.decode()
        assert len(rows(html)) == 3
        assert "the range ends after 3 runs" in squash(html)

    def test_the_preview_puts_errors_at_the_fields_out_of_band(self):
        r = self.client.post(
            self.url(action="preview/"), weekly(end_after="", weekdays=[]), headers=self.htmx()
        )
        html = squash(r.content.decode())
        assert "No preview yet: correct the fields marked in red." in html
        assert 'class="grid compact runs"' not in html
        assert (
            '<div id="id_end_after-errors" class="field-errors" hx-swap-oob="true">'
            '<ul class="errorlist" id="id_end_after_error"><li>How many runs?</li></ul></div>'
        ) in html
        assert "Choose at least one day of the week." in html
        # Every field's slot is swapped, so a fixed field loses its old message.
        assert (
            '<div id="id_start_date-errors" class="field-errors" hx-swap-oob="true"></div>' in html
        )
        assert not BatchRecurrence.objects.filter(job=self.job).exists()

    def test_the_preview_without_htmx_is_the_dialog_page(self):
        html = self.client.post(self.url(action="preview/"), weekly()).content.decode()
        assert "<html" in html
        assert len(rows(html)) == 5
        assert 'name="end_after" value="7"' in html
        assert not BatchRecurrence.objects.filter(job=self.job).exists()

    def test_the_preview_mentions_the_active_period(self):
        period = ActivePeriod.objects.create(
            code="Night", start_time=dt.time(18), end_time=dt.time(8), time_zone="Europe/Oslo"
        )
        BatchJob.objects.filter(pk=self.job.pk).update(active_period=period)
        html = squash(
            self.client.post(
                self.url(action="preview/"), weekly(), headers=self.htmx()
            ).content.decode()
        )
        assert (
            "Every run falls inside the job's active period Night (18:00 to 08:00 (next day) "
            "Europe/Oslo)."
        ) in html
        # At noon in Oslo the runs wait for the period to open at 18:00 Oslo.
        html = self.client.post(
            self.url(action="preview/"), weekly(start_time="12:00"), headers=self.htmx()
        ).content.decode()
        assert rows(html)[0] == (
            "1 | Mon 2025-03-03 12:00 | Mon 2025-03-03 11:00 | waits: starts Mon 2025-03-03 17:00 UTC"
        )
        assert "Some runs fall outside the job's active period Night" in squash(html)

    # --- save ---------------------------------------------------------------------------------

    def test_save_stores_reschedules_and_closes_the_dialog(self):
        r = self.client.post(self.url(), weekly(), headers=self.htmx("dialog"))
        assert r.status_code == 200
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "job-changed": {}}
        recurring = BatchRecurrence.objects.get(job=self.job)
        assert recurring.describe() == WORDS
        self.job.refresh_from_db()
        assert self.job.scheduled_start == dt.datetime(2025, 3, 3, 21, 0, tzinfo=UTC)
        assert self.job.status == S.WAITING
        # job-changed refreshes the header: the recurrence in words and the next run.
        header = squash(
            self.client.get(
                f"/jobs/{self.job.pk}/", headers=self.htmx("job-header")
            ).content.decode()
        )
        assert f"<strong>{WORDS}</strong>" in header
        assert "Next run</dt> <dd> Mon 2025-03-03 21:00 UTC" in header

    def test_save_without_htmx_redirects_to_the_job(self):
        r = self.client.post(self.url(), weekly())
        assert r.status_code == 302
        assert r.headers["Location"] == f"/jobs/{self.job.pk}/"
        page = self.client.get(r.headers["Location"]).content.decode()
        assert f"Saved the recurrence: {WORDS}." in page

    def test_invalid_input_shows_errors_at_the_fields_and_loses_nothing(self):
        data = weekly(weekdays=[], end_by="2025-12-31", unit="weeks", every="3")
        r = self.client.post(self.url(), data, headers=self.htmx("dialog"))
        html = r.content.decode()
        assert r.status_code == 200
        assert "HX-Trigger" not in r.headers
        assert "<html" not in html
        assert 'id="recurrence-form"' in html
        assert "Choose at least one day of the week." in html.split('id="id_weekdays-errors"')[1]
        for kept in (
            'name="every" value="3"',
            'name="end_after" value="7"',
            'name="end_by" value="2025-12-31"',
            'value="after" id="id_end_1" checked',
            'name="time_zone" value="Europe/Oslo"',
        ):
            assert kept in html, kept
        # The preview is rendered with the dialog: no load trigger, and it says why it is empty.
        assert "No preview yet" in html
        assert "load, change" not in html
        assert not BatchRecurrence.objects.filter(job=self.job).exists()

    def test_a_cron_expression_shows_its_error_at_the_field(self):
        r = self.client.post(self.url(), weekly(unit="cron", cron="0 22 * *"), headers=self.htmx())
        html = r.content.decode()
        assert "A cron expression has five fields" in html.split('id="id_cron-errors"')[1]
        assert 'name="cron" value="0 22 * *"' in html

    def test_a_cron_error_says_what_is_out_of_range_or_how_many_fields(self):
        for cron, words in (
            ("61 25 * * *", "Minute 61 is out of range: minutes are 0-59. Hour 25 is out of range"),
            ("0 0 22 * * 1", "Six fields: that is cron with seconds first"),
            ("@reboot", "@reboot is not a cron shortcut"),
        ):
            r = self.client.post(
                self.url(action="preview/"), weekly(unit="cron", cron=cron), headers=self.htmx()
            )
            errors = r.content.decode().split('id="id_cron-errors"')[1].split("</div>")[0]
            assert words in errors, (cron, errors)

    def test_a_cron_shortcut_previews_and_saves_as_its_five_fields(self):
        data = weekly(unit="cron", cron="@daily", time_zone="UTC")
        html = self.client.post(self.url(action="preview/"), data, headers=self.htmx()).content
        assert "At 00:00" in html.decode()
        self.client.post(self.url(), data, headers=self.htmx("dialog"))
        assert BatchRecurrence.objects.get(job=self.job).cron == "0 0 * * *"

    def test_saving_again_restarts_end_after(self):
        self.save_weekly()
        BatchRecurrence.objects.filter(job=self.job).update(runs=2)
        self.client.post(self.url(), weekly(end_after="10"), headers=self.htmx())
        recurring = BatchRecurrence.objects.get(job=self.job)
        assert (recurring.end_after, recurring.runs) == (10, 0)

    def test_a_change_while_the_job_runs_takes_effect_for_the_next_run(self):
        job = self.make_job(created_by=self.dave, status=S.EXECUTING, scheduled_start=NOW)
        html = squash(self.client.get(self.url(job), headers=self.htmx()).content.decode())
        assert "a change here applies from the next run" in html
        r = self.client.post(self.url(job), weekly(), headers=self.htmx())
        assert "dialog-close" in r.headers["HX-Trigger"]
        job.refresh_from_db()
        assert job.recurrence.describe() == WORDS
        assert (job.status, job.scheduled_start) == (S.EXECUTING, NOW)  # the run goes on

    def test_a_held_job_keeps_its_status(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        html = squash(self.client.get(self.url(job), headers=self.htmx()).content.decode())
        assert "it runs on this recurrence once it is set to Waiting" in html
        self.client.post(self.url(job), weekly(), headers=self.htmx())
        job.refresh_from_db()
        assert job.status == S.WITHHOLD
        assert job.scheduled_start == dt.datetime(2025, 3, 3, 21, 0, tzinfo=UTC)

    # --- remove -------------------------------------------------------------------------------

    def test_remove_deletes_the_recurrence_and_keeps_the_start(self):
        self.save_weekly()
        r = self.client.post(self.url(action="remove/"), headers=self.htmx("dialog"))
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "job-changed": {}}
        assert not BatchRecurrence.objects.filter(job=self.job).exists()
        self.job.refresh_from_db()
        assert self.job.scheduled_start == dt.datetime(2025, 3, 3, 21, 0, tzinfo=UTC)
        header = self.client.get(f"/jobs/{self.job.pk}/", headers=self.htmx("job-header"))
        assert "None: the job runs once." in header.content.decode()

    def test_remove_without_htmx_redirects_with_a_message(self):
        self.save_weekly()
        r = self.client.post(self.url(action="remove/"), follow=True)
        assert r.redirect_chain == [(f"/jobs/{self.job.pk}/", 302)]
        assert "Removed the recurrence: the job runs once." in r.content.decode()

    def test_remove_is_post_only(self):
        self.save_weekly()
        assert self.client.get(self.url(action="remove/")).status_code == 405
        assert self.client.get(self.url(action="preview/")).status_code == 405
        assert BatchRecurrence.objects.filter(job=self.job).exists()

    # --- who may ------------------------------------------------------------------------------

    def test_a_batch_user_cannot_reach_others_jobs(self):
        job = self.make_job(created_by=self.alice)
        assert self.client.get(self.url(job)).status_code == 404
        assert self.client.post(self.url(job), weekly()).status_code == 404
        assert self.client.post(self.url(job, "preview/"), weekly()).status_code == 404
        assert self.client.post(self.url(job, "remove/")).status_code == 404
        assert not BatchRecurrence.objects.filter(job__in=[job, self.job]).exists()

    def test_a_viewer_sees_the_recurrence_but_cannot_change_it(self):
        self.save_weekly()
        self.login(self.bob)
        page = self.client.get(f"/jobs/{self.job.pk}/").content.decode()
        assert WORDS in page
        assert f"/jobs/{self.job.pk}/recurrence/" not in page
        assert self.client.get(self.url()).status_code == 403
        assert self.client.post(self.url(), weekly(end_after="2")).status_code == 403
        assert self.client.post(self.url(action="preview/"), weekly()).status_code == 403
        assert self.client.post(self.url(action="remove/")).status_code == 403
        assert BatchRecurrence.objects.get(job=self.job).end_after == 7

    def test_a_manager_changes_anyones_recurrence(self):
        self.login(self.alice)
        r = self.client.post(self.url(), weekly(), headers=self.htmx())
        assert "dialog-close" in r.headers["HX-Trigger"]
        assert BatchRecurrence.objects.filter(job=self.job).exists()


class JobHeaderScheduleTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(time_machine.travel(NOW, tick=False))
        self.login(self.dave)
        self.night = ActivePeriod.objects.create(
            code="Night",
            name="Overnight",
            start_time=dt.time(18),
            end_time=dt.time(8),
            time_zone="Europe/Oslo",
        )

    def header(self, job: BatchJob) -> str:
        r = self.client.get(f"/jobs/{job.pk}/", headers=self.htmx("job-header"))
        return squash(r.content.decode())

    def header_data(self, **overrides: str) -> dict[str, str]:
        data = {
            "description": "Nightly settlement USMF",
            "scheduled_start": "2025-03-02T03:04",
            "run_as": "",
            "priority": str(Priority.HIGH.value),
            "company": str(self.usmf.pk),
            "active_period": str(self.night.pk),
            "save_history": "always",
        }
        return data | overrides

    def test_the_header_form_takes_an_active_period(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        html = self.header(job)
        assert '<option value="" selected>Any time</option>' in html
        assert (
            f'<option value="{self.night.pk}">Night: 18:00 to 08:00 (next day) Europe/Oslo</option>'
            in html
        )
        r = self.client.post(
            f"/jobs/{job.pk}/", self.header_data(), headers=self.htmx("job-header")
        )
        assert r.status_code == 200
        job.refresh_from_db()
        assert job.active_period == self.night
        assert f'<option value="{self.night.pk}" selected>Night: 18:00' in r.content.decode()
        self.client.post(f"/jobs/{job.pk}/", self.header_data(active_period=""))
        job.refresh_from_db()
        assert job.active_period is None

    def test_a_new_job_can_take_an_active_period(self):
        r = self.client.post(
            "/jobs/new/",
            {
                "description": "Night run",
                "scheduled_start": "2025-03-02T03:04",
                "priority": str(Priority.NORMAL.value),
                "active_period": str(self.night.pk),
                "save_history": "always",
            },
        )
        assert r.status_code == 302
        assert BatchJob.objects.get(description="Night run").active_period == self.night

    def test_the_header_says_when_the_active_period_holds_the_next_run(self):
        # Noon in Oslo is outside Night: the run waits until 18:00 Oslo (17:00 UTC).
        job = self.make_job(
            created_by=self.dave,
            scheduled_start=dt.datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
            active_period=self.night,
        )
        html = self.header(job)
        assert "Sat 2025-03-01 12:30 UTC" in html
        assert "outside active period Night: starts Sat 2025-03-01 17:00 UTC" in html
        job.active_period = None
        job.save()
        assert "outside active period" not in self.header(job)
        # A start that has passed, in a period that is open now: it starts as it is.
        office = ActivePeriod.objects.create(
            code="Office", start_time=dt.time(8), end_time=dt.time(17), time_zone="UTC"
        )
        job.active_period = office
        job.scheduled_start = NOW - dt.timedelta(hours=1)
        job.save()
        html = self.header(job)
        assert "Sat 2025-03-01 11:00 UTC" in html
        assert "outside active period" not in html

    def test_next_start_waits_for_the_active_period(self):
        job = BatchJob(
            status=S.WAITING,
            scheduled_start=dt.datetime(2025, 3, 1, 12, 30, tzinfo=UTC),
            active_period=self.night,
        )
        assert job.next_start(at=NOW) == dt.datetime(2025, 3, 1, 17, 0, tzinfo=UTC)
        job.scheduled_start = dt.datetime(2025, 3, 1, 20, 0, tzinfo=UTC)  # 21:00 in Oslo
        assert job.next_start(at=NOW) == job.scheduled_start
        job.status = S.WITHHOLD
        assert job.next_start(at=NOW) is None

    def test_an_active_period_describes_its_window(self):
        assert self.night.describe() == "18:00 to 08:00 (next day) Europe/Oslo"
        day = ActivePeriod(start_time=dt.time(8), end_time=dt.time(17, 30), time_zone="UTC")
        assert day.describe() == "08:00 to 17:30 UTC"
        assert ActivePeriod(start_time=dt.time(6), end_time=dt.time(6)).describe() == "All day UTC"

    def test_the_header_shows_the_recurrence_in_words(self):
        job = self.make_job(
            created_by=self.dave, scheduled_start=dt.datetime(2025, 3, 3, 21, tzinfo=UTC)
        )
        BatchRecurrence.objects.create(
            job=job,
            start_date=dt.date(2025, 3, 3),
            start_time=dt.time(22),
            time_zone="Europe/Oslo",
            unit="weeks",
            every=2,
            weekdays=["mon", "thu"],
            end_after=7,
        )
        html = self.header(job)
        assert f"<dt>Recurrence</dt> <dd> <strong>{WORDS}</strong>" in html
        assert "Mon 2025-03-03 21:00 UTC" in html
        assert "Missed occurrences" not in html

    def test_the_header_lists_the_latest_five_missed_occurrences(self):
        job = self.make_job(created_by=self.dave)
        for day in range(1, 8):
            start = dt.datetime(2025, 2, day, 22, tzinfo=UTC)
            MissedOccurrence.objects.create(
                job=job,
                scheduled_start=start,
                last_scheduled_start=start + dt.timedelta(days=day % 2),
                occurrences=1 + day % 2,
                reason=MissedOccurrence.Reason.RUNNING if day % 2 else MissedOccurrence.Reason.LATE,
            )
        html = self.header(job)
        assert "Missed occurrences (latest 5)" in html
        assert html.count("<li>") == 5
        assert (
            "Fri 2025-02-07 22:00 to Sat 2025-02-08 22:00 (2 occurrences): The job was still running"
            in html
        )
        assert "Thu 2025-02-06 22:00: Not started in time; skipped" in html
        assert "Mon 2025-02-03" in html
        assert "Sun 2025-02-02" not in html

    def test_the_header_of_a_running_or_held_job_has_no_next_run(self):
        held = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        assert "none while the job is Withhold" in self.header(held)
        running = self.make_job(created_by=self.dave, status=S.EXECUTING)
        assert "Running now" in self.header(running)

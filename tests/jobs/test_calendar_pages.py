"""The Calendars pages (jobs/calendar_views.py): list, create (with an .ics file), dates, import,
edit, delete; Batch job managers only, checked on every request."""

from __future__ import annotations

import datetime as dt
from typing import ClassVar

from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils.timezone import now

from batchadmin.jobs.models import BatchRecurrence, Calendar, CalendarDate
from tests.base import BaseTestCase
from tests.lib.test_ics import event, ics

HX = {"HX-Request": "true"}


def upload(data: bytes, name: str = "holidays.ics") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, data, content_type="text/calendar")


class CalendarPagesTestCase(BaseTestCase):
    calendar: ClassVar[Calendar]

    @classmethod
    def setUpTestData(cls) -> None:
        super().setUpTestData()
        cls.calendar = Calendar.objects.create(code="NO-HOL", description="Norwegian holidays")
        CalendarDate.objects.create(
            calendar=cls.calendar, date=dt.date(2030, 12, 25), description="Christmas"
        )

    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def test_only_managers_may_open_or_change_calendars(self):
        urls = [
            "/calendars/",
            "/calendars/new/",
            f"/calendars/{self.calendar.pk}/",
            f"/calendars/{self.calendar.pk}/edit/",
            f"/calendars/{self.calendar.pk}/delete/",
            f"/calendars/{self.calendar.pk}/import/",
        ]
        for user in (self.bob, self.dave, self.charlie):
            self.client.force_login(user)
            for url in urls:
                assert self.client.get(url).status_code == 403, (user, url)
            r = self.client.post(f"/calendars/{self.calendar.pk}/dates/", {"date": "2030-12-26"})
            assert r.status_code == 403
            r = self.client.post(f"/calendars/{self.calendar.pk}/delete/")
            assert r.status_code == 403
        assert Calendar.objects.filter(pk=self.calendar.pk).exists()
        assert self.calendar.dates.count() == 1

    def test_the_list_shows_each_calendar_with_its_dates_and_users(self):
        for code in ("A", "B", "C"):
            Calendar.objects.create(code=code)
        # The session's, the user's and their preferences and roles, then one for the
        # calendars with their counts whatever their number.
        with self.assertNumQueries(8):
            html = self.client.get("/calendars/").content.decode()
        assert "NO-HOL" in html and "Norwegian holidays" in html and "2030-12-25" in html
        fragment = self.client.get("/calendars/", headers=HX | {"HX-Target": "calendar-table"})
        assert not fragment.content.decode().lstrip().startswith("<!DOCTYPE")

    def test_it_creates_a_calendar_with_the_dates_of_an_ics_file(self):
        data = ics(event("20301224", "Christmas Eve", "DTEND;VALUE=DATE:20301227\r\n"))
        r = self.client.post(
            "/calendars/new/",
            {"code": "SE-HOL", "description": "Swedish", "ics_file": upload(data)},
            headers=HX,
        )
        assert r.status_code == 200 and "dialog-close" in r.headers["HX-Trigger"]
        created = Calendar.objects.get(code="SE-HOL")
        assert list(created.dates.values_list("date", "description")) == [
            (dt.date(2030, 12, 24), "Christmas Eve"),
            (dt.date(2030, 12, 25), "Christmas Eve"),
            (dt.date(2030, 12, 26), "Christmas Eve"),
        ]

    def test_a_bad_file_creates_nothing_and_says_why(self):
        data = ics("DTSTART:20301228T100000Z\r\nSUMMARY:Meeting\r\n")
        r = self.client.post(
            "/calendars/new/", {"code": "SE-HOL", "ics_file": upload(data)}, headers=HX
        )
        html = r.content.decode()
        assert "holidays.ics: Event 1 (&#x27;Meeting&#x27;) starts at a time of day" in html
        assert "Nothing was imported." in html
        assert not Calendar.objects.filter(code="SE-HOL").exists()
        r = self.client.post(
            "/calendars/new/", {"code": "SE-HOL", "ics_file": upload(b"not a calendar")}
        )
        assert "This is not an iCalendar file" in r.content.decode()
        assert not Calendar.objects.filter(code="SE-HOL").exists()

    def test_it_adds_and_removes_dates(self):
        url = f"/calendars/{self.calendar.pk}/dates/"
        html = self.client.post(
            url, {"date": "2030-12-26", "description": "Boxing Day"}, headers=HX
        ).content.decode()
        assert html.lstrip().startswith('<section id="calendar-dates"')
        assert "Added 2030-12-26 to NO-HOL." in html and "Boxing Day" in html
        html = self.client.post(url, {"date": "2030-12-26"}, headers=HX).content.decode()
        assert "2030-12-26 is already a date of NO-HOL." in html
        added = CalendarDate.objects.get(calendar=self.calendar, date=dt.date(2030, 12, 26))
        r = self.client.post(f"/calendars/{self.calendar.pk}/dates/{added.pk}/remove/")
        assert r.status_code == 302
        assert list(self.calendar.dates.values_list("date", flat=True)) == [dt.date(2030, 12, 25)]

    def test_a_new_date_reschedules_the_waiting_jobs_that_use_the_calendar(self):
        job = self.make_job(scheduled_start=now())
        start = now().date() + dt.timedelta(days=10)
        BatchRecurrence.objects.create(
            job=job, start_date=start, start_time=dt.time(8), time_zone="UTC", calendar=self.calendar,
        )  # fmt: skip
        job.scheduled_start = dt.datetime.combine(start, dt.time(8), tzinfo=dt.UTC)
        job.save()
        due = self.make_job(scheduled_start=now() - dt.timedelta(minutes=1))
        BatchRecurrence.objects.create(
            job=due, start_date=start, start_time=dt.time(8), time_zone="UTC", calendar=self.calendar,
        )  # fmt: skip
        r = self.client.post(
            f"/calendars/{self.calendar.pk}/dates/", {"date": start.isoformat()}, headers=HX
        )
        assert "1 waiting job rescheduled." in r.content.decode()
        job.refresh_from_db()
        assert job.scheduled_start == dt.datetime.combine(
            start + dt.timedelta(days=1), dt.time(8), tzinfo=dt.UTC
        )
        due_start = due.scheduled_start
        due.refresh_from_db()
        assert due.scheduled_start == due_start  # due now: it runs, then follows the dates

    def test_it_imports_an_ics_file_adding_or_replacing_dates(self):
        url = f"/calendars/{self.calendar.pk}/import/"
        data = ics(event("20310101", "New Year"))
        r = self.client.post(url, {"ics_file": upload(data)}, headers=HX)
        assert "dialog-close" in r.headers["HX-Trigger"]
        assert self.calendar.dates.count() == 2
        r = self.client.post(url, {"ics_file": upload(data), "replace": "on"})
        assert r.status_code == 302
        assert list(self.calendar.dates.values_list("date", flat=True)) == [dt.date(2031, 1, 1)]

    def test_a_bad_import_changes_nothing(self):
        url = f"/calendars/{self.calendar.pk}/import/"
        data = ics(event("20310101", "New Year"), event("20311332", "Broken"))
        html = self.client.post(
            url, {"ics_file": upload(data), "replace": "on"}, headers=HX
        ).content.decode()
        assert "Event 2 (&#x27;Broken&#x27;): its DTSTART cannot be read" in html
        assert list(self.calendar.dates.values_list("date", flat=True)) == [dt.date(2030, 12, 25)]

    def test_it_edits_the_code_and_description(self):
        r = self.client.post(
            f"/calendars/{self.calendar.pk}/edit/", {"code": "NO", "description": "Norway"}
        )
        assert r.status_code == 302
        self.calendar.refresh_from_db()
        assert (self.calendar.code, self.calendar.description) == ("NO", "Norway")
        r = self.client.post(f"/calendars/{self.calendar.pk}/edit/", {"code": "no spaces"})
        assert r.status_code == 200 and 'class="errorlist' in r.content.decode()

    def test_it_refuses_to_delete_a_calendar_in_use(self):
        BatchRecurrence.objects.create(
            job=self.make_job(), start_date=dt.date(2030, 1, 1), start_time=dt.time(8),
            time_zone="UTC", calendar=self.calendar,
        )  # fmt: skip
        html = self.client.post(
            f"/calendars/{self.calendar.pk}/delete/", headers=HX
        ).content.decode()
        assert "is used by the recurrence of 1 batch job" in html
        assert Calendar.objects.filter(pk=self.calendar.pk).exists()

    def test_it_deletes_a_calendar_nobody_uses(self):
        r = self.client.post(f"/calendars/{self.calendar.pk}/delete/", headers=HX)
        assert r.headers["HX-Redirect"] == "/calendars/"
        assert not Calendar.objects.filter(pk=self.calendar.pk).exists()
        assert not CalendarDate.objects.exists()

    def test_the_detail_page_lists_dates_and_the_jobs_using_it(self):
        job = self.make_job(description="Payroll")
        BatchRecurrence.objects.create(
            job=job, start_date=dt.date(2030, 1, 1), start_time=dt.time(8), time_zone="UTC",
            calendar=self.calendar, on_calendar_date="next_day",
        )  # fmt: skip
        html = self.client.get(f"/calendars/{self.calendar.pk}/").content.decode()
        assert "2030-12-25" in html and "Christmas" in html and "Wed" in html
        assert f"batch job {job.pk}, Payroll" in html and "next working day" in html

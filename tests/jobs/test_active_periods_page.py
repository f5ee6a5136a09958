"""Active periods for batch jobs: the managers' list with its New, Edit and Delete dialogs."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import time_machine

from batchadmin.jobs.models import ActivePeriod
from tests.jobs.form_base import FormTestCase, squash

UTC = dt.UTC
NOON = dt.datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
URL = "/active-periods/"


def period_data(**overrides: Any) -> dict[str, Any]:
    data = {
        "code": "Night",
        "name": "Overnight",
        "start_time": "18:00",
        "end_time": "08:00",
        "time_zone": "Europe/Oslo",
    }
    return dict(data, **overrides)


class ActivePeriodsPageTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(time_machine.travel(NOON, tick=False))
        self.login(self.alice)
        self.night = ActivePeriod.objects.create(
            code="Night",
            name="Overnight",
            start_time=dt.time(18),
            end_time=dt.time(8),
            time_zone="Europe/Oslo",
        )
        self.office = ActivePeriod.objects.create(
            code="Office", start_time=dt.time(8), end_time=dt.time(17), time_zone="UTC"
        )

    # --- the list -----------------------------------------------------------------------------

    def test_it_lists_the_periods_with_the_jobs_using_them(self):
        for _ in range(3):
            self.make_job(active_period=self.night)
        r = self.client.get(URL)
        html = squash(r.content.decode())
        assert r.status_code == 200
        assert "<html" in html
        assert "Active periods for batch jobs" in html
        night = html.split(f'id="period-{self.night.pk}"')[1].split("</tr>")[0]
        for text in (
            "Night",
            "Overnight",
            "18:00",
            '08:00 <span class="muted">next day</span>',
            "Europe/Oslo",
            ">Closed<",
            '<td class="jobs">3</td>',
        ):
            assert text in night, text
        office = html.split(f'id="period-{self.office.pk}"')[1].split("</tr>")[0]
        assert ">Open<" in office  # 12:00 UTC is inside 08:00-17:00 UTC
        assert '<td class="jobs">—</td>' in office

    def test_the_table_is_a_fragment_for_htmx(self):
        r = self.client.get(URL, headers=self.htmx("period-table"))
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="period-table"')
        assert "Night" in html

    def test_it_costs_the_same_queries_for_many_periods(self):
        self.client.get(URL)  # warm up: session, roles
        with self.assertNumQueries(4):
            self.client.get(URL)
        for n in range(10):
            period = ActivePeriod.objects.create(
                code=f"P{n}", start_time=dt.time(n), end_time=dt.time(n + 1)
            )
            self.make_job(active_period=period)
        with self.assertNumQueries(4):
            html = self.client.get(URL).content.decode()
        assert len(re.findall(r'<tr id="period-\d+">', html)) == 12

    def test_it_says_when_there_is_none(self):
        ActivePeriod.objects.all().delete()
        html = self.client.get(URL).content.decode()
        assert "No active periods yet." in html

    # --- who may ------------------------------------------------------------------------------

    def test_only_managers_may_open_it(self):
        for user in (self.bob, self.charlie, self.dave):
            self.login(user)
            assert self.client.get(URL).status_code == 403, user
            assert self.client.get(URL + "new/").status_code == 403, user
            assert self.client.post(URL + "new/", period_data(code="Day")).status_code == 403
            edit = f"{URL}{self.night.pk}/edit/"
            assert self.client.post(edit, period_data(start_time="20:00")).status_code == 403
            delete = f"{URL}{self.office.pk}/delete/"
            assert self.client.post(delete).status_code == 403
        assert ActivePeriod.objects.count() == 2
        assert ActivePeriod.objects.get(code="Night").start_time == dt.time(18)

    def test_the_nav_link_is_for_managers_only(self):
        link = f'<a href="{URL}"'
        assert link in self.client.get("/jobs/").content.decode()
        self.login(self.bob)
        assert link not in self.client.get("/jobs/").content.decode()
        self.login(self.dave)
        assert link not in self.client.get("/jobs/").content.decode()

    # --- new and edit -------------------------------------------------------------------------

    def test_new_is_a_dialog_for_htmx_and_a_page_without(self):
        r = self.client.get(URL + "new/", headers=self.htmx("dialog"))
        html = r.content.decode()
        assert "<html" not in html
        assert 'id="period-form"' in html
        assert "New active period" in html
        page = self.client.get(URL + "new/").content.decode()
        assert "<html" in page and 'id="period-form"' in page

    def test_it_creates_a_period_closes_the_dialog_and_the_table_shows_it(self):
        r = self.client.post(
            URL + "new/", period_data(code="Weekend", name=""), headers=self.htmx("dialog")
        )
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "periods-changed": {}}
        period = ActivePeriod.objects.get(code="Weekend")
        assert (period.start_time, period.end_time, period.time_zone) == (
            dt.time(18),
            dt.time(8),
            "Europe/Oslo",
        )
        table = self.client.get(URL, headers=self.htmx("period-table")).content.decode()
        assert "Created active period Weekend: 18:00 to 08:00 (next day) Europe/Oslo." in table
        assert f'id="period-{period.pk}"' in table

    def test_it_creates_without_htmx_and_redirects(self):
        r = self.client.post(URL + "new/", period_data(code="Late"), follow=True)
        assert r.redirect_chain == [(URL, 302)]
        assert "Created active period Late" in r.content.decode()

    def test_invalid_input_stays_in_the_dialog_with_errors_at_the_fields(self):
        data = period_data(code="Night", start_time="", time_zone="Mars/Olympus")
        r = self.client.post(URL + "new/", data, headers=self.htmx("dialog"))
        html = r.content.decode()
        assert "HX-Trigger" not in r.headers
        assert 'id="period-form"' in html
        assert "Active period with this Active period already exists." in html
        assert "This field is required." in html
        assert (
            "Mars/Olympus is not a time zone: type a city or region, e.g. Europe/Oslo or America/New York, and pick it from the list."
            in html
        )
        assert 'name="name" value="Overnight"' in html
        assert 'name="end_time" value="08:00"' in html
        assert ActivePeriod.objects.count() == 2

    def test_it_edits_a_period(self):
        self.make_job(active_period=self.night)
        html = squash(
            self.client.get(f"{URL}{self.night.pk}/edit/", headers=self.htmx()).content.decode()
        )
        assert "Edit active period Night" in html
        assert "1 batch job uses this period: a change applies to their next start." in html
        assert 'name="start_time" value="18:00"' in html
        r = self.client.post(
            f"{URL}{self.night.pk}/edit/", period_data(start_time="20:00"), headers=self.htmx()
        )
        assert "dialog-close" in r.headers["HX-Trigger"]
        self.night.refresh_from_db()
        assert self.night.start_time == dt.time(20)

    def test_editing_an_unknown_period_is_404(self):
        assert self.client.get(f"{URL}999999/edit/").status_code == 404
        assert self.client.post(f"{URL}999999/delete/").status_code == 404

    # --- delete -------------------------------------------------------------------------------

    def test_it_deletes_an_unused_period(self):
        r = self.client.get(f"{URL}{self.office.pk}/delete/", headers=self.htmx("dialog"))
        html = squash(r.content.decode())
        assert "Delete active period Office?" in html
        assert "08:00 to 17:00 UTC. No batch job uses it." in html
        r = self.client.post(f"{URL}{self.office.pk}/delete/", headers=self.htmx("dialog"))
        assert json.loads(r.headers["HX-Trigger"]) == {"dialog-close": {}, "periods-changed": {}}
        assert not ActivePeriod.objects.filter(code="Office").exists()

    def test_it_refuses_to_delete_a_period_in_use_and_says_how_many_jobs(self):
        self.make_job(active_period=self.night)
        self.make_job(active_period=self.night)
        message = "Active period Night is used by 2 batch jobs."
        r = self.client.get(f"{URL}{self.night.pk}/delete/", headers=self.htmx("dialog"))
        html = r.content.decode()
        assert message in html
        assert 'class="danger">Delete</button>' not in html
        r = self.client.post(f"{URL}{self.night.pk}/delete/", headers=self.htmx("dialog"))
        assert "HX-Trigger" not in r.headers
        assert message in r.content.decode()
        r = self.client.post(f"{URL}{self.night.pk}/delete/", follow=True)
        assert r.redirect_chain == [(URL, 302)]
        assert message in r.content.decode()
        assert ActivePeriod.objects.filter(code="Night").exists()

    def test_deleting_without_htmx_redirects_to_the_list(self):
        r = self.client.post(f"{URL}{self.office.pk}/delete/", follow=True)
        assert r.redirect_chain == [(URL, 302)]
        assert "Deleted active period Office." in r.content.decode()

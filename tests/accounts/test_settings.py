from __future__ import annotations

from zoneinfo import ZoneInfo

from django.utils.timezone import now

from batchadmin.accounts.models import UserPreference
from tests.base import BaseTestCase

URL = "/account/settings/"


class SettingsTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.dave)

    def test_it_offers_a_searchable_zone_without_aliases_and_the_clock_and_colours(self):
        html = self.client.get(URL).content.decode()
        assert 'name="time_zone" value="UTC" list="zone-list"' in html
        assert '<option value="America/New York">' in html
        assert "US/Eastern" not in html
        for value in ("24", "12"):
            assert f'name="clock" value="{value}"' in html
        for value in ("auto", "light", "dark"):
            assert f'name="theme" value="{value}"' in html
        assert '<html lang="en" data-theme="auto">' in html

    def test_it_saves_and_every_page_follows_at_once(self):
        job = self.make_job(created_by=self.dave, scheduled_start=now().replace(hour=18, minute=30))
        data = {"time_zone": "America/New York", "clock": "12", "theme": "dark"}
        r = self.client.post(URL, data, follow=True)
        html = r.content.decode()
        assert "Saved. Times are shown in America/New York on the 12-hour clock" in html
        assert '<html lang="en" data-theme="dark">' in html
        pref = UserPreference.objects.get(user=self.dave)
        assert (pref.time_zone, pref.clock, pref.theme) == ("America/New_York", "12", "dark")
        # The header spells the zone one way; the job list writes times on the 12-hour clock.
        page = self.client.get("/jobs/").content.decode()
        assert 'dave<span class="user-zone"> · America/New York</span>' in page
        start = job.scheduled_start.astimezone(ZoneInfo("America/New_York"))
        assert f"{start:%Y-%m-%d} {start.hour % 12 or 12}:{start:%M} PM" in page

    def test_an_unknown_zone_is_refused_at_the_field(self):
        html = self.client.post(
            URL, {"time_zone": "Atlantis", "clock": "24", "theme": "auto"}
        ).content.decode()
        assert "Atlantis is not a time zone" in html
        assert not UserPreference.objects.filter(user=self.dave, time_zone="Atlantis").exists()

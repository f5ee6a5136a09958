from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from django.test import SimpleTestCase

from batchadmin.lib import clock

OSLO = ZoneInfo("Europe/Oslo")
EVENING = dt.datetime(2026, 12, 3, 18, 30, 5, tzinfo=OSLO)


class FormatTestCase(SimpleTestCase):
    def test_it_writes_iso_dates_and_24_hour_times_by_default(self):
        assert clock.format_when(EVENING) == "2026-12-03 18:30"
        assert clock.format_when(EVENING, "s") == "2026-12-03 18:30:05"
        assert clock.format_when(EVENING, "time") == "18:30"
        assert clock.format_when(EVENING, "date") == "2026-12-03"
        assert clock.format_when(EVENING, "day tz") == "Thu 2026-12-03 18:30 Europe/Oslo"
        assert clock.format_when(dt.time(7, 5)) == "07:05"
        assert clock.format_when(dt.date(2026, 1, 2)) == "2026-01-02"
        assert clock.format_when(None) == ""

    def test_it_writes_the_12_hour_clock_when_chosen(self):
        with clock.clock_in_force(clock.CLOCK_12):
            assert clock.format_when(EVENING) == "2026-12-03 6:30 PM"
            assert clock.format_when(EVENING.replace(hour=0), "time s") == "12:30:05 AM"
            assert clock.format_when(dt.time(12, 0)) == "12:00 PM"
        assert clock.format_when(EVENING, "time") == "18:30"  # only inside the block

    def test_it_writes_milliseconds_when_asked(self):
        at = EVENING.replace(microsecond=42_500)
        assert clock.format_when(at, "ms") == "2026-12-03 18:30:05.042"
        assert clock.format_when(at, "time ms") == "18:30:05.042"
        with clock.clock_in_force(clock.CLOCK_12):
            assert clock.format_when(at, "time ms") == "6:30:05.042 PM"

    def test_short_or_running_durations_get_milliseconds(self):
        second = dt.timedelta(seconds=1)
        assert clock.precision(EVENING, EVENING + second) == "ms"
        assert clock.precision(EVENING, None) == "ms"  # still running
        assert clock.precision(EVENING, EVENING + 90 * second) == "s"
        # The end leaves out the date it shares with the start (in the current zone, UTC here).
        assert clock.end_precision(EVENING, EVENING + second) == "time ms"
        assert clock.end_precision(EVENING, EVENING + dt.timedelta(days=1)) == "s"

    def test_it_spells_zones_one_way(self):
        assert clock.zone_label("America/New_York") == "America/New York"
        assert clock.zone_from_label("america/new york") == "America/New_York"
        assert clock.format_when(EVENING.astimezone(dt.UTC), "time tz") == "17:30 UTC"

    def test_the_picker_offers_zones_without_deprecated_aliases(self):
        zones = clock.picker_zones()
        assert zones[0] == "UTC"
        for zone in ("Europe/Oslo", "America/New_York", "Asia/Kolkata", "Europe/Kyiv"):
            assert zone in zones
        for alias in ("US/Eastern", "Asia/Calcutta", "EST5EDT", "Europe/Kiev", "GB", "Etc/GMT+5"):
            assert alias not in zones


class FieldsTestCase(SimpleTestCase):
    def test_time_inputs_read_both_clocks_and_show_the_users(self):
        field = clock.TimeField()
        assert field.clean("18:30") == dt.time(18, 30)
        assert field.clean("6:30 PM") == dt.time(18, 30)
        assert 'value="18:30"' in clock.TimeInput().render("t", dt.time(18, 30))
        assert 'placeholder="HH:MM"' in clock.TimeInput().render("t", None)
        with clock.clock_in_force(clock.CLOCK_12):
            assert 'value="6:30 PM"' in clock.TimeInput().render("t", dt.time(18, 30))

    def test_a_bad_time_says_what_to_type(self):
        field = clock.TimeField()
        with self.assertRaisesMessage(Exception, "Enter a time as 18:30 (or 6:30 PM)."):
            field.clean("25:00")

    def test_date_time_inputs_are_iso_text(self):
        field = clock.DateTimeField()
        html = clock.DateTimeInput().render("start", EVENING.replace(second=0))
        assert 'type="text"' in html and 'value="2026-12-03 18:30"' in html
        # Read in the current zone (UTC in tests), on either clock.
        assert field.clean("2026-12-03 6:30 pm") == dt.datetime(2026, 12, 3, 18, 30, tzinfo=dt.UTC)

    def test_the_zone_field_takes_what_people_type(self):
        field = clock.ZoneField()
        assert field.clean("America/New York") == "America/New_York"
        assert field.clean("europe/oslo") == "Europe/Oslo"
        assert field.clean("US/Eastern") == "US/Eastern"  # an alias still stored is kept
        with self.assertRaisesMessage(Exception, "Mars/Olympus is not a time zone"):
            field.clean("Mars/Olympus")
        assert 'value="America/New York"' in clock.ZoneInput().render("tz", "America/New_York")

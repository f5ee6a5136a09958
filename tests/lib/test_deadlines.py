"""When a run's deadline is due, and whether it is at risk or missed (lib/deadlines.py)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import SimpleTestCase

from batchadmin.lib.deadlines import Deadline, State, judge
from batchadmin.lib.recurrence import zone

UTC = dt.UTC
OSLO = zone("Europe/Oslo")
MIN = dt.timedelta(minutes=1)
NIGHT = dt.datetime(2027, 3, 27, 21, tzinfo=UTC)  # 22:00 in Oslo, the night the clocks go forward


class DueTestCase(SimpleTestCase):
    def test_a_time_of_day_is_the_first_after_the_start_in_the_jobs_zone(self):
        # 06:00 the next morning is summer time: 04:00 UTC, not 05:00.
        assert Deadline(at=dt.time(6)).due(NIGHT, OSLO) == dt.datetime(2027, 3, 28, 4, tzinfo=UTC)
        early = dt.datetime(2027, 3, 28, 1, tzinfo=UTC)  # 03:00 CEST: the same morning's 06:00
        assert Deadline(at=dt.time(6)).due(early, OSLO) == dt.datetime(2027, 3, 28, 4, tzinfo=UTC)
        at_six = dt.datetime(2027, 3, 28, 4, tzinfo=UTC)  # starts at 06:00: the next day's
        assert Deadline(at=dt.time(6)).due(at_six, OSLO) == dt.datetime(2027, 3, 29, 4, tzinfo=UTC)

    def test_a_time_in_the_dst_gap_is_the_first_instant_after_it(self):
        assert Deadline(at=dt.time(2, 30)).due(NIGHT, OSLO) == dt.datetime(
            2027, 3, 28, 1, tzinfo=UTC
        )

    def test_a_duration_is_elapsed_time_from_the_start(self):
        assert Deadline(within=120 * MIN).due(NIGHT, OSLO) == NIGHT + 120 * MIN

    def test_it_is_one_or_the_other_and_says_which(self):
        with pytest.raises(ValueError):
            Deadline(at=dt.time(6), within=MIN)
        with pytest.raises(ValueError):
            Deadline()
        assert Deadline(at=dt.time(6)).describe() == "must have ended by 06:00"
        assert Deadline(within=90 * MIN).describe() == "must have ended within 1 h 30 min"


class JudgeTestCase(SimpleTestCase):
    due = NIGHT + 120 * MIN

    def state(
        self, *, at: dt.datetime, started: dt.datetime | None = None, usual: int | None = None
    ) -> tuple[State, str]:
        j = judge(
            due=self.due, scheduled=NIGHT, started=started,
            usual=None if usual is None else usual * MIN, at=at, late_start=5 * MIN, tz=OSLO,
        )  # fmt: skip
        assert j.due == self.due
        return j.state, j.reason

    def test_a_run_not_started_is_at_risk_when_late_or_when_it_cannot_make_it(self):
        assert self.state(at=NIGHT + 4 * MIN)[0] == State.ON_TRACK
        assert self.state(at=NIGHT + 5 * MIN) == (
            State.AT_RISK,
            "not started 5 min 00 s after its scheduled start; deadline 00:00 Europe/Oslo",
        )
        # Before its start, with a usual duration longer than the time left.
        assert self.state(at=NIGHT - 10 * MIN, usual=30)[0] == State.ON_TRACK
        assert self.state(at=NIGHT + 91 * MIN, usual=30) == (
            State.AT_RISK,
            "not started, and it usually takes 30 min 00 s: it cannot end by 00:00 Europe/Oslo",
        )

    def test_a_running_run_is_at_risk_when_it_started_too_late_or_overruns(self):
        assert self.state(at=NIGHT + 60 * MIN, started=NIGHT, usual=30)[0] == State.ON_TRACK
        assert self.state(at=NIGHT + 100 * MIN, started=NIGHT + 100 * MIN, usual=30) == (
            State.AT_RISK,
            "started at 23:40 and it usually takes 30 min 00 s: expected to end at 00:10, after 00:00 Europe/Oslo",
        )
        assert self.state(at=NIGHT + 95 * MIN, started=NIGHT, usual=30) == (
            State.AT_RISK,
            "running 1 h 35 min, longer than usual (30 min 00 s), and 25 min 00 s left before 00:00 Europe/Oslo",
        )
        assert self.state(at=NIGHT + 119 * MIN, started=NIGHT)[0] == State.ON_TRACK  # no history

    def test_past_the_deadline_it_is_missed(self):
        assert self.state(at=self.due + MIN) == (
            State.MISSED,
            "not started 1 min 00 s after its deadline 00:00 Europe/Oslo",
        )
        assert self.state(at=self.due + MIN, started=NIGHT)[1].startswith(
            "still running 1 min 00 s after"
        )
        assert self.state(at=self.due)[0] == State.AT_RISK  # at the deadline itself: not yet

"""Calendars and deadlines end to end: real beat and worker, PostgreSQL, Redis, and the cluster
clock of test_recurrence.py (tests/e2e/clock), moved forward instead of waited for.

1. A deadline alert fires once for a job that never started (its group has no server).
2. Across Oslo's change to summer time (28 March 2027), a daily job skips a calendar date and
   a weekly one runs the calendar date on the next working day, at 08:00 local time each.

The clock only moves forward, so the tests run in this order.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.e2e.cluster import unique, wait_for
from tests.e2e.test_recurrence import clock_cluster  # noqa: F401  (the module's cluster)

UTC = dt.UTC
TICK_NAME = "batchadmin: release tick"  # the PeriodicTask row jobs migration 0002 seeds


def test_it_alerts_once_that_a_job_that_never_started_missed_its_deadline(clock_cluster):  # noqa: F811
    cluster, clock = clock_cluster
    group = unique("nobody-")
    cluster.import_jobs({"groups": [{"code": group, "servers": []}]})
    start = clock.now().replace(microsecond=0)
    [job_id] = cluster.import_jobs(
        {
            "description": "must end within a minute",
            "scheduled_start": start.isoformat(),
            "deadline": {"within_minutes": 1},
            "tasks": [{"key": "T", "process": "demo.noop", "group": group}],
        }
    )

    def events(kind: str) -> int:
        return int(
            cluster.scalar(
                "SELECT count(*) FROM alerts_alertevent WHERE job_id = %s AND kind = %s",
                job_id,
                kind,
            )
        )

    clock.advance_to(start + dt.timedelta(minutes=2))
    wait_for(lambda: events("missed"), timeout=60, what="the deadline missed alert")
    key, reason = cluster.rows(
        "SELECT key, details->>'reason' FROM alerts_alertevent WHERE job_id = %s AND kind = 'missed'",
        job_id,
    )[0]
    assert key == f"deadline:{job_id}:{start.astimezone(UTC).isoformat()}:missed"
    assert reason.startswith("not started")
    # Later checks (the clock jumps past their 30 s throttle) raise nothing more for this run.
    for minutes in (3, 4, 5):
        clock.advance_to(start + dt.timedelta(minutes=minutes))
        since = start + dt.timedelta(minutes=minutes)

        def ticked(since: dt.datetime = since) -> bool:
            return bool(
                cluster.scalar(
                    "SELECT count(*) FROM django_celery_beat_periodictask"
                    " WHERE name = %s AND last_run_at >= %s",
                    TICK_NAME,
                    since,
                )
            )

        wait_for(ticked, timeout=30, what=f"beat to tick at +{minutes} min")
    assert events("missed") == 1
    assert cluster.scalar("SELECT status FROM jobs_batchjob WHERE id = %s", job_id) == "executing"
    assert cluster.scalar(
        "SELECT count(*) FROM jobs_batchtaskrun r JOIN jobs_batchjobrun j ON j.id = r.job_run_id"
        " WHERE j.job_id = %s AND r.started_at IS NOT NULL",
        job_id,
    ) == 0  # fmt: skip


def test_it_skips_and_moves_calendar_dates_across_the_dst_change(clock_cluster):  # noqa: F811
    cluster, clock = clock_cluster
    group, server = unique("calendar-"), unique("cal-")
    cluster.import_jobs({"groups": [{"code": group, "servers": [server]}]})
    cluster.start_worker(server)
    clock.advance_to(dt.datetime(2027, 3, 20, 6, 59, 50, tzinfo=UTC))
    calendar = {"code": unique("HOL-"), "dates": ["2027-03-27"]}  # the Saturday before

    def job(description: str, first: str, **recurrence: Any) -> dict[str, Any]:
        return {
            "description": description,
            "scheduled_start": first,
            "recurrence": {
                "timezone": "Europe/Oslo",
                "end": {"after": 2},
                "calendar": calendar["code"],
                **recurrence,
            },  # fmt: skip
            "tasks": [{"key": "T", "process": "demo.noop", "group": group}],
        }

    weekly, daily = cluster.import_jobs(
        {
            "calendars": [calendar],
            "jobs": [
                job(
                    "Saturdays, next working day",
                    "2027-03-20T07:00:00+00:00",
                    start="2027-03-20T08:00:00",
                    on_calendar_date="next_day",
                    pattern={"unit": "weeks", "every": 1, "weekdays": ["sat"]},
                ),
                job(
                    "Daily, skip",
                    "2027-03-26T07:00:00+00:00",
                    start="2027-03-26T08:00:00",
                    on_calendar_date="skip",
                    pattern={"unit": "days", "every": 1},
                ),
            ],
        }  # fmt: skip
    )
    assert cluster.cli("next", str(weekly), "--count", "2").stdout.splitlines() == [
        "2027-03-20T08:00:00+01:00",
        "2027-03-28T08:00:00+02:00",  # Saturday the 27th moved to Sunday, summer time
    ]

    def runs(job_id: int) -> list[dt.datetime]:
        return [
            r[0]
            for r in cluster.rows(
                "SELECT scheduled_start FROM jobs_batchjobrun WHERE job_id = %s"
                " AND status = 'ended' ORDER BY scheduled_start",
                job_id,
            )
        ]

    def next_start(job_id: int, after: int) -> dt.datetime:
        def ready() -> dt.datetime | None:
            status, start = cluster.rows(
                "SELECT status, scheduled_start FROM jobs_batchjob WHERE id = %s", job_id
            )[0]
            return start if status == "waiting" and len(runs(job_id)) == after else None

        found: dt.datetime = wait_for(ready, timeout=60, what=f"run {after} of job {job_id} to end")
        return found

    clock.advance_to(dt.datetime(2027, 3, 20, 7, 0, 0, 500_000, tzinfo=UTC))
    assert next_start(weekly, 1) == dt.datetime(2027, 3, 28, 6, tzinfo=UTC)
    clock.advance_to(dt.datetime(2027, 3, 26, 7, 0, 0, 500_000, tzinfo=UTC))
    assert next_start(daily, 1) == dt.datetime(2027, 3, 28, 6, tzinfo=UTC)  # the 27th skipped
    clock.advance_to(dt.datetime(2027, 3, 28, 6, 0, 0, 500_000, tzinfo=UTC))
    for job_id in (weekly, daily):

        def ended(job_id: int = job_id) -> bool:
            status = cluster.scalar("SELECT status FROM jobs_batchjob WHERE id = %s", job_id)
            return bool(status == "ended")

        wait_for(ended, timeout=60, what=f"job {job_id} to end its second run")
    assert runs(weekly) == [
        dt.datetime(2027, 3, 20, 7, tzinfo=UTC),  # 08:00 CET
        dt.datetime(2027, 3, 28, 6, tzinfo=UTC),  # 08:00 CEST, the day after the calendar date
    ]
    assert runs(daily) == [
        dt.datetime(2027, 3, 26, 7, tzinfo=UTC),  # 08:00 CET
        dt.datetime(2027, 3, 28, 6, tzinfo=UTC),  # 08:00 CEST; the 27th was skipped
    ]

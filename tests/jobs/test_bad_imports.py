"""Issue 13, item 3: every file in tests/data/bad_imports fails with a message that names the
culprit, prints no traceback, and creates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from batchadmin.alerts.models import Webhook
from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchJob, BatchTask, Calendar
from batchadmin.servers.models import BatchGroup, BatchServer
from tests.base import ROOT_DIR

BAD = ROOT_DIR / "tests" / "data" / "bad_imports"
JOB = "job 1 ('Nightly settlement')"
RANGE = "is out of range: dates go from 2000-01-01 to 9000-12-31."
# File -> what its message must say (the culprit, and where it is).
EXPECTED = {
    "duplicate_keys.json": "Key 'description' is in one object twice",
    "duplicate_keys_in_task.json": "Key 'key' is in one object twice (the object with 'key', 'process')",
    "every_1e20_minutes.json": f"{JOB}, recurrence: every must be a whole number from 1 to 52,596,000",
    "every_1e20_years.json": f"{JOB}, recurrence: every must be a whole number from 1 to 100",
    "february_30.json": f"{JOB}: scheduled_start '2027-02-30T10:00:00+00:00' is not a valid date",
    "february_30_calendar_date.json": "calendar 'HOL': date '2027-02-30' is not a date",
    "february_30_end_by.json": f"{JOB}, recurrence: end by '2027-02-30' is not a date",
    "group_description_too_long.json": "group 'G1': description must be a string of at most 200",
    "hour_25.json": f"{JOB}: scheduled_start '2027-01-04T25:00:00+00:00' is not a valid date and time: hour",
    "hour_25_deadline.json": f"{JOB}: deadline at '25:00' is not a time",
    "hour_25_recurrence_start.json": f"{JOB}, recurrence: start '2027-01-04T25:00:00' is not a valid",
    "infinity_every.json": "Infinity is not a number in JSON",
    "int_too_big_deadline.json": f"{JOB}: deadline within_minutes must be a whole number from 1 to",
    "int_too_big_end_after.json": f"{JOB}, recurrence: end after must be a whole number of runs",
    "int_too_big_max_concurrency.json": "group 'G1': max_concurrency 100000000000000000000:",
    "int_too_big_max_retries.json": f"{JOB}, task 'T1': max_retries must be a whole number",
    "int_too_big_month_day.json": f"{JOB}, recurrence: The day of the month is 1 to 31.",
    "int_too_big_parameter.json": f"{JOB}, task 'T1': invalid parameters for demo.log: lines:",
    "int_too_big_time_limit.json": f"{JOB}, task 'T1': time_limit must be a whole number",
    "list_as_active_period.json": f"{JOB}: active_period must be a string, got list",
    "list_as_company.json": f"{JOB}: company must be a string, got list",
    "list_as_deadline_at.json": f"{JOB}: deadline at ['22:00'] is not a time",
    "list_as_description.json": 'job 1: "description" is required.',
    "list_as_task_company.json": f"{JOB}, task 'T1': company must be a string, got list",
    "list_as_timezone.json": f"{JOB}, recurrence: timezone must be an IANA zone name",
    "lone_surrogate_in_group_code.json": "groups[0].code: contains half a surrogate pair",
    "lone_surrogate_in_task.json": "tasks[0].description: contains half a surrogate pair",
    "nan_parameter.json": "NaN is not a number in JSON",
    "not_utf8.json": "not_utf8.json is not UTF-8 text",
    "nul_in_description.json": "description: contains a NUL character",
    "nul_in_key_name.json": "tasks[0]['para\\x00meters']: contains a NUL character",
    "nul_in_parameter.json": "tasks[0].parameters.message: contains a NUL character",
    "object_as_group.json": f"{JOB}, task 'T1': group must be a string, got dict",
    "object_as_recurrence_calendar.json": f"{JOB}, recurrence: calendar must be a string, got dict",
    "object_as_run_as.json": f"{JOB}: run_as must be a string, got dict",
    "object_as_scheduled_start.json": f"{JOB}: scheduled_start {{'date': '2027-01-04'}} is not an",
    "offset_plus_99.json": f"{JOB}: scheduled_start '2027-01-04T22:00:00+99:00' is not a valid date and time: the offset",
    "offset_plus_99_recurrence_start.json": f"{JOB}, recurrence: start '2027-01-04T22:00:00+99:00' is not a valid",
    "raw_nul_byte.json": "raw_nul_byte.json is not valid JSON: Invalid control character",
    "year_1_bc.json": f"{JOB}: scheduled_start 0001-01-01T00:00:00+01:00 {RANGE}",
    "year_9999.json": f"{JOB}: scheduled_start 9999-12-31T23:59:00-10:00 {RANGE}",
    "year_9999_calendar_date.json": f"calendar 'HOL': date 9999-12-31 {RANGE}",
    "year_9999_end_by.json": f"{JOB}, recurrence: end by 9999-12-31 {RANGE}",
    "year_9999_recurrence_start.json": f"{JOB}, recurrence: start 9999-12-31T23:59:00 {RANGE}",
}


def counts() -> dict[str, int]:
    models = (BatchJob, BatchTask, BatchGroup, BatchServer, Calendar, Webhook, AuditEntry)
    return {m.__name__: m.objects.count() for m in models}


def test_every_bad_file_has_an_expected_message() -> None:
    assert sorted(p.name for p in BAD.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.django_db
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_it_refuses_the_file_naming_the_culprit(name: str) -> None:
    before = counts()
    with pytest.raises(CommandError) as refused:
        call_command("batch", "import", str(BAD / name))
    assert EXPECTED[name] in str(refused.value)
    assert counts() == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("name", ["nul_in_description.json", "year_9999.json", "not_utf8.json"])
def test_the_command_line_prints_a_message_not_a_traceback(name: str) -> None:
    before = counts()
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="tests.settings")
    # The test database, as the subprocess must use it (pytest-django renamed it here).
    from django.db import connection

    env["TEST_DATABASE_URL"] = _url(connection.settings_dict)
    done = subprocess.run(
        [sys.executable, "manage.py", "batch", "import", str(BAD / name)],
        cwd=ROOT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert EXPECTED[name] in done.stderr
    assert counts() == before


def _url(db: dict[str, object]) -> str:
    return (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT'] or 5432}/"
        f"{db['NAME']}"
    )


def test_the_timeout_of_batch_wait_is_a_number_of_seconds() -> None:
    for value in ("nan", "inf", "-1", "soon"):
        with pytest.raises(CommandError, match="is not a number of seconds"):
            call_command("batch", "wait", "1", "--timeout", value)


def test_it_reads_the_files_as_they_are_kept() -> None:
    # The files themselves are the test data: NUL and surrogates as JSON escapes, where the
    # file is valid JSON, so an editor does not "fix" them.
    assert b"\\u0000" in (BAD / "nul_in_description.json").read_bytes()
    assert Path(BAD / "raw_nul_byte.json").read_bytes().count(b"\x00") == 1

"""Jobs that follow jobs, and backfill, end to end (issue 14, items 2 and 5): real beat and
worker, PostgreSQL and Redis.

1. A job triggered by another one runs once per run of it that ends Ended, and a job
   triggered on Error does not run.
2. A backfill of three missed days starts three runs, one after the other, in order, each
   recording the occurrence it stands for.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from tests.e2e.browser import sign_in
from tests.e2e.cluster import Cluster, unique, wait_for

UTC = dt.UTC
SHOTS = Path(os.environ.get("E2E_ARTIFACTS", "test-artifacts"))
MANAGER = "schedb-ops"


def _manager(cluster: Cluster) -> None:
    cluster.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import Group, User; "
        f"User.objects.get_or_create(username='{MANAGER}')[0].groups.add("
        "Group.objects.get(name='Batch job manager'))",
    )


def _served_group(cluster: Cluster, prefix: str) -> str:
    group = unique(prefix)
    cluster.import_jobs({"groups": [{"code": group, "servers": [group]}]})
    cluster.start_worker(group)
    return group


def _runs(cluster: Cluster, job_id: int) -> list[tuple[Any, ...]]:
    """(status, trigger, note, occurrence, started_at, ended_at) of each run, oldest first."""
    return cluster.rows(
        "SELECT status, trigger, note, occurrence, started_at, ended_at FROM jobs_batchjobrun"
        " WHERE job_id = %s ORDER BY started_at, id",
        job_id,
    )


def _ended_runs(cluster: Cluster, job_id: int) -> int:
    return sum(1 for r in _runs(cluster, job_id) if r[5] is not None)


def test_a_triggered_job_runs_once_per_parent_run_and_not_on_the_other_status(cluster):
    group = _served_group(cluster, "follow-")
    task = {"key": "T", "process": "demo.log", "parameters": {"lines": 2}, "group": group}
    parent, on_ended, on_error = cluster.import_jobs(
        {
            "jobs": [
                {
                    "key": "parent",
                    "description": "Import orders",
                    "status": "withhold",
                    "tasks": [task],
                },
                {
                    "description": "Post orders",
                    "trigger": {"after": "parent", "status": "ended"},
                    "tasks": [task],
                },
                {
                    "description": "Clean up a failed import",
                    "trigger": {"after": "parent", "status": "error"},
                    "tasks": [task],
                },
            ]
        }  # fmt: skip
    )
    assert cluster.rows(
        "SELECT id, after_job_id, after_status FROM jobs_batchjob WHERE after_job_id = %s"
        " ORDER BY id",
        parent,
    ) == [(on_ended, parent, "ended"), (on_error, parent, "error")]
    for n in (1, 2):
        cluster.cli("status", str(parent), "waiting")  # run (again)

        def both_ended(n: int = n) -> bool:
            return _ended_runs(cluster, parent) == n and _ended_runs(cluster, on_ended) == n

        wait_for(
            both_ended,
            timeout=90,
            what=f"run {n} of the parent and of its follower to end",
        )
        wait_for(
            lambda: cluster.show(on_ended)["status"] == "waiting",
            timeout=30,
            what="the follower to wait for the parent again",
        )
    parent_runs = [
        r[0]
        for r in cluster.rows(
            "SELECT id FROM jobs_batchjobrun WHERE job_id = %s ORDER BY id", parent
        )
    ]
    follower_runs = _runs(cluster, on_ended)
    assert [(r[0], r[1], r[2]) for r in follower_runs] == [
        ("ended", "triggered", f"After run {run_id} of job {parent} (Ended)")
        for run_id in parent_runs
    ]
    # Each follower run started after its parent's run ended (it follows, it does not overlap).
    parent_ends = [r[5] for r in _runs(cluster, parent)]
    assert all(f[4] >= p for f, p in zip(follower_runs, parent_ends, strict=True))
    assert _runs(cluster, on_error) == []  # the parent never ended in Error
    assert cluster.scalar(
        "SELECT count(*) FROM jobs_queuedrun WHERE job_id = %s", on_ended
    ) == 2  # fmt: skip


def test_a_backfill_of_three_missed_days_starts_three_runs_in_order(cluster):
    group = _served_group(cluster, "backfill-")
    _manager(cluster)
    today = dt.datetime.now(UTC).date()
    first = today - dt.timedelta(days=6)
    tomorrow = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(3, 0), UTC)
    [job_id] = cluster.import_jobs(
        {
            "description": "Daily close",
            "scheduled_start": tomorrow.isoformat(),  # the runs before it were missed
            "recurrence": {
                "start": f"{first.isoformat()}T03:00:00",
                "timezone": "UTC",
                "end": None,
                "pattern": {"unit": "days", "every": 1},
            },
            "tasks": [
                {"key": "T", "process": "demo.sleep", "parameters": {"seconds": 1}, "group": group}
            ],
        }
    )
    days = [today - dt.timedelta(days=d) for d in (4, 3, 2)]
    out = cluster.cli(
        "backfill", str(job_id), "--from", days[0].isoformat(), "--to", days[-1].isoformat(),
        "--user", MANAGER,
    ).stdout.splitlines()  # fmt: skip
    assert out == [f"{d.isoformat()}T03:00:00+00:00" for d in days]
    wait_for(lambda: _ended_runs(cluster, job_id) == 3, timeout=120, what="the three backfill runs")
    runs = _runs(cluster, job_id)
    assert [(r[0], r[1]) for r in runs] == [("ended", "backfill")] * 3
    assert [r[3] for r in runs] == [dt.datetime.combine(d, dt.time(3), UTC) for d in days]
    # One after the other: each started once the one before had ended.
    for before, after in zip(runs, runs[1:], strict=False):
        assert after[4] >= before[5]
    wait_for(
        lambda: cluster.show(job_id)["status"] == "waiting", timeout=30, what="back to Waiting"
    )
    assert cluster.scalar(
        "SELECT scheduled_start FROM jobs_batchjob WHERE id = %s", job_id
    ) == tomorrow  # fmt: skip
    actions = [a["action"] for a in json_audit(cluster, job_id)]
    assert "backfill" in actions


def json_audit(cluster: Cluster, job_id: int) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(cluster.cli("audit", str(job_id), "--json").stdout)
    return data


def test_a_manager_sees_the_trigger_links_and_backfills_from_the_dialog(cluster, web, page):
    """The browser: the follower links to the job it runs after and back; the Backfill dialog
    previews the runs before starting them, and they run."""
    group = _served_group(cluster, "fillui-")
    today = dt.datetime.now(UTC).date()
    parent, follower = cluster.import_jobs(
        {
            "jobs": [
                {
                    "key": "p",
                    "description": "Nightly import",
                    "status": "withhold",
                    "scheduled_start": dt.datetime.combine(
                        today + dt.timedelta(days=1), dt.time(2), UTC
                    ).isoformat(),
                    "recurrence": {
                        "start": f"{(today - dt.timedelta(days=5)).isoformat()}T02:00:00",
                        "timezone": "UTC",
                        "end": None,
                        "pattern": {"unit": "days", "every": 1},
                    },
                    "tasks": [{"key": "T", "process": "demo.noop", "group": group}],
                },
                {
                    "description": "Post the import",
                    "trigger": {"after": "p", "status": "ended"},
                    "tasks": [{"key": "T", "process": "demo.noop", "group": group}],
                },
            ]
        }  # fmt: skip
    )
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/{follower}/")
    page.locator("#job-runs-after a", has_text=f"job {parent} Nightly import").wait_for()
    assert page.locator(".diagram .node.external").count() == 1
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "trigger-follower.png"), full_page=True)
    page.goto(f"{web}/jobs/{parent}/")
    page.locator("#job-triggers a", has_text=f"job {follower} Post the import").wait_for()
    page.locator("a.button", has_text="Backfill…").click()
    dialog = page.locator("#dialog")
    dialog.locator("input[name=first_day]").fill((today - dt.timedelta(days=2)).isoformat())
    dialog.locator("input[name=last_day]").fill((today - dt.timedelta(days=1)).isoformat())
    dialog.locator("button[name=preview]").click()
    dialog.locator("#backfill-preview", has_text="2 runs will start").wait_for()
    page.screenshot(path=str(SHOTS / "backfill-dialog.png"))
    dialog.locator("button.primary", has_text="Start 2 runs").click()
    wait_for(lambda: _ended_runs(cluster, parent) == 2, timeout=90, what="the two backfill runs")
    # Each backfill run ended Ended, so the follower ran after each.
    wait_for(lambda: _ended_runs(cluster, follower) == 2, timeout=90, what="the follower's runs")

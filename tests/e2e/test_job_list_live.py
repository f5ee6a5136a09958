"""The job list in a real browser (issue 12 items 1, 2 and 5): it stays live whatever it
showed when opened, shows a recurring job's failed run while the job waits, asks before a bulk
cancel, and offers a Viewer no bulk control. Real gunicorn, worker and beat."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tests.e2e.browser import sign_in
from tests.e2e.cluster import unique, wait_for

SHOTS = Path(os.environ.get("E2E_ARTIFACTS", "test-artifacts"))
END = 45_000  # the machine is shared and loaded: generous, bounded waits


def one_task(
    description: str, process: str, parameters: dict[str, Any], **job: Any
) -> dict[str, Any]:
    task = {"key": "T", "description": "work", "process": process, "parameters": parameters}
    return {"description": description, "status": "waiting", "tasks": [task], **job}


def row(page: Any, description: str) -> Any:
    return page.locator("#job-table tbody tr", has_text=description)


def test_a_list_opened_before_a_job_exists_shows_it_appear_and_end(cluster, web, page):
    cluster.start_worker(unique("live-"))
    description = unique("Appears later ")
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/?description={quote(description)}")
    page.locator("text=No batch jobs match these filters.").wait_for()
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    [job_id] = cluster.import_jobs(one_task(description, "demo.log", {"lines": 2}))
    row(page, description).wait_for(timeout=END)  # appeared, no reload
    row(page, description).locator(".status-ended").first.wait_for(timeout=END)
    assert navigations == []
    # The last run is on the list too: its status beside the job's.
    assert row(page, description).locator("td.last-run .status-ended").count() == 1
    assert cluster.show(job_id)["status"] == "ended"


def test_a_recurring_jobs_failed_run_shows_on_the_list_while_it_waits(cluster, web, page):
    cluster.start_worker(unique("recur-"))
    description = unique("Hourly, fails ")
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=2)
    recurrence = {
        "start": start.replace(tzinfo=None).isoformat(),
        "timezone": "UTC",
        "pattern": {"unit": "hours", "every": 1},
    }
    [job_id] = cluster.import_jobs(
        one_task(
            description,
            "demo.fail",
            {"message": "ledger locked"},
            scheduled_start=start.isoformat(),
            recurrence=recurrence,
        )
    )
    wait_for(
        lambda: cluster.show(job_id)["status"] == "waiting" and cluster.show(job_id)["runs"] == 1,
        timeout=60,
        what="the recurring job's run to fail and the job to wait for the next",
    )
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/?has_errors=on&description={quote(description)}")
    line = row(page, description)
    line.wait_for(timeout=END)
    assert line.locator(".status-waiting").count() == 1
    assert line.locator("td.last-run .status-error").count() == 1
    page.goto(f"{web}/jobs/?status=error&description={quote(description)}")
    row(page, description).locator("td.last-run .status-error").wait_for(timeout=END)


def test_bulk_cancel_asks_for_confirmation(cluster, web, page):
    cluster.start_worker(unique("bulk-"))
    description = unique("Long sleeper ")
    [job_id] = cluster.import_jobs(one_task(description, "demo.sleep", {"seconds": 600}))
    wait_for(
        lambda: cluster.show(job_id)["status"] == "executing",
        timeout=60,
        what="the job to execute",
    )
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/?description={quote(description)}")
    line = row(page, description)
    line.locator(".status-executing").first.wait_for(timeout=END)
    line.locator("input[name=job]").check()
    page.click("#bulk-form button:has-text('Cancel…')")
    dialog = page.locator("#dialog")
    dialog.locator("text=1 executing job will be canceled").wait_for(timeout=END)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "bulk-cancel-confirm.png"))
    assert cluster.show(job_id)["status"] == "executing"  # nothing happened yet
    dialog.locator("button:has-text('Cancel 1 job')").click()
    wait_for(
        lambda: cluster.show(job_id)["status"] in ("canceling", "canceled"),
        timeout=30,
        what="the job to be canceled",
    )
    # The sleep notices the cancel within a fraction of a second; the list shows the end.
    row(page, description).locator(".status-canceled").first.wait_for(timeout=END)


def test_a_viewer_sees_no_bulk_control_and_a_post_is_refused(cluster, web, page):
    [job_id] = cluster.import_jobs(
        one_task(unique("Viewer looks "), "demo.log", {"lines": 1}, status="withhold")
    )
    sign_in(page, web, "viewer")
    page.goto(f"{web}/jobs/")
    page.locator("#job-table").wait_for()
    assert page.locator("#bulk-form").count() == 0
    assert page.locator("input[name=job]").count() == 0
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"X-CSRFToken": csrf, "Referer": web}
    for confirm in ("", "1"):
        r = page.request.post(
            f"{web}/jobs/bulk-status/",
            form={"action": "waiting", "job": str(job_id), "confirm": confirm},
            headers=headers,
            max_redirects=0,
        )
        assert r.status == 403
    assert cluster.show(job_id)["status"] == "withhold"


def test_the_list_fits_a_desktop_and_a_phone(cluster, web, page):
    """Screenshots for docs/screenshots/ at 1440 and 390 px; nothing clipped at 1440."""
    cluster.import_jobs(
        one_task(
            "Month-end settlement of the vendor ledgers for every legal entity, "
            "with the reconciliation report and the e-mail to controllers",
            "demo.log",
            {"lines": 1},
            status="withhold",
        )
    )
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/")
    page.locator("#job-table tbody tr").first.wait_for()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "job-list-1440.png"), full_page=True)
    table = page.locator("#job-table")
    assert table.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), "columns clipped at 1440"
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{web}/jobs/")
    page.locator("#job-table tbody tr").first.wait_for()
    page.screenshot(path=str(SHOTS / "job-list-390.png"), full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")

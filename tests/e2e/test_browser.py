"""Browser tests: Playwright drives Debian's Chromium against gunicorn, a worker and beat."""

from __future__ import annotations

from tests.e2e.browser import sign_in
from tests.e2e.cluster import unique


def test_it_updates_the_job_list_without_reloading(cluster, web, page):
    cluster.start_worker(unique("web-"))
    sign_in(page, web, "manager")
    [job_id] = cluster.import_jobs(
        {"description": "Live list", "status": "withhold", "tasks": [
            {"key": "S", "description": "nap", "process": "demo.sleep", "parameters": {"seconds": 4}}]}
    )  # fmt: skip
    page.goto(f"{web}/jobs/")
    row = page.locator(f"#job-{job_id}")
    assert row.locator(".status-withhold").count() == 1
    # Select the row and set it Waiting with the bulk action, as an administrator would.
    row.locator("input[name=job]").check()
    page.click("button[value=waiting]")
    page.wait_for_selector(f"#job-{job_id} .status-waiting")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.wait_for_selector(f"#job-{job_id} .status-executing", timeout=15_000)
    page.wait_for_selector(f"#job-{job_id} .status-ended", timeout=15_000)
    assert navigations == []  # the statuses arrived without a reload

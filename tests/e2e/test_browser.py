"""Browser tests: Playwright drives Debian's Chromium against gunicorn, a worker and beat."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.e2e.browser import sign_in
from tests.e2e.cluster import unique


def test_it_updates_the_job_list_without_reloading(cluster, web, page):
    cluster.start_worker(unique("web-"))
    sign_in(page, web, "manager")
    [job_id] = cluster.import_jobs(
        {"description": "Live list", "status": "withhold", "tasks": [
            {"key": "S", "description": "nap", "process": "demo.sleep", "parameters": {"seconds": 7}}]}
    )  # fmt: skip
    page.goto(f"{web}/jobs/")
    row = page.locator(f"#job-{job_id}")
    assert row.locator(".status-withhold").count() == 1
    # Select the row and set it Waiting with the bulk action, as an administrator would.
    row.locator("input[name=job]").check()
    page.click("button[value=waiting]")
    # As the Change status dialog: it says what will happen first, then acts.
    page.locator("#dialog", has_text="1 held job will start within seconds").wait_for()
    page.click("#dialog button:has-text('Set Waiting 1 job')")
    page.wait_for_selector(f"#job-{job_id} .status-waiting, #job-{job_id} .status-executing")
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.wait_for_selector(f"#job-{job_id} .status-executing", timeout=15_000)
    page.wait_for_selector(f"#job-{job_id} .status-ended", timeout=15_000)
    assert navigations == []  # the statuses arrived without a reload


def add_task(page: Any, description: str, process: str, *, params: dict[str, str] | None = None,
             after: str | None = None, after_description: str = "") -> None:  # fmt: skip
    """Add a task line in the grid the way an administrator does: Add task, fill, Enter."""
    page.click("[data-shortcut='new-task']")
    form = page.locator("#task-new-form")
    form.locator("[name=description]").fill(description)
    form.locator("[name=process]").select_option(process)
    for name, value in (params or {}).items():
        form.locator(f"[name=param-{name}]").fill(value)  # swapped in for the chosen process
    if after:
        form.locator("button[name=add-condition]").click()
        form = page.locator("#task-new-form")
        form.locator("[name=cond-0-depends_on]").select_option(
            label=f"{after} · {after_description}"
        )
        form.locator("[name=cond-0-expected_status]").select_option("ended")
    form.locator("[name=description]").press("Enter")
    page.wait_for_selector("#task-new-form", state="detached")


def test_it_builds_runs_and_shows_a_job_in_the_browser(cluster, web, page):
    """Sign in, create a job of three tasks with a condition, release it, watch it end
    without reloading, and read a line its process logged in the history."""
    cluster.start_worker(unique("ui-"))
    sign_in(page, web, "ursula")
    page.click("text=New batch job")
    page.fill("[name=description]", "Browser-built invoicing")
    page.click("button:has-text('Create job and add tasks')")
    page.wait_for_selector("#task-grid")
    job_url = page.url
    add_task(page, "Post invoices", "demo.log", params={"lines": "3"})
    add_task(page, "Settle", "demo.noop")
    add_task(
        page,
        "Report",
        "demo.log",
        params={"lines": "1"},
        after="T1",
        after_description="Post invoices",
    )
    rows = page.locator("#task-rows tr.task-line")
    # The live refresh may redraw the lines just as the third one is saved: wait for it.
    expect(rows).to_have_count(3)
    assert "T1" in rows.nth(2).inner_text()  # the condition shows in Has conditions
    expect(page.locator("#job-diagram svg.diagram")).to_have_count(1)  # redrawn on tasks-changed

    page.click("a:has-text('Change status')")
    page.locator("#dialog input[value=waiting]").check()
    page.locator("#dialog button[type=submit].primary").click()
    # Due at once: the tick may start it (even end it) before the header shows Waiting.
    page.wait_for_selector(
        "#job-status .status-waiting, #job-status .status-executing, #job-status .status-ended"
    )

    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.wait_for_selector("#job-status .status-ended", timeout=30_000)
    assert navigations == []  # status arrived by polling, no reload
    assert page.url == job_url
    for n in range(3):
        # The lines follow the header within a poll (they are redrawn on their own version).
        expect(rows.nth(n)).to_contain_text("Ended")

    page.click("text=Batch job history")
    page.wait_for_selector("text=Run 1")
    page.locator("summary:has-text('Log:')").first.click()
    assert page.locator("text=Log line 2 of 3").count() >= 1


def test_it_keeps_a_batch_user_out_of_another_users_job(cluster, web, page):
    [job_id] = cluster.import_jobs(
        {"description": "Victor's payroll", "status": "withhold",
         "tasks": [{"key": "P", "description": "pay", "process": "demo.noop"}]}
    )  # fmt: skip
    cluster.manage("shell", "-c", f"""
from django.contrib.auth.models import User
from batchadmin.jobs.models import BatchJob
BatchJob.objects.filter(pk={job_id}).update(created_by=User.objects.get(username="victor"))
""")  # fmt: skip
    sign_in(page, web, "ursula")
    assert "Victor's payroll" not in page.content()
    response = page.goto(f"{web}/jobs/{job_id}/")
    assert response is not None and response.status == 404
    assert page.goto(f"{web}/jobs/{job_id}/history/").status == 404
    # A forged POST with a valid CSRF token from ursula's own session is refused too.
    token = page.context.cookies()
    csrf = next(c["value"] for c in token if c["name"] == "csrftoken")
    for path, data in (
        (f"/jobs/{job_id}/change-status/", {"status": "waiting"}),
        ("/jobs/bulk-status/", {"action": "waiting", "job": str(job_id)}),
    ):
        r = page.request.post(
            f"{web}{path}",
            form=data,
            headers={"X-CSRFToken": csrf, "Referer": web},
            max_redirects=0,
        )
        assert r.status in (302, 404)
    status = cluster.show(job_id)["status"]
    assert status == "withhold"
    # Victor himself may open it.
    page.context.clear_cookies()
    sign_in(page, web, "victor")
    assert page.goto(f"{web}/jobs/{job_id}/").status == 200


def test_a_big_jobs_later_lines_update_live_once_loaded(cluster, web, page):
    """A job of 60 tasks shows 50 lines; scrolling loads the rest, and the live poll then
    carries the status of those lines too (static/app.js says how many lines are shown)."""
    cluster.start_worker(unique("big-"))
    first = {"key": "T00", "description": "first", "process": "demo.sleep"}
    tasks: list[dict[str, Any]] = [{**first, "parameters": {"seconds": 6}}]
    tasks += [
        {"key": f"T{i:02d}", "description": f"step {i}", "process": "demo.noop",
         "conditions": [{"task": "T00", "status": "ended"}]}
        for i in range(1, 60)
    ]  # fmt: skip
    [job_id] = cluster.import_jobs({"description": "Sixty lines", "tasks": tasks})
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/{job_id}/")
    page.wait_for_selector("#job-status .status-executing", timeout=15_000)
    page.reload()  # a page of the running job: read-only, polling
    lines = page.locator("#task-rows tr.task-line")
    assert lines.count() == 50
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "poll=1" in r.url else None)
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    page.locator("#task-more").scroll_into_view_if_needed()  # loads the next lines
    page.wait_for_function("document.querySelectorAll('#task-rows tr.task-line').length === 60")
    assert "Waiting for task T00" in lines.nth(59).inner_text()
    lines.nth(59).locator(".status-ended").wait_for(timeout=30_000)
    page.wait_for_selector("#job-status .status-ended", timeout=15_000)
    assert navigations == []
    assert any("lines=60" in url for url in polls), polls

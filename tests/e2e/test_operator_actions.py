"""Intervene and verify in the browser (issue 12): skip a failed task with a reason and watch
the job resume and end, rerun from a task, run now with a parameter override, and a Viewer
who is offered none of it and refused when he posts anyway. Real gunicorn, worker and beat."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.e2e.browser import sign_in
from tests.e2e.cluster import Cluster, unique, wait_for

SHOTS = Path(os.environ.get("E2E_ARTIFACTS", "test-artifacts"))
# The machine is shared and loaded: generous, bounded waits.
END = 45_000


def chain(description: str, *, fail: str = "", status: str = "waiting") -> dict[str, Any]:
    """A -> B -> C, each after the one before Ended; ``fail`` names the task that fails."""
    tasks = []
    for key, after in (("A", None), ("B", "A"), ("C", "B")):
        task: dict[str, Any] = {"key": key, "description": f"step {key}", "process": "demo.log",
                                "parameters": {"lines": 2}}  # fmt: skip
        if key == fail:
            task |= {"process": "demo.fail", "parameters": {"message": f"{key} broke"}}
        if after:
            task["conditions"] = [{"task": after, "status": "ended"}]
        tasks.append(task)
    return {"description": description, "status": status, "tasks": tasks}


def ended_in(cluster: Cluster, job_id: int, status: str) -> None:
    wait_for(
        lambda: cluster.show(job_id)["status"] == status,
        timeout=60,
        what=f"job {job_id} to be {status}",
    )


def test_it_skips_a_failed_task_with_a_reason_and_the_job_resumes(cluster, web, page):
    cluster.start_worker(unique("skip-"))
    [job_id] = cluster.import_jobs(chain("Skip in the browser", fail="B"))
    ended_in(cluster, job_id, "error")
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/{job_id}/")
    line_b = page.locator("#task-rows tr.task-line", has_text="step B")
    assert line_b.locator(".status-error").count() == 1
    assert (
        page.locator("#task-rows tr.task-line", has_text="step A").locator("text=Skip…").count()
        == 0
    )
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    line_b.locator("text=Skip…").click()
    dialog = page.locator("#dialog")
    dialog.locator("text=The job resumes now, in a new run").wait_for()
    reason = dialog.locator("textarea[name=reason]")
    assert reason.get_attribute("required") is not None  # the browser asks for it first
    reason.fill("Posted by hand in the ledger")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "skip-dialog.png"))
    dialog.locator("button:has-text('Skip the task')").click()
    page.wait_for_selector("#job-status .status-ended", timeout=END)  # resumed and ended
    assert navigations == []  # live, no reload
    page.locator("#task-rows tr.task-line", has_text="step C").locator(".status-ended").wait_for(
        timeout=END
    )
    line_b.locator(".status-skipped").wait_for(timeout=END)  # the lines follow live
    page.locator("#job-audit", has_text="Posted by hand in the ledger").wait_for(timeout=END)
    # The header follows the end too: the job may be run again.
    page.locator("#job-header a:has-text('Run now…')").wait_for(timeout=END)
    page.screenshot(path=str(SHOTS / "skip-resumed.png"), full_page=True)

    shown = cluster.show(job_id)
    assert {t["key"]: t["status"] for t in shown["tasks"]} == {
        "A": "ended",
        "B": "skipped",
        "C": "ended",
    }
    assert (shown["runs"], shown["last_run"]["status"]) == (2, "ended")
    audit = json.loads(cluster.cli("audit", str(job_id), "--json").stdout)
    assert [(e["user"], e["action"], e["reason"]) for e in audit] == [
        ("", "job_import", ""),  # imported by the test, with no --user
        ("manager", "skip", "Posted by hand in the ledger"),
    ]
    page.click("text=Batch job history")
    page.locator("text=Resumed after a skip by manager").wait_for()
    assert page.locator(".skip-note", has_text="Skipped by manager").count() == 1


def test_it_reruns_from_a_task(cluster, web, page):
    cluster.start_worker(unique("from-"))
    [job_id] = cluster.import_jobs(chain("Rerun from B"))
    ended_in(cluster, job_id, "ended")
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/{job_id}/")
    page.locator("#task-rows tr.task-line", has_text="step B").locator(
        "text=Rerun from here…"
    ).click()
    dialog = page.locator("#dialog")
    dialog.locator("text=starts at once").wait_for()
    dialog.locator("button:has-text('Rerun from B')").click()
    page.wait_for_selector("#job-status .status-executing, #job-status .status-ended")
    page.wait_for_selector("#job-status .status-ended", timeout=END)
    shown = cluster.show(job_id)
    assert shown["runs"] == 2
    second = cluster.scalar(
        "SELECT string_agg(t.key, ',' ORDER BY t.key) FROM jobs_batchtaskrun r "
        "JOIN jobs_batchtask t ON t.id = r.task_id WHERE r.attempt > 0 AND r.job_run_id = "
        "(SELECT max(id) FROM jobs_batchjobrun WHERE job_id = %s)",
        job_id,
    )
    assert second == "B,C"  # A kept its result


def test_it_runs_now_with_a_parameter_override(cluster, web, page):
    cluster.start_worker(unique("now-"))
    [job_id] = cluster.import_jobs(chain("Run now, longer log", status="withhold"))
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/{job_id}/")
    page.click("text=Run now…")
    dialog = page.locator("#dialog")
    dialog.locator("summary", has_text="step C").click()
    field = dialog.locator("details", has_text="step C").locator("input[name$='-lines']")
    assert field.input_value() == "2"
    field.fill("5")
    page.screenshot(path=str(SHOTS / "run-now-dialog.png"))
    dialog.locator("button:has-text('Run now')").click()
    page.wait_for_selector("#job-status .status-ended", timeout=END)
    shown = cluster.show(job_id)
    assert {t["key"]: t["log_lines"] for t in shown["tasks"]} == {"A": 2, "B": 2, "C": 5}
    exported = json.loads(cluster.cli("export", str(job_id)).stdout)
    assert [t["parameters"] for t in exported["tasks"]] == [{"lines": 2}] * 3  # stored: as before
    page.click("text=Batch job history")
    page.locator("text=C.lines = 5").wait_for()


def test_a_viewer_sees_no_skip_control_and_a_post_is_refused(cluster, web, page):
    cluster.start_worker(unique("view-"))
    [job_id] = cluster.import_jobs(chain("Viewer looks", fail="B"))
    ended_in(cluster, job_id, "error")
    task_b = cluster.scalar("SELECT id FROM jobs_batchtask WHERE job_id = %s AND key = 'B'", job_id)
    sign_in(page, web, "viewer")
    page.goto(f"{web}/jobs/{job_id}/")
    page.locator("#task-rows tr.task-line").first.wait_for()
    assert page.locator("text=Skip…").count() == 0
    assert page.locator("text=Rerun from here…").count() == 0
    assert page.locator("text=Run now…").count() == 0
    page.goto(f"{web}/jobs/{job_id}/history/")
    assert page.locator("text=Skip…").count() == 0
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    headers = {"X-CSRFToken": csrf, "Referer": web}
    for path, form in (
        (f"/jobs/{job_id}/tasks/{task_b}/skip/", {"reason": "I should not"}),
        (f"/jobs/{job_id}/run-now/", {}),
        (f"/jobs/{job_id}/tasks/{task_b}/rerun-from/", {}),
    ):
        r = page.request.post(f"{web}{path}", form=form, headers=headers, max_redirects=0)
        assert r.status == 403, path
    assert cluster.show(job_id)["status"] == "error"
    audit = json.loads(cluster.cli("audit", str(job_id), "--json").stdout)
    assert [e["action"] for e in audit] == ["job_import"]  # nothing the viewer tried


def test_the_new_pages_and_dialogs_are_accessible_and_fit_a_phone(cluster, browser, web):
    """axe-core finds nothing serious on the audit page, the Skip and Run now dialogs, in
    light and dark; the audit page does not scroll sideways at phone width."""
    from tests.e2e.test_ui import PHONE, violations

    cluster.start_worker(unique("a11y-"))
    [job_id] = cluster.import_jobs(chain("Accessible actions", fail="B"))
    ended_in(cluster, job_id, "error")
    found: list[str] = []
    for scheme in ("light", "dark"):
        ctx = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme=scheme)
        page = ctx.new_page()
        sign_in(page, web, "manager")
        page.goto(f"{web}/audit/")
        found += [f"{scheme} audit: {v}" for v in violations(page)]
        page.goto(f"{web}/jobs/{job_id}/")
        page.locator("#job-audit table").wait_for()
        for opener, name in (("text=Skip…", "skip"), ("text=Run now…", "run now")):
            page.locator(opener).first.click()
            page.wait_for_selector("#dialog[open]")
            found += [f"{scheme} {name}: {v}" for v in violations(page)]
            page.keyboard.press("Escape")
            page.wait_for_selector("#dialog[open]", state="detached")
        ctx.close()
    assert found == []
    ctx = browser.new_context(viewport=PHONE)
    page = ctx.new_page()
    sign_in(page, web, "manager")
    for path in ("/audit/", f"/jobs/{job_id}/"):
        page.goto(web + path)
        page.wait_for_load_state("networkidle")
        width, room = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width <= room, f"{path} is {width} px wide on a {room} px screen"
    ctx.close()

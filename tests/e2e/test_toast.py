"""The toast: a page left open shows an alert within seconds of a job run ending.

The header polls /alerts/poll/ every 5 s, so the toast should follow the Notification row by at
most one interval plus a request; each test prints the latency it saw.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import time
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, unique

TOAST_TIMEOUT_MS = 30_000


def sign_in(page: Any, web: str, username: str) -> None:
    """Sign in and land wherever the app sends a signed-in user."""
    page.goto(f"{web}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pw")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/login/" not in url)
    page.wait_for_selector("#notify")


def failing_job(cluster: Cluster, description: str) -> int:
    [job_id] = cluster.import_jobs(
        {"description": description, "status": "withhold", "tasks": [
            {"key": "T1", "description": "Post invoices", "process": "demo.fail",
             "parameters": {"message": "Ledger is locked"}}]}
    )  # fmt: skip
    return job_id


def watch_navigation(page: Any) -> list[str]:
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    return navigations


def run_id(cluster: Cluster, job_id: int) -> int:
    return int(cluster.scalar("SELECT max(id) FROM jobs_batchjobrun WHERE job_id = %s", job_id))


def ended_at(cluster: Cluster, job_id: int) -> dt.datetime:
    value: dt.datetime = cluster.scalar(
        "SELECT ended_at FROM jobs_batchjobrun WHERE job_id = %s ORDER BY id DESC LIMIT 1", job_id
    )
    return value


@pytest.mark.skipif(
    importlib.util.find_spec("batchadmin.alerts.delivery") is None,
    reason="alert delivery (batchadmin/alerts/delivery.py) is not in place yet",
)
def test_it_toasts_on_an_open_page_when_a_job_run_ends_in_error(cluster, web, page):
    """The whole way: job ends -> outbox event -> delivery task -> Notification -> poll -> toast."""
    cluster.start_worker(unique("toast-"))
    job_id = failing_job(cluster, "Toast: invoice posting")
    cluster.manage("shell", "-c", f"""
from django.contrib.auth.models import User
from batchadmin.alerts.models import BatchJobAlert
BatchJobAlert.objects.create(job_id={job_id}, user=User.objects.get(username="viewer"), error=True, popup=True)
""")  # fmt: skip
    sign_in(page, web, "viewer")
    navigations = watch_navigation(page)
    cluster.cli("status", str(job_id), "waiting")

    toast = page.locator(".toast.toast-error", has_text="Toast: invoice posting")
    toast.wait_for(timeout=TOAST_TIMEOUT_MS)
    seen = dt.datetime.now(dt.UTC)
    latency = (seen - ended_at(cluster, job_id)).total_seconds()
    print(f"toast latency after the job run ended: {latency:.1f} s")
    assert navigations == []  # it came to the open page, no reload
    assert "Ledger is locked" in toast.inner_text()
    run = run_id(cluster, job_id)
    link = toast.locator("a.toast-title")
    assert link.get_attribute("href") == f"/jobs/{job_id}/history/{run}/"
    assert page.locator("#bell-count").inner_text().split()[0] == "1"
    # Opening it goes to the run and marks it read.
    link.click()
    page.wait_for_url(lambda url: url.endswith(f"#run-{run}"))  # the run in the job's history
    assert page.url.startswith(f"{web}/jobs/{job_id}/history/")
    read = "SELECT count(*) FROM alerts_notification n JOIN auth_user u ON u.id = n.user_id "
    read += "WHERE u.username = 'viewer' AND n.read_at IS NOT NULL"
    deadline = time.monotonic() + 30
    while not cluster.scalar(read) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.scalar(read) == 1


NOTIFY_SCRIPT = """
from django.contrib.auth.models import User
from batchadmin.alerts.models import AlertEvent, Notification
viewer = User.objects.get(username="viewer")
error = AlertEvent.objects.get(job_id={job_id}, kind="error")
ended, _ = AlertEvent.objects.get_or_create(
    key="e2e:ended:{job_id}",
    defaults=dict(job_id={job_id}, job_run_id=error.job_run_id, kind="ended",
                  details=dict(error.details, status="ended", failed_tasks=[])),
)
for event in (error, ended):
    Notification.objects.get_or_create(event=event, user=viewer, defaults=dict(popup=True))
"""


def test_it_toasts_a_new_notification_on_an_open_page(cluster, web, page):
    """The UI alone: a Notification row for a real run that ended, written directly."""
    cluster.start_worker(unique("toast-"))
    job_id = failing_job(cluster, "Toast: direct")
    cluster.cli("status", str(job_id), "waiting")
    assert cluster.wait(job_id) == "error"
    sign_in(page, web, "viewer")
    page.goto(f"{web}/jobs/")
    navigations = watch_navigation(page)

    cluster.manage("shell", "-c", NOTIFY_SCRIPT.format(job_id=job_id))
    written = time.monotonic()
    error = page.locator(".toast.toast-error", has_text="Toast: direct")
    error.wait_for(timeout=TOAST_TIMEOUT_MS)
    print(f"toast latency after the notification was written: {time.monotonic() - written:.1f} s")
    ended = page.locator(".toast.toast-ended", has_text="Toast: direct")
    assert ended.count() == 1
    assert navigations == []
    run = run_id(cluster, job_id)
    assert error.locator("a.toast-title").get_attribute("href") == f"/jobs/{job_id}/history/{run}/"
    assert "T1 Post invoices: " in error.inner_text()
    assert "Ledger is locked" in error.inner_text()
    assert page.locator("#bell-count").inner_text().split()[0] == "2"

    # Ended goes by itself after ~10 s; Error stays until closed.
    ended.wait_for(state="detached", timeout=TOAST_TIMEOUT_MS)
    assert error.count() == 1
    error.locator("[data-toast-close]").click()
    error.wait_for(state="detached", timeout=5_000)

    # Shown once: a reload brings no toast back; the bell keeps them until read.
    page.reload()
    page.wait_for_selector("#bell-count:not([hidden])")
    page.wait_for_timeout(1_000)
    assert page.locator(".toast").count() == 0
    # Mark read on the notifications page: the row and the bell's badge follow.
    page.goto(f"{web}/alerts/notifications/?show=unread")
    unread_rows = page.locator("#notification-list tr.unread")
    assert unread_rows.count() == 2
    unread_rows.first.locator("button:has-text('Mark read')").click()
    page.wait_for_function("document.querySelector('#bell-count').innerText.trim().startsWith('1')")
    # The badge (out-of-band) and the row are two swaps of one response: wait for both.
    page.wait_for_function("document.querySelectorAll('#notification-list tr.unread').length === 1")
    # Mark all read in the bell's panel.
    page.locator("#notify > summary").click()
    panel = page.locator("#notify-panel")
    panel.locator(".notify-item").first.wait_for()
    assert panel.locator(".notify-item.unread").count() == 1
    panel.locator("button:has-text('Mark all read')").click()
    page.wait_for_selector("#bell-count[hidden]", state="attached")
    assert panel.locator(".notify-item.unread").count() == 0
    assert page.locator("#notify").get_attribute("open") is not None  # the panel stays open
    page.keyboard.press("Escape")
    assert page.locator("#notify").get_attribute("open") is None

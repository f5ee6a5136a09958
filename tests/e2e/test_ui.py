"""The console as people use it (issue 17): a phone, the keyboard, dark mode, error pages, and
an accessibility check with axe-core, against gunicorn, a worker and beat in Chromium."""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.browser import sign_in
from tests.e2e.cluster import Cluster, free_port, unique

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1440, "height": 900}
# axe-core as the pinned axe-playwright-python ships it (requirements/dev.txt).
AXE = (importlib.resources.files("axe_playwright_python") / "axe.min.js").read_text()


@pytest.fixture(scope="module")
def ran_job(pg_cluster: Cluster, web: str) -> Iterator[int]:
    """A job of three tasks with a condition on two parents, run once: history to show."""
    worker = pg_cluster.start_worker(unique("ui-"))
    [job_id] = pg_cluster.import_jobs(
        {"description": "Nightly invoicing for the tour", "tasks": [
            {"key": "post", "description": "Post open invoices", "process": "demo.log",
             "parameters": {"lines": 3}},
            {"key": "settle", "description": "Settle payments", "process": "demo.noop"},
            {"key": "report", "description": "Invoice journal report", "process": "demo.noop",
             "condition_type": "any",
             "conditions": [{"task": "post", "status": "ended"},
                            {"task": "settle", "status": "ended"}]}]}
    )  # fmt: skip
    assert pg_cluster.wait(job_id) == "ended"
    yield job_id
    pg_cluster.stop(worker)


def context(browser: Any, **options: Any) -> Any:
    return browser.new_context(**{"viewport": DESKTOP, **options})


def main_pages(job_id: int) -> list[str]:
    return ["/", "/jobs/", f"/jobs/{job_id}/", f"/jobs/{job_id}/history/"]


def test_nothing_scrolls_sideways_on_a_phone_and_the_menu_holds_the_links(browser, web, ran_job):
    ctx = context(browser, viewport=PHONE)
    page = ctx.new_page()
    sign_in(page, web, "manager")
    for path in main_pages(ran_job):
        page.goto(web + path)
        page.wait_for_load_state("networkidle")
        width, room = page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width <= room, f"{path} is {width} px wide on a {room} px screen"
    # The links fold into the menu; the bell stays in the bar.
    assert page.locator("#notify summary").is_visible()
    assert not page.locator("text=Sign out").is_visible()
    page.click("[data-menu-toggle]")
    assert page.locator("text=Sign out").is_visible()
    assert page.locator("#site-nav >> text=Batch jobs").is_visible()
    page.keyboard.press("Escape")
    assert not page.locator("text=Sign out").is_visible()
    ctx.close()


def background(page: Any) -> int:
    """The sum of the page background's red, green and blue (0 black ... 765 white)."""
    rgb = page.evaluate("getComputedStyle(document.body).backgroundColor")
    return sum(int(n) for n in re.findall(r"\d+", rgb)[:3])


def test_the_dark_scheme_follows_the_browser_unless_the_user_chose(browser, web):
    for scheme, dark in (("dark", True), ("light", False)):
        ctx = context(browser, color_scheme=scheme)
        page = ctx.new_page()
        sign_in(page, web, "viewer")
        assert (background(page) < 150) is dark, scheme
        ctx.close()
    # The user's choice wins over the browser's.
    ctx = context(browser, color_scheme="dark")
    page = ctx.new_page()
    sign_in(page, web, "viewer")
    page.goto(f"{web}/account/settings/")
    page.check("input[name=theme][value=light]")
    page.click("button:has-text('Save')")
    page.wait_for_selector("html[data-theme=light]")
    assert background(page) > 600
    page.check("input[name=theme][value=auto]")
    page.click("button:has-text('Save')")
    page.wait_for_selector("html[data-theme=auto]")
    assert background(page) < 150
    ctx.close()


def test_a_task_is_added_with_the_keyboard_alone_and_focus_stays_on_its_line(cluster, web, page):
    [job_id] = cluster.import_jobs(
        {"description": "Keyboard only", "status": "withhold", "tasks": [
            {"key": "T1", "description": "First line", "process": "demo.noop"}]}
    )  # fmt: skip
    sign_in(page, web, "manager")
    page.goto(f"{web}/jobs/{job_id}/")
    focused = "document.activeElement"
    assert "Alt+N adds a task" in page.locator("#task-keys").inner_text().replace("\n", " ")
    page.keyboard.press("Alt+n")  # Ctrl+N never reaches a page in desktop Chrome
    page.wait_for_selector("#task-new-form")
    page.wait_for_function(f"{focused}.name === 'description'")
    page.keyboard.type("Keyed in")
    page.keyboard.press("Tab")
    page.keyboard.type("No operation")  # picks the process in the select
    page.wait_for_function(f"{focused}.value === 'demo.noop'")
    page.keyboard.press("Enter")
    page.wait_for_selector("#task-new-form", state="detached")
    page.wait_for_function(f"{focused}.matches('tr.task-line')")
    assert "Keyed in" in page.evaluate(f"{focused}.innerText")
    # Up to the first line, Enter edits it, Esc gives the focus back to it.
    page.keyboard.press("ArrowUp")
    first = page.evaluate(f"{focused}.id")
    assert "First line" in page.evaluate(f"{focused}.innerText")
    page.keyboard.press("Enter")
    page.wait_for_selector("tr.editing")
    page.wait_for_function(f"{focused}.name === 'description'")
    page.keyboard.press("Escape")
    page.wait_for_selector("tr.editing", state="detached")
    page.wait_for_function(f"{focused}.id === '{first}'")
    tasks = cluster.show(job_id)["tasks"]
    assert [t["description"] for t in tasks] == ["First line", "Keyed in"]


@pytest.fixture(scope="module")
def web_without_debug(pg_cluster: Cluster, web: str) -> str:
    """A second gunicorn on the same database, with DEBUG off as in production, and a user
    without a batch role."""
    pg_cluster.manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "u, _ = User.objects.get_or_create(username='nobody')\n"
        "u.set_password('nobody-pw'); u.save()",
    )
    return pg_cluster.start_web(free_port(), name="web-nodebug", env={"DEBUG": "0"})


def test_error_pages_are_the_apps_own_with_debug_off(browser, web_without_debug):
    web = web_without_debug
    ctx = context(browser)
    page = ctx.new_page()
    sign_in(page, web, "manager")
    for path in ("/jobs/999999/", "/no/such/page/"):
        response = page.goto(web + path)
        assert response is not None and response.status == 404
        assert page.locator("h1").inner_text() == "Nothing here"
        assert page.locator("header.topbar #site-nav").count() == 1  # the app's layout
    assert page.locator("link[rel=icon]").count() == 1
    ctx.close()
    # Someone without a batch role lands on a page that says what to do, not a bare 403.
    ctx = context(browser)
    page = ctx.new_page()
    page.goto(f"{web}/login/")
    page.fill("#id_username", "nobody")
    page.fill("#id_password", "nobody-pw")
    with page.expect_response(lambda r: r.url == f"{web}/") as landing:
        page.click("button[type=submit]")
    assert landing.value.status == 403
    assert page.locator("h1").inner_text() == "You have no batch role yet"
    assert "Ask a batch job manager for a role" in page.content()
    ctx.close()


def violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    page.evaluate(AXE)
    found = page.evaluate("axe.run(document, {resultTypes: ['violations']})")["violations"]
    return [
        f"{v['impact']} {v['id']}: {v['help']} at {v['nodes'][0]['target']}"
        for v in found
        if v["impact"] in ("serious", "critical")
    ]


def test_the_main_pages_have_no_serious_accessibility_violations(browser, web, ran_job):
    pages = [
        *main_pages(ran_job),
        "/jobs/new/",
        "/groups/",
        "/servers/",
        "/alerts/notifications/",
        "/account/settings/",
    ]
    found: list[str] = []
    for scheme in ("light", "dark"):
        ctx = context(browser, color_scheme=scheme)
        page = ctx.new_page()
        sign_in(page, web, "manager")
        for path in pages:
            page.goto(web + path)
            page.wait_for_load_state("networkidle")
            found += [f"{scheme} {path}: {v}" for v in violations(page)]
        # A dialog and the task editor, open.
        page.goto(f"{web}/jobs/{ran_job}/")
        page.click("a:has-text('Change status')")
        page.wait_for_selector("#dialog[open]")
        found += [f"{scheme} change status: {v}" for v in violations(page)]
        ctx.close()
    assert found == []

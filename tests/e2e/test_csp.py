"""The Content Security Policy in a real browser: the pages, htmx and the API docs run under it
and the browser refuses nothing (issue 13, item 6)."""

from __future__ import annotations

from typing import Any

from tests.e2e.browser import sign_in


def test_the_pages_work_under_the_content_security_policy(cluster, web, page):
    refused: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            refused.append(message.text)

    page.on("console", on_console)
    [job_id] = cluster.import_jobs(
        {"description": "Under the policy", "status": "withhold", "tasks": [
            {"key": "S", "description": "nap", "process": "demo.sleep", "parameters": {"seconds": 1}}]}
    )  # fmt: skip
    sign_in(page, web, "manager")
    # htmx runs, [filter] triggers included (evaluated with Function()): the bell's poll fires.
    with page.expect_response(lambda r: "/alerts/poll/" in r.url):
        page.goto(f"{web}/jobs/")
    for path in (
        f"/jobs/{job_id}/",
        "/groups/",
        "/servers/",
        "/alerts/notifications/",
        "/admin/",
        "/api/docs",
    ):
        response = page.goto(f"{web}{path}")
        assert response is not None and response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"]
        page.wait_for_load_state("networkidle")
    assert refused == []

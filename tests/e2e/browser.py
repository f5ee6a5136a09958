"""Helpers for the browser tests."""

from __future__ import annotations

from typing import Any


def sign_in(page: Any, web: str, username: str) -> None:
    page.goto(f"{web}/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", f"{username}-pw")
    page.click("button[type=submit]")
    page.wait_for_url(f"{web}/")  # the workspace

"""Helpers for the batch job form's tests (roles come from BaseTestCase: alice is a Batch job
manager, bob a Viewer, charlie has no role, dave a Batch user)."""

from __future__ import annotations

from django.contrib.auth.models import User

from batchadmin.jobs.models import BatchJob, BatchTask
from tests.base import BaseTestCase

HTMX = {"HX-Request": "true"}


def squash(html: str) -> str:
    """The HTML with every run of white space made one space, for asserting on sentences."""
    return " ".join(html.split())


class FormTestCase(BaseTestCase):
    def login(self, user: User) -> None:
        self.client.force_login(user)

    def htmx(self, target: str | None = None) -> dict[str, str]:
        return HTMX | ({"HX-Target": target} if target else {})

    def make_walkthrough(self, **overrides: object) -> tuple[BatchJob, dict[str, BatchTask]]:
        """The D365 walkthrough's seven tasks (tests/jobs/test_walkthrough.py)."""
        job = self.make_job(**{"description": "D365 walkthrough", **overrides})
        tasks = {
            key: self.make_task(job, key, position=n)
            for n, key in enumerate(["T1", "T2", "T3", "T4", "T5", "T6", "T7"], 1)
        }
        self.add_condition(tasks["T2"], tasks["T1"], "ended_or_error")
        self.add_condition(tasks["T3"], tasks["T2"], "ended")
        self.add_condition(tasks["T4"], tasks["T2"], "ended")
        self.add_condition(tasks["T5"], tasks["T2"], "error")
        self.add_condition(tasks["T6"], tasks["T3"], "error")
        self.add_condition(tasks["T7"], tasks["T3"], "ended")
        self.add_condition(tasks["T7"], tasks["T4"], "ended")
        return job, tasks

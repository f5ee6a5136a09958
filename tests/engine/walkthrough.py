"""The D365 walkthrough (batch-processing-overview) as a job, for the operator-action tests.

T1 ──ended or error──> T2 ──ended──> T3 ──ended──┐
                        │             └──error──> T6
                        ├──ended──> T4 ──ended──┴──> T7 (All: T3 and T4 Ended)
                        └──error──> T5
"""

from __future__ import annotations

from typing import Any

from batchadmin.jobs.models import BatchJob, BatchTask
from tests.base import BaseTestCase

KEYS = ["T1", "T2", "T3", "T4", "T5", "T6", "T7"]
FAIL = {"process": "demo.fail", "parameters": {"message": "went wrong"}}
EDGES = [
    ("T2", "T1", "ended_or_error"),
    ("T3", "T2", "ended"),
    ("T4", "T2", "ended"),
    ("T5", "T2", "error"),
    ("T6", "T3", "error"),
    ("T7", "T3", "ended"),
    ("T7", "T4", "ended"),
]


def make_walkthrough(
    case: BaseTestCase, *, overrides: dict[str, dict[str, Any]] | None = None, **job: Any
) -> tuple[BatchJob, dict[str, BatchTask]]:
    overrides = overrides or {}
    made = case.make_job(description="D365 walkthrough", **job)
    tasks = {
        key: case.make_task(made, key, position=n, **overrides.get(key, {}))
        for n, key in enumerate(KEYS, 1)
    }
    for child, parent, expected in EDGES:
        case.add_condition(tasks[child], tasks[parent], expected)
    return made, tasks

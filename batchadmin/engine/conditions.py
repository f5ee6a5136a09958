"""D365 "Has conditions": when a dependent task may run, as pure tables.

A condition names a parent task and the status it must end in (Ended, Error, Ended or error);
a task's condition type says whether All of its conditions or Any one must hold. The engine
(transitions._release_dependents) and the explanations (explain.waiting_for_conditions) decide
with these two functions and nothing else, so the page never says what the engine would not do.
"""

from __future__ import annotations

from batchadmin.jobs.models import OPEN_TASK_STATUSES, BatchStatus, BatchTask, BatchTaskCondition

S = BatchStatus
Expected = BatchTaskCondition.ExpectedStatus


# A skipped task counts as Ended for its dependents (transitions.skip_task).
ENDED_LIKE = (S.ENDED, S.SKIPPED)


def condition_state(expected: str, parent_status: str) -> bool | None:
    """True: met. False: can never be met. None: not decided yet (parent still open)."""
    if parent_status in OPEN_TASK_STATUSES:
        return None
    if expected == Expected.ENDED:
        return parent_status in ENDED_LIKE
    if expected == Expected.ERROR:
        return parent_status == S.ERROR
    return parent_status in (*ENDED_LIKE, S.ERROR)  # Ended or error


def decide(condition_type: str, states: list[bool | None]) -> BatchStatus | None:
    """Ready, Didn't run, or None (keep waiting) for a task with these condition states."""
    if condition_type == BatchTask.ConditionType.ANY:
        if any(s is True for s in states):
            return S.READY
        if all(s is False for s in states):
            return S.NOT_RUN
        return None
    if any(s is False for s in states):
        return S.NOT_RUN
    if all(s is True for s in states):
        return S.READY
    return None

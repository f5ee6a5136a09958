from __future__ import annotations

from django.test import SimpleTestCase

from batchadmin.engine.conditions import condition_state, decide
from batchadmin.jobs.models import BatchStatus, BatchTask

S = BatchStatus
ALL, ANY = BatchTask.ConditionType.ALL, BatchTask.ConditionType.ANY
ENDED, ERROR, ENDED_OR_ERROR = "ended", "error", "ended_or_error"
OPEN = (S.WAITING, S.READY, S.EXECUTING, S.CANCELING)


class ConditionTablesTestCase(SimpleTestCase):
    """condition_state() and decide(): when a dependent task runs (D365 "Has conditions")."""

    def test_it_keeps_a_condition_open_while_its_parent_is_open(self):
        for expected in (ENDED, ERROR, ENDED_OR_ERROR):
            for parent in OPEN:
                assert condition_state(expected, parent) is None, (expected, parent)

    def test_it_decides_a_condition_by_the_parent_final_status(self):
        table = {
            # expected:      ended   error   not_run canceled
            ENDED: (True, False, False, False),
            ERROR: (False, True, False, False),
            ENDED_OR_ERROR: (True, True, False, False),
        }
        for expected, row in table.items():
            for parent, met in zip((S.ENDED, S.ERROR, S.NOT_RUN, S.CANCELED), row, strict=True):
                assert condition_state(expected, parent) is met, (expected, parent)

    def test_it_decides_a_single_condition_the_same_for_all_and_any(self):
        # (expected, parent status) -> the dependent's fate
        table = {
            (ENDED, S.ENDED): S.READY,
            (ENDED, S.ERROR): S.NOT_RUN,
            (ENDED, S.NOT_RUN): S.NOT_RUN,
            (ENDED, S.EXECUTING): None,
            (ERROR, S.ENDED): S.NOT_RUN,
            (ERROR, S.ERROR): S.READY,
            (ERROR, S.NOT_RUN): S.NOT_RUN,
            (ERROR, S.READY): None,
            (ENDED_OR_ERROR, S.ENDED): S.READY,
            (ENDED_OR_ERROR, S.ERROR): S.READY,
            (ENDED_OR_ERROR, S.NOT_RUN): S.NOT_RUN,
            (ENDED_OR_ERROR, S.CANCELED): S.NOT_RUN,
            (ENDED_OR_ERROR, S.WAITING): None,
        }
        for ctype in (ALL, ANY):
            for (expected, parent), fate in table.items():
                assert decide(ctype, [condition_state(expected, parent)]) == fate, (
                    ctype,
                    expected,
                    parent,
                )

    def test_it_needs_every_condition_for_all(self):
        table = {
            (True, True): S.READY,
            (True, None): None,
            (None, None): None,
            (True, False): S.NOT_RUN,
            (None, False): S.NOT_RUN,  # one condition can't hold any more: no need to wait
            (False, False): S.NOT_RUN,
        }
        for states, fate in table.items():
            assert decide(ALL, list(states)) == fate, states

    def test_it_needs_one_condition_for_any(self):
        table = {
            (True, True): S.READY,
            (True, None): S.READY,  # no need to wait for the other parent
            (True, False): S.READY,
            (None, None): None,
            (None, False): None,
            (False, False): S.NOT_RUN,
        }
        for states, fate in table.items():
            assert decide(ANY, list(states)) == fate, states

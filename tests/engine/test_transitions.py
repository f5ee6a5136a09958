from __future__ import annotations

import datetime as dt

import pytest
from django.conf import settings
from django.test import SimpleTestCase, override_settings
from django.utils.timezone import now

from batchadmin.engine import transitions
from batchadmin.engine.dispatch import NORMAL_STEP
from batchadmin.engine.transitions import (
    JOB_ALLOWED,
    TASK_ALLOWED,
    USER_MOVES,
    IllegalMove,
    Outcome,
)
from batchadmin.jobs.models import (
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTask,
    BatchTaskRun,
    StatusChange,
)
from tests.base import HOSTNAME, BaseTestCase, statuses

S = BatchStatus
ENDED = "ended"
FAILED = Outcome(error="RuntimeError: boom", traceback="Traceback ...")


class AllowedMovesTestCase(SimpleTestCase):
    """The legal moves, checked without the database."""

    def test_it_lists_every_status_in_both_tables(self):
        assert set(JOB_ALLOWED) == set(S)
        assert set(TASK_ALLOWED) == set(S)

    def test_it_offers_users_only_moves_the_engine_allows(self):
        for old, targets in USER_MOVES.items():
            for new in targets:
                assert new in JOB_ALLOWED[old], (old, new)

    def test_it_offers_users_no_move_out_of_canceling(self):
        assert USER_MOVES.get(S.CANCELING, ()) == ()

    def test_it_lets_a_user_cancel_only_an_executing_job(self):
        assert [old for old, targets in USER_MOVES.items() if S.CANCELING in targets] == [
            S.EXECUTING
        ]

    def test_it_lets_terminal_jobs_only_run_again_or_be_withheld(self):
        for old in transitions.TERMINAL_JOB_STATUSES:
            # Executing: a manual run (Run now, Rerun, a skip that resumes the job).
            assert JOB_ALLOWED[old] == {S.WAITING, S.WITHHOLD, S.EXECUTING}, old
            assert set(USER_MOVES[old]) == {S.WAITING, S.WITHHOLD}, old

    def test_it_ends_canceling_only_as_canceled(self):
        assert JOB_ALLOWED[S.CANCELING] == {S.CANCELED}

    def test_it_never_gives_a_job_a_task_only_status(self):
        targets = set().union(*JOB_ALLOWED.values())
        assert S.READY not in targets
        assert S.NOT_RUN not in targets
        assert S.SKIPPED not in targets
        assert JOB_ALLOWED[S.READY] == JOB_ALLOWED[S.NOT_RUN] == frozenset()
        assert JOB_ALLOWED[S.SKIPPED] == frozenset()

    def test_it_moves_terminal_tasks_only_back_to_waiting(self):
        for old in (S.ENDED, S.NOT_RUN, S.SKIPPED, S.CANCELED):
            assert TASK_ALLOWED[old] == {S.WAITING}, old
        assert TASK_ALLOWED[S.ERROR] == {S.WAITING, S.SKIPPED}  # an operator skips a failure

    def test_it_lets_operators_skip_only_failed_and_unstarted_tasks(self):
        skippable = {old for old, targets in TASK_ALLOWED.items() if S.SKIPPED in targets}
        assert skippable == set(transitions.SKIPPABLE_TASK_STATUSES)

    def test_it_never_withholds_a_task(self):
        assert S.WITHHOLD not in set().union(*TASK_ALLOWED.values())
        assert TASK_ALLOWED[S.WITHHOLD] == frozenset()

    def test_it_lets_a_failed_attempt_go_back_to_ready(self):
        assert S.READY in TASK_ALLOWED[S.EXECUTING]

    @override_settings(BATCH_RETRY_BACKOFF_SECONDS=5, BATCH_RETRY_BACKOFF_MAX_SECONDS=300)
    def test_it_doubles_the_backoff_up_to_the_cap(self):
        seconds = [transitions.backoff(n).total_seconds() for n in range(1, 9)]
        assert seconds == [5, 10, 20, 40, 80, 160, 300, 300]


class StartJobTestCase(BaseTestCase):
    def test_it_starts_a_job_only_once_it_is_due(self):
        at = now()
        job = self.make_job(scheduled_start=at + dt.timedelta(minutes=5))
        self.make_task(job, "T1")
        assert not transitions.start_job(job_id=job.pk, at=at)
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert not job.runs.exists()

        assert transitions.start_job(job_id=job.pk, at=at + dt.timedelta(minutes=5))
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert job.started_at == at + dt.timedelta(minutes=5)

    def test_it_does_not_start_a_withheld_job(self):
        job = self.make_job(status=S.WITHHOLD)
        assert not transitions.start_job(job_id=job.pk)
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    def test_it_makes_the_root_tasks_ready(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        t1 = self.make_task(job, "T1")
        self.make_task(job, "T2")
        t3 = self.make_task(job, "T3")
        self.add_condition(t3, t1)
        assert transitions.start_job(job_id=job.pk, at=at)
        t1.refresh_from_db()
        assert t1.status == S.READY
        assert t1.ready_at == at
        assert t1.dispatched_at == at
        assert dict(job.tasks.values_list("key", "status")) == {
            "T1": S.READY,
            "T2": S.READY,
            "T3": S.WAITING,
        }

    def test_it_sends_the_root_tasks_to_their_queues_after_commit(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1")
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            assert transitions.start_job(job_id=job.pk)
            self.send.assert_not_called()  # not before the commit
        assert len(callbacks) == 1
        self.send.assert_called_once_with([(t1.pk, "batch.default", NORMAL_STEP)])

    def test_it_opens_a_run_as_the_run_as_user(self):
        at = now()
        job = self.make_job(scheduled_start=at - dt.timedelta(hours=1), run_as=self.bob)
        self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk, at=at)
        job.refresh_from_db()
        run = BatchJobRun.objects.get(job=job)
        assert job.current_run == run
        assert run.status == S.EXECUTING
        assert run.started_at == at
        assert run.scheduled_start == at - dt.timedelta(hours=1)
        assert run.run_by == self.bob

    def test_it_runs_as_the_creator_when_no_run_as_user_is_set(self):
        job = self.make_job(created_by=self.alice)
        self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk)
        assert BatchJobRun.objects.get(job=job).run_by == self.alice

    def test_it_records_the_status_change(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk, at=at)
        change = StatusChange.objects.get(job=job)
        assert (change.old_status, change.new_status) == (S.WAITING, S.EXECUTING)
        assert change.job_run == BatchJobRun.objects.get(job=job)
        assert change.at == at

    def test_it_starts_a_job_once(self):
        job = self.make_job()
        self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk)
        assert not transitions.start_job(job_id=job.pk)
        assert job.runs.count() == 1
        assert StatusChange.objects.filter(job=job).count() == 1

    def test_it_ends_a_job_without_tasks_at_once(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        assert transitions.start_job(job_id=job.pk, at=at)
        job.refresh_from_db()
        assert job.status == S.ENDED
        assert job.ended_at == at
        assert BatchJobRun.objects.get(job=job).status == S.ENDED
        assert list(
            StatusChange.objects.filter(job=job).values_list("old_status", "new_status")
        ) == [
            (S.WAITING, S.EXECUTING),
            (S.EXECUTING, S.ENDED),
        ]


class ClaimTaskTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.job = self.make_job()
        self.task = self.make_task(self.job, "T1")
        assert transitions.start_job(job_id=self.job.pk)

    def claim(self, at: dt.datetime | None = None) -> transitions.Claim | None:
        return transitions.claim_task(
            task_id=self.task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=at
        )

    def test_it_claims_a_ready_task_for_a_server(self):
        at = now()
        task_run = self.claim(at)
        assert task_run is not None
        assert task_run.attempt == 1
        assert task_run.job_run_id == BatchJobRun.objects.get(job=self.job).pk
        row = BatchTaskRun.objects.get(pk=task_run.pk)
        assert (row.status, row.server, row.attempt) == (S.EXECUTING, self.server, 1)
        self.task.refresh_from_db()
        assert self.task.status == S.EXECUTING
        assert self.task.attempt == 1
        assert self.task.server == self.server
        assert self.task.hostname == HOSTNAME
        assert self.task.started_at == at
        assert self.task.lease_expires_at == at + dt.timedelta(seconds=settings.BATCH_LEASE_SECONDS)

    def test_it_lets_only_the_first_of_two_claims_win(self):
        assert self.claim() is not None
        assert self.claim() is None  # a duplicate delivery of the message
        assert BatchTaskRun.objects.filter(task=self.task).count() == 1

    def test_it_does_not_claim_a_waiting_task(self):
        waiting = self.make_task(self.job, "T2")
        self.add_condition(waiting, self.task)
        assert transitions.claim_task(task_id=waiting.pk, server_id=None, hostname=HOSTNAME) is None

    def test_it_does_not_claim_a_task_before_its_backoff_is_over(self):
        at = now()
        BatchTask.objects.filter(pk=self.task.pk).update(ready_at=at + dt.timedelta(seconds=5))
        assert self.claim(at) is None
        assert self.claim(at + dt.timedelta(seconds=5)) is not None


class FinishTaskTestCase(BaseTestCase):
    def start_and_claim(self, task: BatchTask, at: dt.datetime | None = None) -> BatchTaskRun:
        if task.job.status == S.WAITING:
            assert transitions.start_job(job_id=task.job_id, at=at)
            task.job.refresh_from_db()
        claim = transitions.claim_task(
            task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME, at=at
        )
        assert claim is not None
        return BatchTaskRun.objects.get(pk=claim.pk)

    def test_it_ends_a_task_that_succeeded_and_releases_its_dependents(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1")
        t2 = self.make_task(job, "T2")
        self.add_condition(t2, t1)
        task_run = self.start_and_claim(t1)
        with self.captureOnCommitCallbacks(execute=True):
            assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=Outcome())
        self.send.assert_called_once_with([(t2.pk, "batch.default", NORMAL_STEP)])
        assert statuses(job) == {"T1": S.ENDED, "T2": S.READY}
        task_run.refresh_from_db()
        assert task_run.status == S.ENDED
        assert task_run.ended_at is not None
        job.refresh_from_db()
        assert job.status == S.EXECUTING

    def test_it_ends_the_job_when_the_last_task_ends(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        t1 = self.make_task(job, "T1")
        self.start_and_claim(t1, at)
        end = at + dt.timedelta(seconds=3)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=Outcome(), at=end)
        job.refresh_from_db()
        assert job.status == S.ENDED
        assert job.ended_at == end
        run = BatchJobRun.objects.get(job=job)
        assert (run.status, run.ended_at) == (S.ENDED, end)
        assert StatusChange.objects.filter(job=job).values_list("new_status", flat=True).last() == (
            S.ENDED
        )

    def test_it_fails_a_task_without_retries_left(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1")
        t2 = self.make_task(job, "T2")
        self.add_condition(t2, t1, ENDED)
        task_run = self.start_and_claim(t1)
        log = [BatchLogEntry(task_run=task_run, level=BatchLogEntry.Level.ERROR, message="boom")]
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED, log=log)
        assert statuses(job) == {"T1": S.ERROR, "T2": S.NOT_RUN}
        task_run.refresh_from_db()
        assert task_run.status == S.ERROR
        assert task_run.error_message == "RuntimeError: boom"
        assert task_run.traceback == "Traceback ..."
        assert list(task_run.log_entries.values_list("message", flat=True)) == ["boom"]
        job.refresh_from_db()
        assert job.status == S.ERROR

    def test_it_schedules_a_retry_after_a_backoff(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        t1 = self.make_task(job, "T1", max_retries=2)
        first = self.start_and_claim(t1, at)
        end = at + dt.timedelta(seconds=1)
        with self.captureOnCommitCallbacks(execute=True):
            assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED, at=end)
        self.send.assert_not_called()  # the tick sends the message once the backoff is over
        t1.refresh_from_db()
        assert t1.status == S.READY
        assert t1.retries == 1
        assert t1.dispatched_at is None
        assert t1.lease_expires_at is None
        assert t1.ready_at == end + transitions.backoff(1)
        assert t1.ready_at > end
        first.refresh_from_db()
        assert first.status == S.ERROR  # the attempt failed even though the task goes on
        job.refresh_from_db()
        assert job.status == S.EXECUTING

        assert transitions.claim_task(task_id=t1.pk, server_id=None, hostname="", at=end) is None
        second = transitions.claim_task(task_id=t1.pk, server_id=None, hostname="", at=t1.ready_at)
        assert second is not None
        assert second.attempt == 2

    def test_it_fails_the_task_when_the_retries_are_used_up(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        t1 = self.make_task(job, "T1", max_retries=1)
        self.start_and_claim(t1, at)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED, at=at)
        t1.refresh_from_db()
        self.start_and_claim(t1, t1.ready_at)
        assert transitions.finish_task(task_id=t1.pk, attempt=2, outcome=FAILED, at=t1.ready_at)
        t1.refresh_from_db()
        assert (t1.status, t1.retries) == (S.ERROR, 1)
        assert list(t1.runs.values_list("attempt", "status")) == [(1, S.ERROR), (2, S.ERROR)]
        job.refresh_from_db()
        assert job.status == S.ERROR

    def test_it_does_not_retry_an_outcome_that_cannot_be_fixed_by_retrying(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1", max_retries=5)
        self.start_and_claim(t1)
        outcome = Outcome(error="UnknownProcess: gone", retryable=False)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=outcome)
        t1.refresh_from_db()
        assert (t1.status, t1.retries) == (S.ERROR, 0)

    def test_it_ends_the_job_when_the_failed_task_ignores_failure(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1", ignore_failure=True)
        self.start_and_claim(t1)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED)
        t1.refresh_from_db()
        assert t1.status == S.ERROR
        job.refresh_from_db()
        assert job.status == S.ENDED

    def test_it_discards_a_stale_attempt(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1", max_retries=1)
        self.start_and_claim(t1)
        assert not transitions.finish_task(task_id=t1.pk, attempt=2, outcome=Outcome())
        t1.refresh_from_db()
        assert t1.status == S.EXECUTING

    def test_it_discards_a_second_result_of_the_same_attempt(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1", max_retries=1)
        self.start_and_claim(t1)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED)
        assert not transitions.finish_task(task_id=t1.pk, attempt=1, outcome=Outcome())
        t1.refresh_from_db()
        assert (t1.status, t1.retries) == (S.READY, 1)

    def test_it_gives_tasks_that_never_ran_a_history_row(self):
        job = self.make_job()
        t1 = self.make_task(job, "T1", process="demo.fail")
        t2 = self.make_task(job, "T2")
        self.add_condition(t2, t1, ENDED)
        self.start_and_claim(t1)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED)
        history = BatchTaskRun.objects.get(task=t2)
        assert (history.attempt, history.status) == (0, S.NOT_RUN)
        assert history.job_run_id == BatchJobRun.objects.get(job=job).pk


class CancelJobTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.job = self.make_job()
        self.t1 = self.make_task(self.job, "T1")  # will be executing
        self.t2 = self.make_task(self.job, "T2")  # ready
        self.t3 = self.make_task(self.job, "T3")  # waiting for T1
        self.add_condition(self.t3, self.t1)
        assert transitions.start_job(job_id=self.job.pk)
        self.task_run = transitions.claim_task(
            task_id=self.t1.pk, server_id=self.server.pk, hostname=HOSTNAME
        )
        assert self.task_run is not None

    def test_it_asks_running_tasks_to_stop_and_skips_the_others(self):
        assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)
        assert statuses(self.job) == {"T1": S.CANCELING, "T2": S.NOT_RUN, "T3": S.NOT_RUN}
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELING
        assert self.job.canceled_by == self.alice
        run = BatchJobRun.objects.get(job=self.job)
        assert run.canceled_by == self.alice
        assert run.status == S.EXECUTING  # not over until T1 stops
        change = StatusChange.objects.filter(job=self.job).last()
        assert change is not None
        assert (change.old_status, change.new_status, change.by) == (
            S.EXECUTING,
            S.CANCELING,
            self.alice,
        )

    def test_it_cancels_the_job_when_the_last_running_task_stops(self):
        assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)
        assert transitions.finish_task(
            task_id=self.t1.pk, attempt=1, outcome=Outcome(canceled=True)
        )
        assert statuses(self.job)["T1"] == S.CANCELED
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELED
        assert BatchJobRun.objects.get(job=self.job).status == S.CANCELED
        changes = StatusChange.objects.filter(job=self.job).values_list("new_status", flat=True)
        assert changes.last() == S.CANCELED

    def test_it_keeps_the_result_of_a_task_that_finished_before_it_noticed(self):
        assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)
        assert transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=Outcome())
        assert statuses(self.job)["T1"] == S.ENDED
        assert statuses(self.job)["T3"] == S.NOT_RUN  # canceled before T1 ended
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELED

    def test_it_does_not_retry_a_task_that_fails_while_canceling(self):
        BatchTask.objects.filter(pk=self.t1.pk).update(max_retries=3)
        assert transitions.cancel_job(job_id=self.job.pk, by_id=None)
        assert transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=FAILED)
        self.t1.refresh_from_db()
        assert (self.t1.status, self.t1.retries) == (S.ERROR, 0)
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELED

    def test_it_skips_a_task_waiting_for_its_retry(self):
        BatchTask.objects.filter(pk=self.t1.pk).update(max_retries=3)
        assert transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=FAILED)
        assert transitions.claim_task(task_id=self.t2.pk, server_id=None, hostname="")
        assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)
        assert statuses(self.job) == {"T1": S.NOT_RUN, "T2": S.CANCELING, "T3": S.NOT_RUN}
        self.t1.refresh_from_db()
        assert self.t1.ready_at is None  # the tick must not send it any more

    def test_it_cancels_a_job_with_nothing_running_at_once(self):
        assert transitions.finish_task(task_id=self.t1.pk, attempt=1, outcome=Outcome())
        BatchTask.objects.filter(pk=self.t3.pk).update(status=S.READY)
        assert transitions.cancel_job(job_id=self.job.pk, by_id=self.alice.pk)
        assert statuses(self.job) == {"T1": S.ENDED, "T2": S.NOT_RUN, "T3": S.NOT_RUN}
        self.job.refresh_from_db()
        assert self.job.status == S.CANCELED

    def test_it_does_not_cancel_a_job_that_is_not_executing(self):
        job = self.make_job()
        assert not transitions.cancel_job(job_id=job.pk, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.WAITING


class ChangeStatusTestCase(BaseTestCase):
    def test_it_refuses_moves_the_dialog_does_not_offer(self):
        illegal = {
            S.WITHHOLD: [S.WITHHOLD, S.CANCELING],
            S.WAITING: [S.WAITING, S.CANCELING],
            S.EXECUTING: [S.WAITING, S.WITHHOLD],
            S.CANCELING: [S.WAITING, S.WITHHOLD, S.CANCELING],
            S.ENDED: [S.CANCELING],
            S.ERROR: [S.CANCELING],
            S.CANCELED: [S.CANCELING],
        }
        for old, targets in illegal.items():
            job = self.make_job(status=old)
            for to in targets:
                with pytest.raises(IllegalMove):
                    transitions.change_status(job_id=job.pk, to=to, by_id=self.alice.pk)
            job.refresh_from_db()
            assert job.status == old
        assert not StatusChange.objects.exists()

    def test_it_names_the_moves_that_are_allowed(self):
        job = self.make_job(status=S.WAITING)
        with pytest.raises(IllegalMove) as excinfo:
            transitions.change_status(job_id=job.pk, to=S.CANCELING, by_id=None)
        assert str(excinfo.value) == (
            "A job in status Waiting can't be changed to Canceling; allowed: Withhold."
        )

    def test_it_withholds_and_releases_a_job(self):
        job = self.make_job(status=S.WAITING)
        assert transitions.change_status(job_id=job.pk, to=S.WITHHOLD, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.WITHHOLD
        assert transitions.change_status(job_id=job.pk, to=S.WAITING, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.WAITING
        assert list(
            StatusChange.objects.filter(job=job).values_list("old_status", "new_status", "by")
        ) == [
            (S.WAITING, S.WITHHOLD, self.alice.pk),
            (S.WITHHOLD, S.WAITING, self.alice.pk),
        ]

    def test_it_cancels_an_executing_job(self):
        job = self.make_job()
        self.make_task(job, "T1")
        assert transitions.start_job(job_id=job.pk)
        assert transitions.change_status(job_id=job.pk, to=S.CANCELING, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.CANCELED  # nothing was running
        assert job.canceled_by == self.alice

    def test_it_runs_an_ended_job_again_from_scratch(self):
        at = now()
        job = self.make_job(scheduled_start=at)
        t1 = self.make_task(job, "T1", max_retries=1)
        t2 = self.make_task(job, "T2")
        self.add_condition(t2, t1)
        assert transitions.start_job(job_id=job.pk, at=at)
        assert transitions.claim_task(task_id=t1.pk, server_id=self.server.pk, hostname="h", at=at)
        assert transitions.finish_task(task_id=t1.pk, attempt=1, outcome=FAILED, at=at)
        t1.refresh_from_db()
        assert transitions.claim_task(task_id=t1.pk, server_id=None, hostname="", at=t1.ready_at)
        assert transitions.finish_task(task_id=t1.pk, attempt=2, outcome=Outcome(), at=t1.ready_at)
        assert transitions.claim_task(task_id=t2.pk, server_id=None, hostname="", at=t1.ready_at)
        assert transitions.finish_task(task_id=t2.pk, attempt=1, outcome=Outcome(), at=t1.ready_at)
        job.refresh_from_db()
        assert job.status == S.ENDED

        assert transitions.change_status(job_id=job.pk, to=S.WAITING, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.WAITING
        for task in BatchTask.objects.filter(job=job):
            assert task.status == S.WAITING
            assert (task.retries, task.attempt) == (0, 0)
            assert task.server is None
            assert task.hostname == ""
            assert [task.started_at, task.ended_at, task.ready_at, task.dispatched_at] == [None] * 4
            assert (task.lease_expires_at, task.progress) == (None, None)

        later = at + dt.timedelta(minutes=1)
        assert transitions.start_job(job_id=job.pk, at=later)
        assert statuses(job) == {"T1": S.READY, "T2": S.WAITING}
        assert job.runs.count() == 2
        task_run = transitions.claim_task(task_id=t1.pk, server_id=None, hostname="", at=later)
        assert task_run is not None
        assert task_run.attempt == 1  # actual retries were reset

    def test_it_resets_the_tasks_of_a_failed_job_that_is_withheld(self):
        job = self.make_job(status=S.ERROR)
        self.make_task(job, "T1", status=S.ERROR, retries=2)
        self.make_task(job, "T2", status=S.NOT_RUN)
        assert transitions.change_status(job_id=job.pk, to=S.WITHHOLD, by_id=self.bob.pk)
        assert statuses(job) == {"T1": S.WAITING, "T2": S.WAITING}
        assert list(job.tasks.values_list("retries", flat=True)) == [0, 0]

    def test_it_does_not_hold_a_job_the_engine_started_meanwhile(self):
        # The dialog offered Withhold while the job was Waiting; the tick started it since.
        job = self.make_job(status=S.EXECUTING)
        assert not transitions.hold_job(job_id=job.pk, by_id=self.alice.pk)
        job.refresh_from_db()
        assert job.status == S.EXECUTING
        assert not StatusChange.objects.exists()

"""Jobs that follow jobs: the settle queues the follower's run, the tick or the commit starts it."""

from __future__ import annotations

from django.db import IntegrityError, transaction
from django.test import override_settings
from django.utils.timezone import now

from batchadmin.engine import tick, transitions
from batchadmin.jobs import triggers
from batchadmin.jobs.models import (
    AfterStatus,
    BatchJob,
    BatchJobRun,
    BatchStatus,
    QueuedRun,
    StatusChange,
)
from tests.base import BaseTestCase, drain, start

S = BatchStatus


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class TriggerTestCase(BaseTestCase):
    def make_pair(self, status: str = AfterStatus.ENDED) -> tuple[BatchJob, BatchJob]:
        parent = self.make_job(description="Import orders")
        self.make_task(parent, "T1")
        follower = self.make_job(description="Post orders", after_job=parent, after_status=status)
        self.make_task(follower, "F1")
        return parent, follower

    def test_it_starts_the_follower_after_the_parent_ends(self):
        parent, follower = self.make_pair()
        start(parent)
        with self.captureOnCommitCallbacks(execute=True):
            drain(parent)
        follower.refresh_from_db()
        assert follower.status == S.EXECUTING
        run = BatchJobRun.objects.get(job=follower)
        assert run.trigger == BatchJobRun.Trigger.TRIGGERED
        assert run.note == f"After run {parent.current_run_id} of job {parent.pk} (Ended)"
        queued = QueuedRun.objects.get(job=follower)
        assert (queued.after_run_id, queued.run_id) == (parent.current_run_id, run.pk)
        drain(follower)
        assert follower.status == S.WAITING  # it waits for the next run of its parent
        last = StatusChange.objects.filter(job=follower).order_by("-pk").first()
        assert last is not None
        assert last.reason == f"Back to Waiting: it runs after the next run of job {parent.pk}"

    def test_it_does_not_start_the_follower_on_the_other_status(self):
        parent, follower = self.make_pair(AfterStatus.ERROR)
        start(parent)
        drain(parent)
        assert not QueuedRun.objects.exists()
        assert tick.handle_queued_runs(now()) == 0
        follower.refresh_from_db()
        assert follower.status == S.WAITING

    def test_it_starts_on_error_when_asked(self):
        parent, follower = self.make_pair(AfterStatus.ENDED_OR_ERROR)
        parent.tasks.update(process="demo.fail")
        start(parent)
        drain(parent)
        assert parent.status == S.ERROR
        assert tick.handle_queued_runs(now()) == 1
        follower.refresh_from_db()
        assert follower.status == S.EXECUTING

    def test_it_queues_one_run_per_parent_run_even_when_settled_twice(self):
        parent, follower = self.make_pair()
        start(parent)
        drain(parent)
        run_id = parent.current_run_id
        # A retried settle writes the same row again: the constraint keeps one.
        transitions._queue_followers(parent, run_id=run_id, final=S.ENDED, at=now())
        assert QueuedRun.objects.filter(job=follower).count() == 1
        with self.assertRaises(IntegrityError), transaction.atomic():
            QueuedRun.objects.create(job=follower, kind=QueuedRun.Kind.TRIGGER, after_run_id=run_id)

    def test_a_trigger_only_job_is_never_due_by_time(self):
        parent, follower = self.make_pair()
        assert follower.is_trigger_only()
        assert list(BatchJob.objects.due(follower.scheduled_start)) == [parent]
        assert follower.next_run is None

    def test_it_waits_while_the_follower_runs_then_starts_once(self):
        parent, follower = self.make_pair()
        assert transitions.run_job_now(job_id=follower.pk, by_id=None)
        start(parent)
        drain(parent)
        assert tick.handle_queued_runs(now()) == 0  # the follower is running
        drain(follower)
        assert follower.status == S.WAITING
        assert tick.handle_queued_runs(now()) == 1
        assert tick.handle_queued_runs(now()) == 0
        follower.refresh_from_db()
        assert follower.status == S.EXECUTING

    def test_a_held_follower_does_not_run(self):
        parent, follower = self.make_pair()
        BatchJob.objects.filter(pk=follower.pk).update(status=S.WITHHOLD)
        start(parent)
        drain(parent)
        assert tick.handle_queued_runs(now()) == 0
        queued = QueuedRun.objects.get(job=follower)
        assert queued.done_at is not None
        assert "the job was Withhold" in queued.note


class CycleTestCase(BaseTestCase):
    def test_it_refuses_a_cycle(self):
        a = self.make_job(description="A")
        b = self.make_job(description="B", after_job=a)
        c = self.make_job(description="C", after_job=b)
        with self.assertRaisesMessage(
            triggers.TriggerError,
            f"Job {a.pk} can't follow job {c.pk}: job {c.pk} already runs after job {a.pk}, "
            f"and the triggers would loop ({a.pk} → {c.pk} → {b.pk} → {a.pk}).",
        ):
            triggers.set_trigger(job_id=a.pk, after_id=c.pk)
        with self.assertRaisesMessage(triggers.TriggerError, "can't be triggered by itself"):
            triggers.set_trigger(job_id=a.pk, after_id=a.pk)
        a.refresh_from_db()
        assert a.after_job_id is None

    def test_it_sets_and_clears_a_trigger(self):
        a = self.make_job(description="A")
        b = self.make_job(description="B")
        assert triggers.set_trigger(job_id=b.pk, after_id=a.pk, status=AfterStatus.ERROR)
        assert not triggers.set_trigger(job_id=b.pk, after_id=a.pk, status=AfterStatus.ERROR)
        b.refresh_from_db()
        assert (b.after_job_id, b.after_status) == (a.pk, "error")
        assert triggers.set_trigger(job_id=b.pk, after_id=None)

    def test_it_names_a_missing_job(self):
        a = self.make_job(description="A")
        with self.assertRaisesMessage(triggers.TriggerError, "There is no batch job 999999"):
            triggers.check(a.pk, 999999)

    def test_it_finds_a_loop_among_file_keys(self):
        assert triggers.cycle_in({"a": None, "b": "a", "c": "b"}) is None
        assert triggers.cycle_in({"a": "c", "b": "a", "c": "b"}) == ["a", "c", "b", "a"]

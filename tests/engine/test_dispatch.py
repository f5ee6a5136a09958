"""Messages to the batch groups' queues, and the Celery tasks that receive them (no broker)."""

from __future__ import annotations

import contextlib
from unittest import mock

import redis
from django.conf import settings
from django.db import transaction
from django.test import SimpleTestCase, TestCase, override_settings
from kombu.exceptions import OperationalError

from batchadmin.celery import app
from batchadmin.engine import batches, dispatch, runner, tasks, tick, worker
from batchadmin.lib import broker


class SendTestCase(SimpleTestCase):
    def setUp(self):
        super().setUp()
        self.producer_or_acquire = self.enterContext(mock.patch.object(app, "producer_or_acquire"))
        self.send_task = self.enterContext(mock.patch.object(app, "send_task"))

    def test_it_sends_each_task_to_its_queue_over_one_connection(self):
        assert dispatch.send([(1, "batch.default"), (2, "batch.nightly", 2)]) == 2
        producer = self.producer_or_acquire.return_value.__enter__.return_value
        assert self.producer_or_acquire.call_count == 1
        # Without a priority step a message goes at Normal's.
        assert self.send_task.call_args_list == [
            mock.call(
                "batchadmin.run_batch_task",
                (1,),
                queue="batch.default",
                producer=producer,
                priority=6,
            ),
            mock.call(
                "batchadmin.run_batch_task",
                (2,),
                queue="batch.nightly",
                producer=producer,
                priority=2,
            ),
        ]

    def test_it_never_raises_when_the_broker_is_down(self):
        self.send_task.side_effect = [None, OperationalError("Connection refused")]
        with self.assertLogs("batchadmin.engine.dispatch", "ERROR") as logs:
            assert dispatch.send([(1, "batch.default"), (2, "batch.default")]) == 1
        assert "Could not send 1 of 2 task messages" in logs.output[0]


class SendOnCommitTestCase(TestCase):
    def test_it_sends_only_once_the_transaction_commits(self):
        with (
            mock.patch.object(dispatch, "send") as send,
            self.captureOnCommitCallbacks(execute=True) as callbacks,
        ):
            dispatch.send_on_commit([(7, "batch.default")])
            dispatch.send_on_commit([])  # nothing to send: no callback
            send.assert_not_called()
        assert len(callbacks) == 1
        send.assert_called_once_with([(7, "batch.default")])

    def test_a_gathered_block_sends_once_after_the_commit_without_what_rolled_back(self):
        with (
            mock.patch.object(dispatch, "send") as send,
            self.captureOnCommitCallbacks(execute=True),
        ):
            with dispatch.gathered():
                dispatch.send_on_commit([(1, "batch.default")])
                with contextlib.suppress(RuntimeError), transaction.atomic():
                    dispatch.send_on_commit([(2, "batch.default")])
                    raise RuntimeError("this part rolls back")
                dispatch.send_on_commit([(3, "batch.nightly", 2)])
            send.assert_not_called()
        send.assert_called_once_with([(1, "batch.default"), (3, "batch.nightly", 2)])

    def test_a_gathered_block_left_by_an_exception_sends_nothing(self):
        with (
            mock.patch.object(dispatch, "send") as send,
            self.captureOnCommitCallbacks(execute=True),
            contextlib.suppress(RuntimeError),
            dispatch.gathered(),
        ):
            dispatch.send_on_commit([(1, "batch.default")])
            raise RuntimeError("the batch fails")
        # Its callback stays registered here (no savepoint to roll back; in the tick the whole
        # transaction does): it only adds to the block's buffer, which nothing sends.
        send.assert_not_called()


class CeleryTasksTestCase(SimpleTestCase):
    def test_it_runs_a_batch_task_for_the_server_of_the_worker(self):
        with (
            mock.patch.object(worker, "server_id", return_value=3) as server_id,
            mock.patch.object(runner, "run_task") as run_task,
        ):
            # The request a worker builds for a message it received on node aos2@host1.
            tasks.run_batch_task.push_request(hostname="aos2@host1", id="msg-1")  # type: ignore[call-arg]  # celery-types lists no fields
            self.addCleanup(tasks.run_batch_task.pop_request)
            tasks.run_batch_task.run(42)
        server_id.assert_called_once_with("aos2@host1")
        # The message id is recorded on the attempt, to revoke it on an abort.
        run_task.assert_called_once_with(
            task_id=42, server_id=3, hostname="aos2@host1", celery_task_id="msg-1"
        )

    def test_it_ticks(self):
        with mock.patch.object(tick, "tick", return_value={"started": 1}) as ticked:
            assert tasks.tick() == {"started": 1}
        ticked.assert_called_once_with()


class FollowOnTestCase(TestCase):
    """A worker runs the task it releases on its own queue next, unless a message of a higher
    priority waits there."""

    def follow_on(self, *, empty: bool, fail: bool = False) -> tuple[list[int], mock.Mock]:
        """Task 42's finish releases 43 on its own queue and 50 on another; what runs here?"""
        ran: list[int] = []

        def run_task(**kw):
            ran.append(kw["task_id"])
            assert kw["celery_task_id"] == "msg-1"  # an abort kills this message's process
            if kw["task_id"] == 42:
                with self.captureOnCommitCallbacks(execute=True):  # the finish commits
                    dispatch.send_on_commit([(43, "batch.default", 6), (50, "batch.other")])
                if fail:
                    raise RuntimeError("the counters could not be written")

        self.enterContext(mock.patch.object(worker, "server_id", return_value=3))
        self.enterContext(mock.patch.object(runner, "run_task", side_effect=run_task))
        self.empty = self.enterContext(
            mock.patch.object(batches.WATCH, "empty", return_value=empty)
        )
        self.send = self.enterContext(mock.patch.object(dispatch, "send"))
        tasks.run_batch_task.push_request(  # type: ignore[call-arg]  # celery-types lists no fields
            hostname="aos2@host1", id="msg-1", delivery_info={"routing_key": "batch.default"}
        )
        self.addCleanup(tasks.run_batch_task.pop_request)
        tasks.run_batch_task.run(42)
        return ran, self.send

    def test_a_task_it_releases_on_its_own_queue_runs_next_in_this_process(self):
        ran, send = self.follow_on(empty=True)
        assert ran == [42, 43]
        send.assert_called_once_with([(50, "batch.other")])  # another queue: sent
        # Only messages served before the kept one's step (6) count, not those beside it.
        self.empty.assert_called_once_with("batch.default", before=6)

    def test_it_sends_the_release_when_a_message_of_a_higher_priority_waits(self):
        ran, send = self.follow_on(empty=False)
        assert ran == [42]
        send.assert_called_once_with([(43, "batch.default", 6), (50, "batch.other")])

    @override_settings(BATCH_FOLLOW_ON_SECONDS=0)
    def test_it_keeps_nothing_once_its_follow_on_time_is_over(self):
        ran, send = self.follow_on(empty=True)
        assert ran == [42]
        send.assert_called_once_with([(43, "batch.default", 6), (50, "batch.other")])

    def test_a_run_that_fails_after_its_finish_sends_what_it_kept(self):
        with self.assertRaises(RuntimeError):
            self.follow_on(empty=True, fail=True)
        assert self.send.call_args_list == [
            mock.call([(50, "batch.other")]),
            mock.call([(43, "batch.default", 6)]),  # kept, then sent as the run failed
        ]


class QueueWatchTestCase(SimpleTestCase):
    """What follow-on and batches read of a queue, on the run's own Redis."""

    def test_before_a_step_counts_only_the_messages_served_first(self):
        queue = "batch.watch-test"
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        keys = broker.queue_keys(queue)
        client.delete(*keys)
        self.addCleanup(client.delete, *keys)
        assert batches.WATCH.empty(queue)
        assert dispatch.send([(1, queue, 6)]) == 1  # one message waits at Normal's step
        assert not batches.WATCH.empty(queue)
        assert batches.WATCH.empty(queue, before=6)  # beside a Normal task: not ahead of it
        assert not batches.WATCH.empty(queue, before=7)  # ahead of a lower priority's
        assert broker.queue_keys(queue, before=1) == [queue]


@override_settings(BATCH_DISPATCH_MAX_TASKS=16)
class BatchedSendTestCase(SimpleTestCase):
    """Many tasks of one queue and step share messages (engine/batches.py)."""

    def setUp(self):
        super().setUp()
        self.enterContext(mock.patch.object(app, "producer_or_acquire"))
        self.send_task = self.enterContext(mock.patch.object(app, "send_task"))

    def messages(self) -> list[tuple[str, tuple[object, ...], str, int]]:
        return [
            (c.args[0], c.args[1], c.kwargs["queue"], c.kwargs["priority"])
            for c in self.send_task.call_args_list
        ]

    def test_few_tasks_go_one_to_a_message(self):
        assert batches.chunks(list(range(63))) == [[i] for i in range(63)]

    def test_many_go_together_but_in_no_fewer_than_spread_messages(self):
        assert batches.chunks(list(range(64))) == [[i, i + 1] for i in range(0, 64, 2)]
        big = batches.chunks(list(range(2000)))
        assert len(big) == 125 and {len(c) for c in big} == {16}
        assert [t for c in big for t in c] == list(range(2000))  # every task once, in order

    def test_each_queue_and_step_is_batched_on_its_own(self):
        tasks = [(i, "batch.default") for i in range(64)] + [(100, "batch.nightly", 2)]
        tasks += [(i, "batch.default", 2) for i in range(200, 210)]
        assert dispatch.send(tasks) == 75
        sent = self.messages()
        assert sent[0] == ("batchadmin.run_batch_tasks", ([0, 1],), "batch.default", 6)
        assert len(sent) == 32 + 1 + 10
        assert ("batchadmin.run_batch_task", (100,), "batch.nightly", 2) in sent
        assert ("batchadmin.run_batch_task", (200,), "batch.default", 2) in sent

    @override_settings(BATCH_DISPATCH_MAX_TASKS=1)
    def test_one_task_per_message_when_set_so(self):
        assert dispatch.send([(i, "batch.default") for i in range(100)]) == 100
        assert {name for name, *_ in self.messages()} == {"batchadmin.run_batch_task"}

    def test_a_batch_giving_back_sends_one_message_per_task(self):
        assert dispatch.send([(i, "batch.default") for i in range(100)], together=False) == 100
        assert len(self.messages()) == 100


class RunBatchTasksTestCase(SimpleTestCase):
    def run_tasks(self, ids: list[int], *, empty: list[bool]) -> tuple[list[int], mock.Mock]:
        ran: list[int] = []
        with (
            mock.patch.object(worker, "server_id", return_value=3),
            mock.patch.object(
                runner, "run_task", side_effect=lambda **kw: ran.append(kw["task_id"])
            ),
            mock.patch.object(batches.WATCH, "empty", side_effect=empty) as watched,
            mock.patch.object(dispatch, "send") as send,
        ):
            tasks.run_batch_tasks.push_request(  # type: ignore[call-arg]  # celery-types lists no fields
                hostname="aos2@host1",
                id="msg-2",
                delivery_info={"routing_key": "batch.default", "priority": 4},
            )
            self.addCleanup(tasks.run_batch_tasks.pop_request)
            tasks.run_batch_tasks.run(ids)
        assert watched.call_count == len(empty)
        return ran, send

    def test_it_runs_every_task_of_the_message_in_order(self):
        ran, send = self.run_tasks([5, 6, 7], empty=[False, False])
        assert ran == [5, 6, 7]
        send.assert_not_called()

    def test_once_the_queue_is_empty_it_gives_the_rest_back_and_goes_on(self):
        ran, send = self.run_tasks([5, 6, 7, 8], empty=[False, True])
        # Given back once, at the priority step it came with, one message each.
        send.assert_called_once_with(
            [(7, "batch.default", 4), (8, "batch.default", 4)], together=False
        )
        assert ran == [5, 6, 7, 8]  # claims decide who runs what

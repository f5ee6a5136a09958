"""Messages to the batch groups' queues, and the Celery tasks that receive them (no broker)."""

from __future__ import annotations

from unittest import mock

from django.test import SimpleTestCase, TestCase
from kombu.exceptions import OperationalError

from batchadmin.celery import app
from batchadmin.engine import dispatch, runner, tasks, tick, worker


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

from __future__ import annotations

from django.conf import settings
from django.test import SimpleTestCase

from batchadmin.lib import broker


class QueueSizeTestCase(SimpleTestCase):
    """Against the tests' own Redis db (tests/settings.py), as kombu writes messages there."""

    def test_it_counts_the_messages_waiting_in_a_queue(self):
        from kombu import Connection

        with Connection(settings.CELERY_BROKER_URL) as conn:
            queue = conn.SimpleQueue("batch.QueueSizeTest")
            try:
                # Messages of three priorities land in three of the queue's Redis lists.
                for step in (0, 4, 8):
                    queue.put({"n": step}, priority=step)
                assert broker.queue_length("batch.QueueSizeTest") == 3
            finally:
                queue.clear()
                queue.close()

    def test_it_counts_a_queue_the_broker_does_not_have_as_empty(self):
        assert broker.queue_length("batch.nightly-never-declared") == 0

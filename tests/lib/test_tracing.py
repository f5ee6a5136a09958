"""OpenTelemetry (optional): the engine's spans, and the trace context a message carries.

Offline: spans go to an in-memory exporter; the message is a real one, on the tests' Redis.
"""

from __future__ import annotations

import base64
import json
from typing import Any, ClassVar
from unittest import mock

import redis
from django.conf import settings
from django.utils.timezone import now
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from batchadmin.engine import tick
from batchadmin.engine.dispatch import send as real_send  # before BaseTestCase mocks it
from batchadmin.lib import broker, tracing
from tests.base import BaseTestCase, run


class TracingTestCase(BaseTestCase):
    provider: ClassVar[TracerProvider]
    exporter: ClassVar[InMemorySpanExporter]

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.exporter = InMemorySpanExporter()
        cls.provider = TracerProvider()
        cls.provider.add_span_processor(SimpleSpanProcessor(cls.exporter))

    def setUp(self) -> None:
        super().setUp()
        self.exporter.clear()
        # The global provider can be set once per process; the tests' own stands in for it.
        self.enterContext(mock.patch.object(tracing, "PROVIDER", self.provider))

    def spans(self) -> dict[str, Any]:
        return {s.name: s for s in self.exporter.get_finished_spans()}

    def test_the_tick_s_job_start_and_each_attempt_are_spans(self):
        job = self.make_job(scheduled_start=now())
        ok = self.make_task(job, "post")
        bad = self.make_task(
            job, "report", process="demo.fail", parameters={"message": "no printer"}
        )
        tick.handle_due_jobs(now())
        start = self.spans()["batchadmin.job.start"]
        assert dict(start.attributes) == {"batch.job_id": job.pk}
        assert start.parent is None  # the root of the run's trace
        run(ok)
        attempt = self.spans()["batchadmin.task.attempt"]
        assert dict(attempt.attributes) == {
            "batch.job_id": job.pk,
            "batch.task_id": ok.pk,
            "batch.task_key": "post",
            "batch.attempt": 1,
            "batch.process": "demo.noop",
            "batch.hostname": "aos1@test",
        }
        assert attempt.status.status_code == StatusCode.UNSET
        self.exporter.clear()
        run(bad)
        failed = self.spans()["batchadmin.task.attempt"]
        assert failed.status.status_code == StatusCode.ERROR
        assert failed.status.description == "DemoFailure: no printer"

    def test_a_message_sent_in_a_span_carries_its_trace_to_the_worker(self):
        queue = "batch.tracing-test"
        client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        keys = broker.queue_keys(queue)
        client.delete(*keys)
        self.addCleanup(client.delete, *keys)
        instrumentor: Any = CeleryInstrumentor  # untyped
        instrumentor().instrument(tracer_provider=self.provider)
        self.addCleanup(instrumentor().uninstrument)
        with tracing.span("batchadmin.job.start", job_id=1) as current:
            assert real_send([(12345, queue, 6)]) == 1
        trace_id = current.get_span_context().trace_id
        raw: Any = next(client.lpop(k) for k in keys if client.llen(k))
        message = json.loads(raw)
        traceparent = message["headers"]["traceparent"]
        assert traceparent.split("-")[1] == f"{trace_id:032x}"
        assert json.loads(base64.b64decode(message["body"]))[0] == [12345]
        publish = next(
            s for s in self.exporter.get_finished_spans() if s.name.startswith("apply_async")
        )
        assert publish.parent is not None
        assert publish.parent.span_id == current.get_span_context().span_id

    def test_without_a_provider_spans_cost_nothing_and_setup_does_nothing(self):
        with mock.patch.object(tracing, "trace", None):
            with tracing.span("batchadmin.job.start", job_id=1) as current:
                assert current is None
            assert tracing.setup("worker") is False
            assert tracing.recording() is False
        # Installed but not configured (no BATCH_OTEL, no provider of its own): off, and the
        # tick starts due jobs in batches (their messages carry no trace to keep apart).
        assert tracing.setup("worker") is False
        with mock.patch.object(tracing, "PROVIDER", None):
            assert tracing.recording() is False
        assert tracing.recording() is True  # this test case's provider

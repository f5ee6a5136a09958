"""OpenTelemetry, optional: one trace from the HTTP request or the tick through the job run,
its tasks and their attempts.

Nothing here needs the opentelemetry packages: without them ``span()`` is a no-op and
``setup()`` does nothing. With them, a process traces when either

- ``BATCH_OTEL=1`` and the SDK is installed: ``setup()`` makes a tracer provider that exports
  with OTLP (opentelemetry-exporter-otlp, configured by the usual OTEL_EXPORTER_OTLP_* and
  OTEL_SERVICE_NAME variables) or, without that package, to the console; or
- the process was started under ``opentelemetry-instrument`` (or configured its own provider):
  ``setup()`` leaves that provider alone and only instruments.

Then the web instruments Django (a span per request) and every Celery process instruments
Celery once it has forked (``worker_process_init``, as the Celery instrumentation asks), so a
"start this task" message carries the trace context from the span that sent it to the worker
that runs it. The engine adds its own spans (``batchadmin.job.start``, ``batchadmin.task.attempt``)
and the messages sent inside them chain one task's attempt to the next: tick (or request) ->
job start -> publish -> attempt -> publish of the tasks it released -> their attempts.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# The API module when the packages are installed, else None: tracing is off. Any, because the
# code must read the same whether or not they are (they are optional, not in base.txt).
trace: Any
try:
    from opentelemetry import trace
except ImportError:
    trace = None

TRACER = "batchadmin"
# The tracer provider of the engine's spans; None: OpenTelemetry's global one. (The global one
# can be set once per process, so tests put theirs here.)
PROVIDER: Any = None
_instrumented: set[str] = set()


def enabled() -> bool:
    return trace is not None


def recording() -> bool:
    """Whether spans go anywhere: a tracer provider was set (``setup()``, opentelemetry-instrument
    or a test's ``PROVIDER``), not only the API installed, whose default provider drops them."""
    if trace is None:
        return False
    if PROVIDER is not None:
        return True
    return not isinstance(
        trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    )


@contextmanager
def span(name: str, **attributes: Any) -> Iterator[Any]:
    """A span named ``name`` around the block (the current span's child), or nothing.

    Yields the span (or None) so the block can add attributes it learns on the way.
    """
    if trace is None:
        yield None
        return
    values = {f"batch.{k}": v for k, v in attributes.items() if v is not None}
    tracer = (PROVIDER or trace).get_tracer(TRACER)
    with tracer.start_as_current_span(name, attributes=values) as current:
        yield current


def failed(current: Any, message: str) -> None:
    """Mark ``current`` (from ``span()``) as failed with ``message``."""
    if trace is None or current is None:
        return
    from opentelemetry.trace import Status, StatusCode

    current.set_status(Status(StatusCode.ERROR, message[:300]))


def setup(process: str) -> bool:
    """Configure tracing for this process ("web", "worker" or "beat"); True when it traces."""
    if trace is None:
        return False
    configured = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    if not configured and os.environ.get("BATCH_OTEL", "") in ("1", "true", "yes", "on"):
        configured = _make_provider(process)
    if not configured:
        return False
    _instrument("django" if process == "web" else "celery")
    return True


def _make_provider(process: str) -> bool:
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning("BATCH_OTEL is set but opentelemetry-sdk is not installed: no tracing")
        return False
    exporter: SpanExporter
    try:
        otlp = importlib.import_module("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    except ImportError:
        log.warning("opentelemetry-exporter-otlp is not installed: spans go to the console")
        exporter = ConsoleSpanExporter()
    else:
        exporter = otlp.OTLPSpanExporter()
    name = os.environ.get("OTEL_SERVICE_NAME") or f"batchadmin-{process}"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return True


def _instrument(what: str) -> None:
    if what in _instrumented:
        return
    try:
        module = importlib.import_module(f"opentelemetry.instrumentation.{what}")
        instrumentor = module.DjangoInstrumentor if what == "django" else module.CeleryInstrumentor
        instrumentor().instrument()
    except ImportError:
        log.warning("opentelemetry-instrumentation-%s is not installed: not instrumented", what)
        return
    _instrumented.add(what)

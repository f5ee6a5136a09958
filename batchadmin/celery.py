from __future__ import annotations

import os

from celery import Celery
from celery.signals import beat_init, worker_process_init

from batchadmin.lib import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchadmin.settings")

app = Celery("batchadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# OpenTelemetry, when installed and configured (lib/tracing.py): in each pool process once it
# has forked, as the Celery instrumentation requires, and in beat, whose tick sends messages.
@worker_process_init.connect(weak=False)
def _trace_worker_process(**kwargs: object) -> None:
    tracing.setup("worker")


@beat_init.connect(weak=False)
def _trace_beat(**kwargs: object) -> None:
    tracing.setup("beat")

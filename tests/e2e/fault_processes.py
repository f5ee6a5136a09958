"""A batch process for the fault tests that writes down each time its body runs.

Loaded by the fault cluster's processes through BATCH_PROCESS_MODULES. ``e2e.mark`` sleeps like
demo.sleep and appends ``start`` and then ``done`` lines (task id, attempt, worker, pid) to the
file E2E_MARK_FILE names, so a test can tell from outside the engine how often a task's body
ran to its end. Appends of one short line with O_APPEND do not interleave between processes.
"""

from __future__ import annotations

import os
import time

from celery import current_task
from django import forms

from batchadmin.processes.registry import Context, register


class MarkForm(forms.Form):
    seconds = forms.FloatField(min_value=0, max_value=600, initial=1)
    poll_cancel = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Check ctx.cancel_requested() while sleeping, as demo.sleep does; off, the "
        "body does not touch the database at all.",
    )


def _mark(event: str, ctx: Context) -> None:
    # The Celery node name (server@host) of the worker running it; "" outside a worker.
    hostname = getattr(getattr(current_task, "request", None), "hostname", "") or ""
    line = f"{event} {ctx.task_id} {ctx.attempt} {hostname} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(os.environ["E2E_MARK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@register(
    "e2e.mark",
    label="Sleep and mark (tests)",
    description="Sleeps like demo.sleep; appends a line to E2E_MARK_FILE when it starts and ends.",
    form=MarkForm,
)
def mark(ctx: Context, *, seconds: float, poll_cancel: bool) -> None:
    _mark("start", ctx)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
        if poll_cancel and ctx.cancel_requested():
            _mark("stopped", ctx)
            return
    _mark("done", ctx)

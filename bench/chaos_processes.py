"""The batch process of the chaos soak (bench/chaos.py): it sleeps, fails when told to, and writes
down every execution of its body in a file outside the engine.

Loaded by the soak's workers through BATCH_PROCESS_MODULES. Each body appends ``start`` when it
begins and then one of ``done`` (it completed), ``fail`` (it raised, as planned) or ``stopped``
(it saw a cancel) to the file CHAOS_MARK_FILE names, one file per host. A line carries the task,
the engine's attempt row (BatchTaskRun id), the job run, the attempt number, the worker's node
name and pid, so the soak counts how often a body really ran without trusting the engine's own
records. Appends of one short line with O_APPEND do not interleave between processes.
"""

from __future__ import annotations

import os
import time

from celery import current_task
from django import forms

from batchadmin.processes.registry import Context, register

NAME = "chaos.work"


class WorkForm(forms.Form):
    seconds = forms.FloatField(min_value=0, max_value=600, initial=0.5)
    fail_attempts = forms.IntegerField(
        min_value=0,
        max_value=99,
        initial=0,
        help_text="Attempts 1..N raise after their sleep (a flaky task); 0 never fails.",
    )
    poll_cancel = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Check ctx.cancel_requested() while sleeping; off, a cancel has to abort it.",
    )


def mark_line(event: str, ctx: Context) -> str:
    # The attempt's row and its job run: a recurring job runs the same task ids again, with
    # attempts counted from 1 in every run. The runner's context carries the row it claimed.
    task_run = getattr(ctx, "task_run", None)
    run_id = getattr(task_run, "pk", 0) or 0
    job_run_id = getattr(task_run, "job_run_id", 0) or 0
    # The Celery node name (server@host) of the worker running it; "-" outside a worker.
    hostname = getattr(getattr(current_task, "request", None), "hostname", "") or "-"
    return (
        f"{event} {ctx.task_id} {run_id} {job_run_id} {ctx.attempt} {hostname} {os.getpid()}"
        f" {time.time():.3f}\n"
    )


def _mark(event: str, ctx: Context) -> None:
    fd = os.open(os.environ["CHAOS_MARK_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, mark_line(event, ctx).encode())
    finally:
        os.close(fd)


@register(
    NAME,
    label="Chaos soak work (bench)",
    description="Sleeps, fails on its first attempts when told to, and marks each execution "
    "in CHAOS_MARK_FILE.",
    form=WorkForm,
)
def work(ctx: Context, *, seconds: float, fail_attempts: int, poll_cancel: bool) -> None:
    _mark("start", ctx)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))
        if poll_cancel and ctx.cancel_requested():
            _mark("stopped", ctx)
            return
    if ctx.attempt <= fail_attempts:
        _mark("fail", ctx)
        raise RuntimeError(f"chaos: attempt {ctx.attempt} fails as planned")
    _mark("done", ctx)

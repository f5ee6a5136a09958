"""Processes for trying the engine out and for its tests: demo.noop / sleep / fail / flaky / log
/ hang / garbage."""

from __future__ import annotations

import time

from django import forms

from batchadmin.processes.registry import Context, register


class SleepForm(forms.Form):
    seconds = forms.FloatField(
        min_value=0, max_value=86400, initial=5, help_text="How long the task runs."
    )


class FailForm(forms.Form):
    message = forms.CharField(
        max_length=500,
        initial="Simulated failure",
        help_text="The error message raised.",
    )


class FlakyForm(forms.Form):
    failures = forms.IntegerField(
        min_value=0,
        max_value=10,
        initial=1,
        help_text="Attempts that fail before one succeeds.",
    )


class LogForm(forms.Form):
    lines = forms.IntegerField(
        min_value=0,
        max_value=100_000,
        initial=10,
        help_text="How many log lines to write.",
    )


class GarbageForm(forms.Form):
    lines = forms.IntegerField(min_value=0, max_value=100_000, initial=3)
    error_chars = forms.IntegerField(
        min_value=0,
        max_value=100_000_000,
        initial=100,
        help_text="Characters of the error it raises; 0: it ends without an error.",
    )


class DemoFailure(RuntimeError):
    pass


@register("demo.noop", label="No operation", description="Does nothing and ends at once.")
def noop(ctx: Context) -> None:
    pass


@register(
    "demo.sleep",
    label="Sleep",
    description="Waits the given number of seconds; stops early when the job is canceled.",
    form=SleepForm,
)
def sleep(ctx: Context, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        # Short naps so a cancel is noticed within a fraction of a second.
        time.sleep(min(left, 0.2))
        if ctx.cancel_requested():
            ctx.warning("Cancel requested; stopping early.")
            return


@register("demo.fail", label="Fail", description="Always raises an error.", form=FailForm)
def fail(ctx: Context, *, message: str) -> None:
    raise DemoFailure(message)


@register(
    "demo.flaky",
    label="Flaky",
    description="Raises on its first N attempts, then succeeds (try Maximum retries).",
    form=FlakyForm,
)
def flaky(ctx: Context, *, failures: int) -> None:
    if ctx.attempt <= failures:
        raise DemoFailure(f"Flaky failure on attempt {ctx.attempt} of {failures} planned.")
    ctx.info(f"Succeeded on attempt {ctx.attempt}.")


@register(
    "demo.log",
    label="Write log lines",
    description="Writes N lines to the task log.",
    form=LogForm,
)
def log(ctx: Context, *, lines: int) -> None:
    for n in range(1, lines + 1):
        ctx.info(f"Log line {n} of {lines}")


@register(
    "demo.hang",
    label="Hang",
    description="Test aid: sleeps forever and never checks for a cancel, like a hung process. "
    "Only an abort (after a cancel or its time limit) ends it.",
)
def hang(ctx: Context) -> None:
    while True:
        time.sleep(1)


@register(
    "demo.garbage",
    label="Write garbage",
    description="Test aid: logs lines and raises an error holding a NUL character and half a "
    "surrogate pair, as careless code may; the error can be made huge.",
    form=GarbageForm,
)
def garbage(ctx: Context, *, lines: int, error_chars: int) -> None:
    for n in range(1, lines + 1):
        ctx.info(f"Line {n}: a NUL \x00 and half a pair \ud800 here")
    if error_chars:
        head = "NUL \x00, half a pair \udc00: "
        raise DemoFailure(head + "x" * max(0, error_chars - len(head)))

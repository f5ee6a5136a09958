"""Issue 13, item 4: what a process writes is cleaned and cut before the finish stores it, so a
NUL character or a 50 MB error never fails the finish (runner.py, lib/text.py)."""

from __future__ import annotations

from typing import Any

from django.test import SimpleTestCase, override_settings

from batchadmin.jobs.models import BatchJobRun, BatchLogEntry, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.lib import text
from batchadmin.processes import registry
from tests.base import BaseTestCase, run, start

S = BatchStatus
FFFD = text.REPLACEMENT


class StorableTest(SimpleTestCase):
    def test_it_replaces_nul_and_lone_surrogates(self) -> None:
        assert text.storable("a\x00b\ud800c\udfffd", 0) == f"a{FFFD}b{FFFD}c{FFFD}d"

    def test_it_keeps_real_pairs_and_other_text(self) -> None:
        assert text.storable("Grüße 🎉 \t tab", 0) == "Grüße 🎉 \t tab"

    def test_parameters_refuse_what_cannot_be_stored(self) -> None:
        for value in ("half \ud800 a pair", "a NUL \x00"):
            with self.assertRaisesMessage(registry.ParameterError, "message: "):
                registry.get("demo.fail").clean_parameters({"message": value})

    def test_it_cuts_with_a_note(self) -> None:
        assert text.storable("x" * 25, 10) == "x" * 10 + "\n[... 15 more characters cut]"


class UnstorableOutputTest(BaseTestCase):
    def run_one(self, **parameters: Any) -> tuple[BatchTask, BatchTaskRun]:
        job = self.make_job(run_as=self.bob)
        task = self.make_task(job, "T1", process="demo.garbage", parameters=parameters)
        start(job)
        assert run(task)
        task.refresh_from_db()
        return task, BatchTaskRun.objects.get(task=task)

    def test_a_process_that_logs_and_raises_nul_settles_in_one_attempt(self) -> None:
        task, attempt = self.run_one(lines=3, error_chars=100)
        assert (task.status, task.retries, attempt.attempt) == (S.ERROR, 0, 1)
        assert attempt.status == S.ERROR
        assert attempt.error_message.startswith(f"DemoFailure: NUL {FFFD}, half a pair {FFFD}: ")
        assert "\x00" not in attempt.traceback
        messages = list(attempt.log_entries.values_list("message", flat=True))
        assert messages[:3] == [
            f"Line {n}: a NUL {FFFD} and half a pair {FFFD} here" for n in (1, 2, 3)
        ]
        assert messages[3] == attempt.error_message
        run_ = BatchJobRun.objects.get(job=task.job)
        assert run_.status == S.ERROR  # the job settled too

    def test_a_clean_run_with_nul_lines_ends(self) -> None:
        task, attempt = self.run_one(lines=2, error_chars=0)
        assert (task.status, attempt.status) == (S.ENDED, S.ENDED)
        assert attempt.log_entries.count() == 2

    @override_settings(BATCH_ERROR_MAX_CHARS=5_000, BATCH_TRACEBACK_MAX_CHARS=8_000)
    def test_a_huge_error_is_stored_once_and_cut(self) -> None:
        task, attempt = self.run_one(lines=0, error_chars=1_000_000)
        assert task.status == S.ERROR
        assert attempt.error_message.endswith("more characters cut]")
        assert len(attempt.error_message) < 5_100
        # Not again in the traceback, nor whole in the log.
        assert "[the error message: 1,000,000 characters]" in attempt.traceback
        assert len(attempt.traceback) < 8_100
        (line,) = attempt.log_entries.values_list("message", flat=True)
        assert len(line) < 1_100
        assert line.endswith("the attempt's error message has all of it]")

    @override_settings(BATCH_LOG_LINES_PER_ATTEMPT=250, BATCH_LOG_LINE_MAX_CHARS=40)
    def test_it_keeps_the_first_lines_and_notes_how_many_were_cut(self) -> None:
        task, attempt = self.run_one(lines=400, error_chars=100)
        entries = list(attempt.log_entries.order_by("pk").values_list("level", "message"))
        # 250 lines, the note, and the error (never cut).
        assert len(entries) == 252
        assert all(len(m) <= 40 + len("\n[... 999 more characters cut]") for _, m in entries[:250])
        assert (
            BatchLogEntry.Level.WARNING,
            "150 more log lines cut: an attempt keeps its first 250 (BATCH_LOG_LINES_PER_ATTEMPT).",
        ) in entries
        assert (
            entries[-1][0] == BatchLogEntry.Level.ERROR
            or entries[-2][0] == BatchLogEntry.Level.ERROR
        )

"""The command line of the operator actions: batch skip, rerun, run, audit; show's run and log
counts; wait --check. Each acting command checks --user's role as the pages do."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings

from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus
from tests.base import BaseTestCase, drain, start, statuses
from tests.engine.walkthrough import FAIL, make_walkthrough

S = BatchStatus


def batch(*args: Any) -> str:
    out = StringIO()
    call_command("batch", *[str(a) for a in args], stdout=out, stderr=StringIO())
    return out.getvalue()


def refused(*args: Any) -> str:
    with pytest.raises(CommandError) as excinfo:
        batch(*args)
    return str(excinfo.value)


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class OperatorCommandsTestCase(BaseTestCase):
    def failed_job(self) -> BatchJob:
        job, _ = make_walkthrough(self, overrides={"T2": FAIL})
        start(job)
        drain(job)
        assert job.status == S.ERROR
        return job

    def test_it_skips_a_task_and_the_job_resumes(self):
        job = self.failed_job()
        out = batch("skip", job.pk, "T2", "--reason", "posted by hand", "--user", "alice")
        assert out == "executing\n"
        assert statuses(job)["T2"] == S.SKIPPED
        drain(job)
        assert job.status == S.ENDED
        entry = AuditEntry.objects.get(job_id=job.pk)
        assert (entry.action, entry.username, entry.via, entry.reason) == (
            "skip",
            "alice",
            "cli",
            "posted by hand",
        )

    def test_it_reruns_from_a_task_or_the_failed_tasks(self):
        job = self.failed_job()
        assert batch("rerun", job.pk, "--failed", "--user", "alice") == "executing\n"
        drain(job)
        assert batch("rerun", job.pk, "--from", "T3", "--user", "alice") == "executing\n"
        drain(job)
        triggers = list(
            BatchJobRun.objects.filter(job=job).order_by("pk").values_list("trigger", flat=True)
        )
        assert triggers == ["scheduled", "rerun_failed", "rerun_from"]

    def test_it_runs_a_job_now_with_parameter_overrides(self):
        job = self.make_job(status=S.WITHHOLD)
        task = self.make_task(job, "LOG", process="demo.log", parameters={"lines": 2})
        out = batch("run", job.pk, "--param", "LOG.lines=3", "--user", "alice")
        assert out == "executing\n"
        drain(job)
        data = json.loads(batch("show", job.pk, "--json"))
        assert data["tasks"][0]["log_lines"] == 3
        assert (data["runs"], data["last_run"]["status"]) == (1, "ended")
        assert data["last_run"]["ended_at"] is not None
        task.refresh_from_db()
        assert task.parameters == {"lines": 2}

    def test_it_names_the_culprit_of_bad_input(self):
        job = self.failed_job()
        assert refused("skip", job.pk, "T9", "--reason", "x", "--user", "alice") == (
            f"Job {job.pk} has no task 'T9'; its tasks: T1, T2, T3, T4, T5, T6, T7."
        )
        assert "Task T1 is Ended" in refused(
            "skip", job.pk, "T1", "--reason", "x", "--user", "alice"
        )
        assert refused("skip", 99999, "T1", "--reason", "x", "--user", "alice") == (
            "There is no batch job 99999."
        )
        assert (
            refused("skip", job.pk, "T2", "--reason", "x", "--user", "zed") == "Unknown user 'zed'."
        )
        assert "write it as TASK_KEY.NAME=VALUE" in refused(
            "run", job.pk, "--param", "T2", "--user", "alice"
        )
        assert refused("run", job.pk, "--param", "T2.message=", "--user", "alice") == (
            "Nothing was changed. Task T2: message: This field is required."
        )
        assert (
            "give a reason"
            in refused("skip", job.pk, "T2", "--reason", " ", "--user", "alice").lower()
        )
        job.refresh_from_db()
        assert job.status == S.ERROR

    def test_it_requires_the_user_and_the_arguments(self):
        job = self.failed_job()
        for args in (("skip", job.pk, "T2", "--reason", "x"), ("rerun", job.pk, "--user", "alice")):
            with pytest.raises(CommandError):  # argparse, as call_command reports it
                batch(*args)

    def test_it_checks_the_users_role_as_the_pages_do(self):
        job = self.failed_job()
        # bob is a Viewer: he sees the job but may not act on it.
        assert refused("skip", job.pk, "T2", "--reason", "x", "--user", "bob") == (
            f"User bob may see batch job {job.pk} but not act on it (role: Viewer)."
        )
        assert "not act on it" in refused("run", job.pk, "--user", "bob")
        assert "not act on it" in refused("rerun", job.pk, "--failed", "--user", "bob")
        assert "not act on it" in refused("status", job.pk, "waiting", "--user", "bob")
        # dave is a Batch user: another user's job is not his to see.
        assert refused("skip", job.pk, "T2", "--reason", "x", "--user", "dave") == (
            f"User dave may not see batch job {job.pk} (role: Batch user)."
        )
        assert refused("audit", job.pk, "--json", "--user", "charlie") == (
            f"User charlie may not see batch job {job.pk} (no batch role)."
        )
        assert statuses(job)["T2"] == S.ERROR
        BatchJob.objects.filter(pk=job.pk).update(created_by=self.dave)
        assert batch("skip", job.pk, "T2", "--reason", "mine", "--user", "dave") == "executing\n"

    def test_it_prints_the_audit_trail_as_json(self):
        job = self.failed_job()
        batch("skip", job.pk, "T2", "--reason", "posted by hand", "--user", "alice")
        drain(job)
        batch("status", job.pk, "withhold", "--user", "alice")
        entries = json.loads(batch("audit", job.pk, "--json", "--user", "bob"))
        assert [(e["user"], e["action"], e["reason"]) for e in entries] == [
            ("alice", "skip", "posted by hand"),
            ("alice", "status", ""),
        ]
        assert {"at", "user", "action", "reason"} <= set(entries[0])
        assert entries[1]["changes"] == {"Status": ["Ended", "Withhold"]}
        assert "alice" in batch("audit", job.pk)

    def test_it_shows_a_skipped_task_as_skipped(self):
        job = self.failed_job()
        batch("skip", job.pk, "T2", "--reason", "x", "--user", "alice")
        drain(job)
        data = json.loads(batch("show", job.pk, "--json"))
        by_key = {t["key"]: t for t in data["tasks"]}
        assert by_key["T2"]["status"] == "skipped"
        assert data["runs"] == 2
        assert data["last_run"]["status"] == "ended"


class WaitCheckTestCase(BaseTestCase):
    def test_it_exits_2_when_the_job_did_not_end(self):
        job = self.make_job()
        self.make_task(job, "T1", process="demo.fail", parameters={"message": "no"})
        start(job)
        drain(job)
        out = StringIO()
        with pytest.raises(SystemExit) as excinfo:
            call_command("batch", "wait", str(job.pk), "--check", stdout=out)
        assert (excinfo.value.code, out.getvalue()) == (2, "error\n")
        assert batch("wait", job.pk) == "error\n"  # plain wait keeps its exit code (0)

    def test_it_exits_0_when_the_job_ended(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        drain(job)
        assert batch("wait", job.pk, "--check") == "ended\n"

"""The job endpoints: the same functions, validation and messages as the pages and the CLI."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO

from django.core.management import call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.jobs.models import (
    BatchJob,
    BatchJobRun,
    BatchLogEntry,
    BatchStatus,
    BatchTaskRun,
    StatusChange,
)
from batchadmin.servers.models import BatchGroup
from tests.api.base import ApiTestCase
from tests.base import drain, start

TWO_TASKS = {
    "description": "Post invoices",
    "tasks": [
        {"key": "post", "process": "demo.noop"},
        {"key": "report", "process": "demo.noop", "conditions": [{"task": "post"}]},
    ],
}


class JobListTestCase(ApiTestCase):
    def test_it_filters_as_the_list_page_and_pages(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        failed = self.make_job(description="Month-end close", status=BatchStatus.ERROR)
        in_group = self.make_job(description="Print invoices", created_by=self.dave)
        self.make_task(in_group, "print", group=reporting)
        for n in range(3):
            self.make_job(description=f"Filler {n}", status=BatchStatus.WITHHOLD)

        def ids(**params: str) -> list[int]:
            r = self.call("GET", "/api/v1/jobs", as_user=self.alice, **params)
            assert r.status_code == 200, r.content
            return [j["id"] for j in r.data["results"]]

        assert ids(status="error") == [failed.pk]
        assert ids(group="Reporting") == [in_group.pk]
        assert ids(q="invoices") == [in_group.pk]
        assert ids(created_by="dave") == [in_group.pk]
        assert ids(status="error", q="nothing like it") == []
        r = self.call("GET", "/api/v1/jobs?status=error&status=waiting", as_user=self.alice)
        assert {j["id"] for j in r.data["results"]} >= {failed.pk, in_group.pk}
        # Newest first, pages of page_size, a page past the end is empty.
        total = BatchJob.objects.count()
        first = self.call("GET", "/api/v1/jobs", as_user=self.alice, page_size="2").data
        assert (first["count"], first["pages"]) == (total, -(-total // 2))
        assert first["results"][0]["id"] == BatchJob.objects.latest("pk").pk
        assert ids(page="99") == []
        assert ids(o="id")[0] == BatchJob.objects.earliest("pk").pk
        # As the list page: Error finds a job back in Waiting whose last run failed, and
        # status sorts in lifecycle order (Waiting before Error), not by the alphabet.
        BatchJobRun.objects.create(
            job=in_group, status=BatchStatus.ERROR, scheduled_start=now(), ended_at=now()
        )
        assert set(ids(status="error")) == {failed.pk, in_group.pk}
        by_status = ids(o="status")
        assert by_status.index(in_group.pk) < by_status.index(failed.pk)

    def test_it_describes_each_job(self):
        job = self.make_job(created_by=self.dave, run_as=self.alice, critical=True)
        [row] = [
            j
            for j in self.call("GET", "/api/v1/jobs", as_user=self.alice).data["results"]
            if j["id"] == job.pk
        ]
        assert row == {
            "id": job.pk,
            "description": "Nightly settlement",
            "status": "waiting",
            "scheduled_start": job.scheduled_start.isoformat(),
            "started_at": None,
            "ended_at": None,
            "priority": None,
            "critical": True,
            "created_by": "dave",
            "run_as": "alice",
            "recurrence": "",
            "overlap": None,
            "paused": "",
            "url": f"http://localhost:8000/jobs/{job.pk}/",
        }

    def test_unknown_filters_are_refused_by_name(self):
        for params, message in [
            ({"group": "Nope"}, "Unknown batch group 'Nope'."),
            ({"created_by": "zed"}, "created_by: unknown user 'zed'."),
            ({"status": "sleeping"}, "Invalid filter: status: Select a valid choice."),
            ({"page": "0"}, "Invalid request: page: Input should be greater than or equal to 1."),
        ]:
            r = self.call("GET", "/api/v1/jobs", as_user=self.alice, **params)
            assert r.status_code == 400
            assert r.data["message"].startswith(message), r.data

    def test_a_page_costs_the_same_queries_with_more_jobs(self):
        for n in range(3):
            self.make_job(description=f"Job {n}", created_by=self.dave, run_as=self.alice)

        def queries() -> int:
            with CaptureQueriesContext(connection) as ctx:
                assert self.call("GET", "/api/v1/jobs", as_user=self.alice).status_code == 200
            return len(ctx)

        queries()  # the token's first use records it (once a minute)
        few = queries()
        for n in range(20):
            self.make_job(description=f"More {n}", created_by=self.dave, run_as=self.bob)
        assert queries() == few


class JobCreateTestCase(ApiTestCase):
    def test_it_creates_one_job_or_many_and_answers_their_ids(self):
        r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=TWO_TASKS)
        assert r.status_code == 201
        [job] = BatchJob.objects.filter(pk__in=r.data["ids"])
        assert (job.description, job.created_by, job.status) == (
            "Post invoices",
            self.dave,
            "waiting",
        )
        assert list(job.tasks.values_list("key", flat=True)) == ["post", "report"]

        body = {"groups": [{"code": "Reporting"}], "jobs": [TWO_TASKS, {"description": "Empty"}]}
        r = self.call("POST", "/api/v1/jobs", as_user=self.alice, body=body)
        assert r.status_code == 201
        assert [
            j.description for j in BatchJob.objects.filter(pk__in=r.data["ids"]).order_by("pk")
        ] == [
            "Post invoices",
            "Empty",
        ]
        assert BatchGroup.objects.filter(code="Reporting").exists()

    def test_a_bad_file_gets_the_import_command_s_message_and_creates_nothing(self):
        body = {
            "jobs": [
                TWO_TASKS,
                {"description": "Bad", "tasks": [{"key": "x", "process": "no.such"}]},
            ]
        }
        before = BatchJob.objects.count()
        r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=body)
        assert r.status_code == 400
        path = self.tmp_json(body)
        with self.assertRaisesMessage(Exception, r.data["message"]):
            call_command("batch", "import", path)
        assert (
            r.data["message"]
            == "Nothing was imported. job 2 ('Bad'), task 'x': unknown process 'no.such'."
        )
        assert BatchJob.objects.count() == before

    def tmp_json(self, data: object) -> str:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(data, f)
        return f.name

    def test_it_says_when_the_body_is_not_json(self):
        r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body="{not json")
        assert r.status_code == 400
        assert r.data["message"].startswith("The body is not valid JSON: Expecting property name")

    def test_what_only_a_manager_may_set_is_refused_to_a_batch_user(self):
        cases = [
            (
                {"groups": [{"code": "Mine"}], "jobs": []},
                "Only a Batch job manager can set up batch groups.",
            ),
            (
                {**TWO_TASKS, "run_as": "alice"},
                "job 1: only a Batch job manager can set Run by to another user.",
            ),
            (
                {**TWO_TASKS, "critical": True},
                "job 1: only a Batch job manager can make a job critical.",
            ),
        ]
        for body, message in cases:
            r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=body)
            assert (r.status_code, r.data["message"]) == (403, f"Nothing was imported. {message}")
            assert (
                self.call("POST", "/api/v1/jobs", as_user=self.alice, body=body).status_code == 201
            )
        # Run by oneself is no change of Run by.
        r = self.call(
            "POST", "/api/v1/jobs", as_user=self.dave, body={**TWO_TASKS, "run_as": "dave"}
        )
        assert r.status_code == 201


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class JobReadTestCase(ApiTestCase):
    def test_show_is_the_command_line_s_json(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "A", process="demo.fail", parameters={"message": "no"}, max_retries=1)
        self.make_task(job, "B")
        start(job)
        drain(job)
        out = StringIO()
        call_command("batch", "show", str(job.pk), "--json", stdout=out)
        r = self.call("GET", f"/api/v1/jobs/{job.pk}", as_user=self.dave)
        assert r.status_code == 200
        assert r.data == json.loads(out.getvalue())
        assert r.data["tasks"][0]["server"] == "aos1"

    def test_export_gives_back_what_import_takes(self):
        r = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=TWO_TASKS)
        [job_id] = r.data["ids"]
        exported = self.call("GET", f"/api/v1/jobs/{job_id}/export", as_user=self.dave).data
        again = self.call("POST", "/api/v1/jobs", as_user=self.dave, body=exported)
        assert again.status_code == 201
        [copy_id] = again.data["ids"]
        assert (
            self.call("GET", f"/api/v1/jobs/{copy_id}/export", as_user=self.dave).data == exported
        )


class JobActionTestCase(ApiTestCase):
    def finished(self, process: str = "demo.fail") -> BatchJob:
        job = self.make_job(created_by=self.dave)
        params = {"message": "Ledger locked"} if process == "demo.fail" else {}
        self.make_task(job, "A", process=process, parameters=params)
        self.make_task(job, "B")
        start(job)
        drain(job)
        return job

    def test_change_status_moves_as_the_dialog_and_refuses_the_rest(self):
        job = self.make_job(created_by=self.dave, status=BatchStatus.WITHHOLD)
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/status", as_user=self.dave, body={"status": "waiting"}
        )
        assert (r.status_code, r.data) == (200, {"id": job.pk, "status": "waiting"})
        change = StatusChange.objects.filter(job=job).latest("pk")
        assert (change.old_status, change.new_status, change.by) == (
            "withhold",
            "waiting",
            self.dave,
        )
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/status", as_user=self.dave, body={"status": "cancel"}
        )
        assert r.status_code == 409
        assert r.data["message"] == (
            "A job in status Waiting can't be changed to Canceling; allowed: Withhold."
        )
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/status", as_user=self.dave, body={"status": "run"}
        )
        assert r.status_code == 400
        assert r.data["message"] == (
            "Invalid request: status: Input should be 'waiting', 'withhold' or 'cancel'."
        )

    def test_cancel_stops_a_running_job(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "A")
        start(job)
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/status", as_user=self.dave, body={"status": "cancel"}
        )
        assert r.data == {"id": job.pk, "status": "canceled"}  # nothing ran: over at once

    def test_rerun_runs_the_failed_tasks_or_the_whole_job_now(self):
        job = self.finished()
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/rerun", as_user=self.dave, body={"what": "failed"}
        )
        assert (r.status_code, r.data) == (200, {"id": job.pk, "status": "executing"})
        assert dict(job.tasks.values_list("key", "status")) == {"A": "ready", "B": "ended"}
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/rerun", as_user=self.dave, body={})
        assert r.status_code == 409
        assert r.data["message"] == (
            f"Nothing was changed. Job {job.pk} is Executing: it can be rerun once this run is "
            "over."
        )
        ended = self.finished("demo.noop")
        r = self.call(
            "POST", f"/api/v1/jobs/{ended.pk}/rerun", as_user=self.dave, body={"what": "failed"}
        )
        assert r.status_code == 409
        assert "No task failed or did not run" in r.data["message"]
        r = self.call(
            "POST", f"/api/v1/jobs/{ended.pk}/rerun", as_user=self.dave, body={"what": "all"}
        )
        assert (r.status_code, r.data["status"]) == (200, "executing")

    def test_rerun_from_a_task_names_it_by_its_key(self):
        job = self.finished("demo.noop")
        body = {"what": "from", "from_task": "Z"}
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/rerun", as_user=self.dave, body=body)
        assert (r.status_code, r.data["message"]) == (
            400,
            f"from_task: job {job.pk} has no task 'Z'.",
        )
        body["from_task"] = "B"
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/rerun", as_user=self.dave, body=body)
        assert r.status_code == 200
        assert dict(job.tasks.values_list("key", "status")) == {"A": "ended", "B": "ready"}

    def test_skip_resumes_a_failed_job_and_the_audit_trail_says_who_and_why(self):
        job = self.finished()
        body = {"task": "A", "reason": "posted by hand"}
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/skip", as_user=self.dave, body=body)
        assert r.status_code == 200
        assert dict(job.tasks.values_list("key", "status"))["A"] == "skipped"
        r = self.call("GET", f"/api/v1/jobs/{job.pk}/audit", as_user=self.dave)
        assert r.status_code == 200
        skip = [e for e in r.data if e["action"] == "skip"]
        assert [(e["user"], e["reason"], e["via"]) for e in skip] == [
            ("dave", "posted by hand", "api")
        ]

    def test_run_now_takes_overrides_for_this_run_only(self):
        job = self.finished("demo.noop")
        task = job.tasks.get(key="A")
        task.process, task.parameters = "demo.log", {"lines": 2}
        task.save()
        body = {"overrides": {"A": {"lines": 7}}}
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/run-now", as_user=self.dave, body=body)
        assert (r.status_code, r.data["status"]) == (200, "executing")
        task.refresh_from_db()
        assert task.parameters == {"lines": 2}
        bad = {"overrides": {"A": {"lines": "many"}}}
        job.refresh_from_db()
        drain(job)
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/run-now", as_user=self.dave, body=bad)
        assert r.status_code == 409
        assert "lines" in r.data["message"]

    def test_copy_makes_a_held_copy_and_run_by_is_a_manager_s(self):
        job = self.finished("demo.noop")
        at = now() + dt.timedelta(days=1)
        body = {"description": "Copy", "scheduled_start": at.isoformat(), "company": ""}
        r = self.call("POST", f"/api/v1/jobs/{job.pk}/copy", as_user=self.dave, body=body)
        assert r.status_code == 201
        new = BatchJob.objects.get(pk=r.data["id"])
        assert (new.description, new.status, new.company, new.created_by) == (
            "Copy",
            "withhold",
            None,
            self.dave,
        )
        assert new.scheduled_start == at
        assert new.tasks.count() == 2
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/copy", as_user=self.dave, body={"run_as": "bob"}
        )
        assert (r.status_code, r.data["message"]) == (
            403,
            "Only a Batch job manager can change Run by.",
        )
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/copy", as_user=self.alice, body={"run_as": "bob"}
        )
        assert BatchJob.objects.get(pk=r.data["id"]).run_as == self.bob
        r = self.call(
            "POST", f"/api/v1/jobs/{job.pk}/copy", as_user=self.alice, body={"company": "XX"}
        )
        assert (r.status_code, r.data["message"]) == (400, "company: unknown company 'XX'.")

    def test_delete_refuses_a_running_job(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "A")
        start(job)
        r = self.call("DELETE", f"/api/v1/jobs/{job.pk}", as_user=self.dave)
        assert r.status_code == 409
        assert r.data["message"] == (
            "The job is Executing: it can't be changed until it ends. Nothing was deleted."
        )
        drain(job)
        assert self.call("DELETE", f"/api/v1/jobs/{job.pk}", as_user=self.dave).status_code == 204
        assert not BatchJob.objects.filter(pk=job.pk).exists()


class WaitTestCase(ApiTestCase):
    def test_it_answers_at_once_for_a_job_that_is_not_waiting_or_running(self):
        job = self.make_job(created_by=self.dave, status=BatchStatus.WITHHOLD)
        r = self.call("GET", f"/api/v1/jobs/{job.pk}/wait", as_user=self.dave)
        assert r.data == {"id": job.pk, "status": "withhold", "done": True, "change": 0}

    def test_it_gives_up_after_the_timeout_and_finds_the_end_after_a_change(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "A")
        r = self.call("GET", f"/api/v1/jobs/{job.pk}/wait", as_user=self.dave, timeout="0")
        assert r.data == {"id": job.pk, "status": "waiting", "done": False, "change": 0}
        start(job)
        drain(job)
        # The run ended since that answer: waiting on from its change finds the end.
        r = self.call("GET", f"/api/v1/jobs/{job.pk}/wait?after=0&timeout=0", as_user=self.dave)
        end = StatusChange.objects.get(job=job, new_status="ended")
        assert r.data == {"id": job.pk, "status": "ended", "done": True, "change": end.pk}
        r = self.call(
            "GET", f"/api/v1/jobs/{job.pk}/wait?after={end.pk}&timeout=0", as_user=self.dave
        )
        assert r.data["done"] is False


@override_settings(BATCH_RETRY_BACKOFF_SECONDS=0)
class HistoryTestCase(ApiTestCase):
    def test_runs_attempts_with_errors_and_paged_log_lines(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "log", process="demo.log", parameters={"lines": 5})
        self.make_task(
            job, "fail", process="demo.fail", parameters={"message": "Ledger locked"}, max_retries=1
        )
        start(job)
        drain(job)
        run = BatchJobRun.objects.get(job=job)
        assert run.ended_at is not None
        runs = self.call("GET", f"/api/v1/jobs/{job.pk}/runs", as_user=self.bob).data
        assert runs["count"] == 1
        assert runs["results"][0] | {"started_at": None} == {
            "id": run.pk,
            "status": "error",
            "scheduled_start": job.scheduled_start.isoformat(),
            "started_at": None,
            "ended_at": run.ended_at.isoformat(),
            "run_by": "dave",
            "canceled_by": None,
            "trigger": "scheduled",
            "note": "",
            "occurrence": None,  # a one-off job stands for no occurrence
        }
        attempts = self.call(
            "GET", f"/api/v1/jobs/{job.pk}/runs/{run.pk}/attempts", as_user=self.bob
        ).data
        assert [(a["task"], a["attempt"], a["status"]) for a in attempts["results"]] == [
            ("log", 1, "ended"),
            ("fail", 1, "error"),
            ("fail", 2, "error"),
        ]
        failed = attempts["results"][2]
        assert failed["error"] == "DemoFailure: Ledger locked"
        assert "Traceback (most recent call last)" in failed["traceback"]
        assert failed["server"] == "aos1" and failed["hostname"] == "aos1@test"

        url = f"/api/v1/jobs/{job.pk}/runs/{run.pk}/log"
        every = self.call("GET", url, as_user=self.bob).data
        assert every["count"] == BatchLogEntry.objects.filter(task_run__job_run=run).count()
        page = self.call("GET", url, as_user=self.bob, page_size="2", page="2").data
        assert [line["id"] for line in page["results"]] == [
            line["id"] for line in every["results"][2:4]
        ]
        errors = self.call("GET", url, as_user=self.bob, level="error").data["results"]
        assert {line["level"] for line in errors} == {"error"}
        assert {line["task"] for line in errors} == {"fail"}
        one = BatchTaskRun.objects.get(job_run=run, task__key="log")
        lines = self.call("GET", url, as_user=self.bob, attempt=str(one.pk)).data["results"]
        assert len(lines) == 5 and {line["task"] for line in lines} == {"log"}

    def test_a_run_of_another_job_is_not_found(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "A")
        start(job)
        drain(job)
        other = self.make_job(created_by=self.dave)
        run = BatchJobRun.objects.get(job=job)
        r = self.call("GET", f"/api/v1/jobs/{other.pk}/runs/{run.pk}/attempts", as_user=self.dave)
        assert r.status_code == 404
        assert r.data["message"].startswith(f"Batch job {other.pk} has no run {run.pk}")


class GroupListTestCase(ApiTestCase):
    def test_it_gives_each_groups_maximum_running_tasks_and_what_runs(self):
        group = BatchGroup.objects.create(code="Integration", max_tasks=4)
        job = self.make_job()
        self.make_task(job, "feed", group=group, status=BatchStatus.EXECUTING)
        r = self.call("GET", "/api/v1/groups", as_user=self.alice)
        assert r.status_code == 200, r.content
        [row] = [g for g in r.data if g["code"] == "Integration"]
        assert (row["max_tasks"], row["running_tasks"]) == (4, 1)

"""Every endpoint against every role: the same rules as the pages (jobs/access.py).

401 without a token; 404 for a job the caller may not see; 403 for a role that may not act.
"""

from __future__ import annotations

from typing import Any

from batchadmin.alerts.models import AlertRule
from batchadmin.jobs.models import ActivePeriod, BatchJob, BatchJobRun, BatchStatus
from tests.api.base import ApiTestCase
from tests.base import drain, start

ROLES = ("anonymous", "viewer", "batch user", "other batch user", "manager")
IMPORT = {"description": "From the API", "tasks": [{"key": "A", "process": "demo.noop"}]}
# (method, path with {job} and {run}, body, expected status per role in ROLES order)
ENDPOINTS: list[tuple[str, str, Any, tuple[int, ...]]] = [
    ("GET", "/api/v1/jobs", None, (401, 200, 200, 200, 200)),
    ("POST", "/api/v1/jobs", IMPORT, (401, 403, 201, 201, 201)),
    ("GET", "/api/v1/jobs/{job}", None, (401, 200, 200, 404, 200)),
    ("GET", "/api/v1/jobs/{job}/export", None, (401, 200, 200, 404, 200)),
    ("DELETE", "/api/v1/jobs/{job}", None, (401, 403, 204, 404, 204)),
    ("POST", "/api/v1/jobs/{job}/status", {"status": "withhold"}, (401, 403, 200, 404, 200)),
    ("POST", "/api/v1/jobs/{job}/rerun", {"what": "failed"}, (401, 403, 200, 404, 200)),
    (
        "POST",
        "/api/v1/jobs/{job}/skip",
        {"task": "A", "reason": "done by hand"},
        (401, 403, 200, 404, 200),
    ),
    ("POST", "/api/v1/jobs/{job}/run-now", {}, (401, 403, 200, 404, 200)),
    # The job has no recurrence: who may act gets 409, the others what they get elsewhere.
    ("POST", "/api/v1/jobs/{job}/pause", {"reason": "freeze"}, (401, 403, 409, 404, 409)),
    ("POST", "/api/v1/jobs/{job}/resume", None, (401, 403, 409, 404, 409)),
    ("GET", "/api/v1/jobs/{job}/audit", None, (401, 200, 200, 404, 200)),
    ("GET", "/api/v1/jobs/{job}/trigger", None, (401, 200, 200, 404, 200)),
    ("PUT", "/api/v1/jobs/{job}/trigger", {"after": None}, (401, 403, 200, 404, 200)),
    # Managers only; this job has no recurrence, so the manager hears why (409).
    (
        "POST",
        "/api/v1/jobs/{job}/backfill",
        {"from": "2025-01-01", "to": "2025-01-02"},
        (401, 403, 403, 404, 409),
    ),
    ("POST", "/api/v1/jobs/{job}/copy", {}, (401, 403, 201, 404, 201)),
    ("GET", "/api/v1/jobs/{job}/wait?timeout=0", None, (401, 200, 200, 404, 200)),
    ("GET", "/api/v1/jobs/{job}/runs", None, (401, 200, 200, 404, 200)),
    ("GET", "/api/v1/jobs/{job}/runs/{run}/attempts", None, (401, 200, 200, 404, 200)),
    ("GET", "/api/v1/jobs/{job}/runs/{run}/log", None, (401, 200, 200, 404, 200)),
    ("GET", "/api/v1/groups", None, (401, 200, 200, 200, 200)),
    ("GET", "/api/v1/servers", None, (401, 200, 200, 200, 200)),
    ("GET", "/api/v1/active-periods", None, (401, 403, 403, 403, 200)),
    ("GET", "/api/v1/calendars", None, (401, 200, 200, 200, 200)),
    ("GET", "/api/v1/alert-rules", None, (401, 403, 403, 403, 200)),
    ("GET", "/api/v1/webhooks", None, (401, 403, 403, 403, 200)),
    ("GET", "/api/v1/webhooks/deliveries", None, (401, 403, 403, 403, 200)),
]


class AccessMatrixTestCase(ApiTestCase):
    def failed_job(self) -> BatchJob:
        """A job of dave's (the batch user) whose run ended in Error, with a log line."""
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "A", process="demo.fail", parameters={"message": "Ledger locked"})
        start(job)
        drain(job)
        assert job.status == BatchStatus.ERROR
        return job

    def test_each_endpoint_answers_each_role_as_the_pages_do(self):
        ActivePeriod.objects.create(code="Night", start_time="18:00", end_time="08:00")
        AlertRule.objects.create(user=self.alice, error=True)
        users = dict(zip(ROLES, (None, self.bob, self.dave, self.erin, self.alice), strict=True))
        shared = self.failed_job()
        for method, template, body, expected in ENDPOINTS:
            for role, want in zip(ROLES, expected, strict=True):
                # A job of its own for each call that changes or deletes it.
                changes = method == "DELETE" or template.endswith(
                    ("status", "rerun", "skip", "run-now")
                )
                job = self.failed_job() if changes else shared
                run = BatchJobRun.objects.get(job=job)
                path = template.format(job=job.pk, run=run.pk)
                with self.subTest(f"{method} {template} as {role}"):
                    r = self.call(method, path, as_user=users[role], body=body)
                    assert r.status_code == want, (r.status_code, r.content)
                    if want >= 400:
                        assert r.data["message"], r.content
                    if want == 204:
                        assert not BatchJob.objects.filter(pk=job.pk).exists()

    def test_a_user_without_a_role_may_list_nothing_and_sees_no_job(self):
        job = self.failed_job()
        r = self.call("GET", "/api/v1/jobs", as_user=self.charlie)
        assert r.status_code == 403
        assert r.data["message"] == "You have no batch role; ask a Batch job manager for one."
        assert self.call("GET", f"/api/v1/jobs/{job.pk}", as_user=self.charlie).status_code == 404
        r = self.call("POST", "/api/v1/jobs", as_user=self.charlie, body=IMPORT)
        assert r.status_code == 403
        assert r.data["message"] == "Your role may not create batch jobs."

    def test_the_list_holds_only_the_jobs_the_caller_may_see(self):
        mine = self.failed_job()
        theirs = self.make_job(created_by=self.erin)
        run_as_me = self.make_job(created_by=self.alice, run_as=self.dave)

        def ids(user: Any) -> set[int]:
            return {j["id"] for j in self.call("GET", "/api/v1/jobs", as_user=user).data["results"]}

        assert ids(self.dave) == {mine.pk, run_as_me.pk}
        assert ids(self.erin) == {theirs.pk}
        # The seeded history clean-up job too.
        every = set(BatchJob.objects.values_list("pk", flat=True))
        assert {mine.pk, theirs.pk, run_as_me.pk} < every
        assert ids(self.bob) == ids(self.alice) == every

    def test_an_unknown_revoked_or_deactivated_token_is_401(self):
        headers = {"Authorization": "Bearer bat_not-a-token"}
        r = self.client.get("/api/v1/jobs", headers=headers)
        assert r.status_code == 401
        assert r["WWW-Authenticate"] == 'Bearer realm="batchadmin"'
        assert "Authorization: Bearer <token>" in r.json()["message"]
        self.dave.api_tokens.all().delete()
        assert self.call("GET", "/api/v1/jobs", as_user=self.dave).status_code == 401
        self.erin.is_active = False
        self.erin.save()
        assert self.call("GET", "/api/v1/jobs", as_user=self.erin).status_code == 401

    def test_a_session_is_no_way_in(self):
        # The API is for tokens; a browser's cookie (and so a forged cross-site request) is not.
        self.client.force_login(self.alice)
        assert self.client.get("/api/v1/jobs").status_code == 401

    def test_a_process_is_saved_only_by_the_roles_it_names(self):
        # Issue 13: history.cleanup deletes every user's history; only managers may run it.
        cleanup = {
            "description": "Purge",
            "tasks": [{"key": "A", "process": "history.cleanup", "parameters": {"keep_days": 1}}],
        }
        users = dict(zip(ROLES, (None, self.bob, self.dave, self.erin, self.alice), strict=True))
        for role, want in zip(ROLES, (401, 403, 403, 403, 201), strict=True):
            with self.subTest(role):
                r = self.call("POST", "/api/v1/jobs", as_user=users[role], body=cleanup)
                assert r.status_code == want, (r.status_code, r.content)

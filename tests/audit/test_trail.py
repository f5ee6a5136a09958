"""The audit trail: what is recorded (from pages, the command line and imports), who sees it,
that nobody can change it, and how long the history clean-up keeps it."""

from __future__ import annotations

import datetime as dt
import json
from io import StringIO
from unittest import mock

import time_machine
from django.contrib.auth.models import User
from django.core.management import call_command

from batchadmin.audit import trail
from batchadmin.audit.models import AuditEntry
from batchadmin.jobs.models import ActivePeriod, BatchRecurrence, BatchStatus, BatchTask
from batchadmin.processes import maintenance
from batchadmin.servers.models import BatchGroup, BatchServer, Priority
from tests.base import BaseTestCase

S = BatchStatus
HTMX = {"HX-Request": "true"}


def entry() -> AuditEntry:
    return AuditEntry.objects.latest("pk")


class RecordedFromPagesTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)

    def test_it_records_the_header_edit_with_before_and_after(self):
        job = self.make_job(status=S.WITHHOLD, description="Old words")
        data = {
            "description": "New words",
            "scheduled_start": "2030-01-01T02:00",
            "run_as": "",
            "priority": str(Priority.NORMAL.value),
            "save_history": "always",
            "company": str(self.usmf.pk),
        }
        r = self.client.post(f"/jobs/{job.pk}/", data)
        assert r.status_code == 302, r.content.decode()[:2000]
        e = entry()
        assert (e.action, e.username, e.job_id, e.target) == ("job_edit", "alice", job.pk, "header")
        assert e.changes["Job description"] == ["Old words", "New words"]
        assert e.changes["Scheduled start date/time"][1] == "2030-01-01 02:00:00 UTC"
        # Saved unchanged: nothing to record.
        self.client.post(f"/jobs/{job.pk}/", data)
        assert AuditEntry.objects.filter(action="job_edit").count() == 1

    def test_it_records_task_lines_added_edited_and_deleted(self):
        job = self.make_job(status=S.WITHHOLD)
        base = {
            "description": "Write",
            "process": "demo.log",
            "param-lines": "3",
            "company": "",
            "group": str(BatchGroup.objects.default().pk),
            "max_retries": "0",
            "condition_type": "all",
            "cond-TOTAL_FORMS": "0",
            "cond-INITIAL_FORMS": "0",
        }
        assert self.client.post(f"/jobs/{job.pk}/tasks/new/", base).status_code == 302
        task = BatchTask.objects.get(job=job)
        added = entry()
        assert (added.action, added.target) == ("task_add", "task T1")
        assert added.changes["Parameter lines"] == [None, 3]
        self.client.post(f"/jobs/{job.pk}/tasks/{task.pk}/edit/", base | {"param-lines": "5"})
        assert (entry().action, entry().changes) == ("task_edit", {"Parameter lines": [3, 5]})
        self.client.post(f"/jobs/{job.pk}/tasks/{task.pk}/delete/")
        assert (entry().action, entry().changes["Class name"]) == (
            "task_delete",
            ["demo.log", None],
        )

    def test_it_records_the_recurrence_and_the_alerts(self):
        job = self.make_job(status=S.WITHHOLD)
        BatchRecurrence.objects.create(
            job=job, start_date=dt.date(2030, 1, 1), start_time=dt.time(2), time_zone="UTC"
        )
        self.client.post(f"/jobs/{job.pk}/recurrence/remove/")
        assert (entry().action, entry().changes["Recurrence"][1]) == ("recurrence_remove", None)
        self.client.post(f"/jobs/{job.pk}/alerts/", {"error": "on", "popup": "on"})
        assert (entry().action, entry().changes) == (
            "alerts_edit",
            {"Alerts": ["", "Error (popup)"]},
        )

    def test_it_records_groups_servers_and_active_periods(self):
        self.client.post("/groups/new/", {"code": "Nightly", "description": "Night work"})
        assert (entry().action, entry().target) == ("group_add", "batch group Nightly")
        group = BatchGroup.objects.get(code="Nightly")
        self.client.post(
            f"/groups/{group.pk}/servers/", {"action": "save", "selected": [self.server.pk]}
        )
        assert (entry().action, entry().changes) == ("group_edit", {"Servers": [[], ["aos1"]]})
        self.client.post(f"/groups/{group.pk}/delete/")
        assert entry().action == "group_delete"
        period = {"code": "Night", "start_time": "18:00", "end_time": "08:00", "time_zone": "UTC"}
        self.client.post("/active-periods/new/", period)
        assert (entry().action, entry().target) == ("period_add", "active period Night")
        night = ActivePeriod.objects.get(code="Night")
        self.client.post(f"/active-periods/{night.pk}/edit/", period | {"end_time": "07:00"})
        assert entry().changes == {"To time": ["08:00", "07:00"]}
        server = BatchServer.objects.create(name="aos9")
        self.client.post(f"/servers/{server.pk}/delete/")
        assert (entry().action, entry().target) == ("server_delete", "batch server aos9")
        self.client.post("/alerts/rules/new/", {"error": "on", "popup": "on"})
        assert (entry().action, entry().target) == ("rule_add", "alert rule for every batch job")

    def test_it_records_a_new_job_and_a_copy(self):
        r = self.client.post(
            "/jobs/new/",
            {
                "description": "Fresh",
                "scheduled_start": "2030-01-01T02:00",
                "priority": str(Priority.NORMAL.value),
                "company": str(self.usmf.pk),
                "save_history": "always",
            },
        )
        assert r.status_code == 302
        created = entry()
        assert (created.action, created.changes["Job description"]) == (
            "job_create",
            [None, "Fresh"],
        )
        assert created.job_id is not None
        self.client.post(
            f"/jobs/{created.job_id}/copy/",
            {
                "description": "Copy",
                "company": str(self.usmf.pk),
                "scheduled_start": "2030-01-02T02:00",
                "run_as": "",
            },
        )
        copied = entry()
        assert (copied.action, copied.target) == ("job_copy", f"copy of job {created.job_id}")


class RecordedFromTheCommandLineTestCase(BaseTestCase):
    def test_it_records_an_import_and_its_groups(self, tmp_path=None):
        out = StringIO()
        data = {
            "groups": [{"code": "Imported", "description": "From a file"}],
            "jobs": [
                {
                    "description": "Imported job",
                    "tasks": [
                        {
                            "key": "A",
                            "description": "a",
                            "process": "demo.noop",
                            "group": "Imported",
                        }
                    ],
                }
            ],
        }
        with mock.patch("sys.stdin", StringIO(json.dumps(data))):
            call_command("batch", "import", "-", "--user", "alice", stdout=out)
        job_id = int(out.getvalue())
        imported = AuditEntry.objects.get(job_id=job_id)
        assert (imported.action, imported.via, imported.username) == (
            "job_import",
            "import",
            "alice",
        )
        assert imported.changes["Tasks"] == [None, ["A"]]
        group = AuditEntry.objects.get(action="group_add")
        assert (group.via, group.target) == ("import", "batch group Imported")


class WhoSeesWhatTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.mine = self.make_job(created_by=self.dave, description="Dave's")
        self.theirs = self.make_job(description="Alice's")
        trail.record(trail.Action.RUN_NOW, user=self.dave, job=self.mine, target="job")
        trail.record(
            trail.Action.SKIP, user=self.alice, job=self.theirs, target="task T2", reason="why not"
        )
        trail.record(trail.Action.GROUP_EDIT, user=self.alice, target="batch group X")

    def test_managers_and_viewers_see_every_entry(self):
        for user in (self.alice, self.bob):
            self.client.force_login(user)
            html = self.client.get("/audit/").content.decode()
            assert html.count('class="audit-entry"') == 3, user

    def test_a_batch_user_sees_the_entries_of_his_jobs_only(self):
        self.client.force_login(self.dave)
        html = self.client.get("/audit/").content.decode()
        assert html.count('class="audit-entry"') == 1
        assert "Dave&#x27;s" in html
        assert self.client.get(f"/audit/jobs/{self.theirs.pk}/").status_code == 404

    def test_a_user_without_a_role_sees_nothing(self):
        self.client.force_login(self.charlie)
        assert self.client.get("/audit/").status_code == 403

    def test_it_filters_by_user_action_job_and_time(self):
        self.client.force_login(self.alice)

        def count(query: str) -> int:
            return self.client.get(f"/audit/?{query}").content.decode().count('class="audit-entry"')

        assert count("user=dave") == 1
        assert count("action=skip") == 1
        assert count(f"job={self.theirs.pk}") == 1
        assert count("since=2000-01-01 00:00&until=2000-01-02 00:00") == 0
        assert count("since=2000-01-01 00:00") == 3
        assert (
            "Enter a date and time" in self.client.get("/audit/?since=yesterday").content.decode()
        )

    def test_the_job_page_loads_its_latest_entries(self):
        self.client.force_login(self.bob)
        page = self.client.get(f"/jobs/{self.theirs.pk}/").content.decode()
        assert f'hx-get="/audit/jobs/{self.theirs.pk}/"' in page
        html = self.client.get(f"/audit/jobs/{self.theirs.pk}/", headers=HTMX).content.decode()
        assert "why not" in html
        assert "Skip task" in html

    def test_only_managers_have_it_in_the_navigation(self):
        self.client.force_login(self.alice)
        assert 'href="/audit/"' in self.client.get("/jobs/").content.decode()
        self.client.force_login(self.bob)
        assert 'href="/audit/"' not in self.client.get("/jobs/").content.decode()

    def test_nobody_can_change_or_delete_an_entry_in_the_admin(self):
        root = User.objects.create_superuser("root", "root@example.org", "pw")
        self.client.force_login(root)
        e = entry()
        assert self.client.get("/admin/audit/auditentry/").status_code == 200
        page = self.client.get(f"/admin/audit/auditentry/{e.pk}/change/").content.decode()
        assert 'name="_save"' not in page
        assert (
            self.client.post(f"/admin/audit/auditentry/{e.pk}/delete/", {"post": "yes"}).status_code
            == 403
        )
        assert self.client.get("/admin/audit/auditentry/add/").status_code == 403
        assert AuditEntry.objects.filter(pk=e.pk).exists()

    def test_an_entry_outlives_its_job(self):
        job_id = self.theirs.pk
        self.theirs.delete()
        kept = AuditEntry.objects.get(job_id=job_id)
        assert kept.reason == "why not"
        self.client.force_login(self.alice)
        assert "(deleted)" in self.client.get("/audit/").content.decode()


class RetentionTestCase(BaseTestCase):
    NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)

    def test_the_clean_up_keeps_the_trail_unless_given_an_audit_limit(self):
        old = trail.record(trail.Action.SKIP, at=self.NOW - dt.timedelta(days=400))
        recent = trail.record(trail.Action.SKIP, at=self.NOW - dt.timedelta(days=10))
        ctx = mock.Mock()
        ctx.cancel_requested.return_value = False
        with time_machine.travel(self.NOW, tick=False):
            maintenance.history_cleanup(
                ctx, keep_days=1, statuses=[], description="", other_records=True
            )
            assert AuditEntry.objects.count() == 2  # no audit limit: kept for good
            maintenance.history_cleanup(
                ctx,
                keep_days=1,
                statuses=[],
                description="",
                other_records=True,
                audit_keep_days=365,
            )
        assert list(AuditEntry.objects.values_list("pk", flat=True)) == [recent.pk]
        assert not AuditEntry.objects.filter(pk=old.pk).exists()
        ctx.info.assert_called_with("Deleted 1 audit entry older than 2025-06-01 12:00 UTC.")

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.utils.timezone import now

from batchadmin.engine import worker
from batchadmin.jobs.models import BatchStatus
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
)
from tests.base import HOSTNAME, BaseTestCase, start

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse

HTMX = {"HX-Request": "true"}
URL = "/groups/"


class GroupPageTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)  # Batch job manager
        self.default = BatchGroup.objects.default()
        self.reporting = BatchGroup.objects.create(code="Reporting", description="Reports")
        self.aos2 = BatchServer.objects.create(name="aos2")
        self.online(self.server)

    def online(self, server: BatchServer, *, host: str = HOSTNAME, ago: int = 0) -> None:
        BatchServerReplica.objects.update_or_create(
            hostname=host,
            defaults={
                "server": server,
                "pid": 4242,
                "concurrency": 4,
                "last_heartbeat": now() - dt.timedelta(seconds=ago),
            },
        )

    def waiting_in(self, group: BatchGroup, n: int = 2) -> None:
        """An executing job with ``n`` ready tasks in ``group``."""
        job = self.make_job()
        for i in range(n):
            self.make_task(job, f"R{i}", group=group)
        start(job)

    def test_it_lists_groups_with_servers_and_waiting_tasks(self):
        self.waiting_in(self.default, 3)
        r = self.client.get(URL)
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" in html
        assert "Reporting" in html
        assert "aos1" in html
        assert "batch.default" in html  # the selected (default) group's queue

    def test_it_shows_a_groups_maximum_running_tasks_as_used_of_limit(self):
        BatchGroup.objects.filter(pk=self.reporting.pk).update(max_tasks=4)
        job = self.make_job()
        self.make_task(job, "R0", group=self.reporting, status=BatchStatus.EXECUTING)
        html = self.client.get(URL, {"group": self.reporting.pk}).content.decode()
        assert "1 / 4 running" in html  # the table's badge
        assert "Maximum running tasks" in html
        assert "1 / 4" in html

    def test_it_edits_a_groups_maximum_running_tasks(self):
        r = self.client.post(
            f"/groups/{self.reporting.pk}/edit/",
            {"code": "Reporting", "description": "Reports", "max_tasks": "3"},
        )
        assert r.status_code == 302
        self.reporting.refresh_from_db()
        assert self.reporting.max_tasks == 3

    def test_it_counts_ready_and_waiting_tasks_of_executing_jobs_only(self):
        self.waiting_in(self.reporting, 2)
        held = self.make_job(status=BatchStatus.WITHHOLD)
        self.make_task(held, "H1", group=self.reporting)
        html = self.client.get(URL + f"?group={self.reporting.pk}").content.decode()
        assert "2 tasks wait and will not run" in html

    def test_it_serves_the_table_and_the_detail_as_fragments(self):
        r = self.client.get(URL, headers={**HTMX, "HX-Target": "group-table"})
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="group-table"')
        r = self.client.get(
            URL + f"?group={self.reporting.pk}", headers={**HTMX, "HX-Target": "group-detail"}
        )
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="group-detail"')
        assert "batch.Reporting" in html

    def test_it_warns_loudly_about_a_group_no_server_serves(self):
        self.waiting_in(self.reporting, 2)
        html = self.client.get(URL).content.decode()
        assert "danger-box" in html
        assert "No online batch server runs the tasks of group Reporting" in html
        assert "no enabled batch server has this group" in html
        assert "2 tasks waiting." in html

    def test_it_warns_when_every_server_of_a_group_is_offline(self):
        self.aos2.groups.add(self.reporting)
        self.online(self.aos2, host="aos2@old", ago=3600)  # a stale heartbeat
        html = self.client.get(URL).content.decode()
        assert "its servers (aos2) are offline" in html
        assert "No online server" in html

    def test_it_warns_when_online_servers_are_outside_their_schedule(self):
        self.aos2.groups.add(self.reporting)
        self.online(self.aos2, host="aos2@h")
        start = (now() + dt.timedelta(hours=2)).time()  # the server's zone is UTC
        end = (now() + dt.timedelta(hours=3)).time()
        BatchServerSchedule.objects.create(
            server=self.aos2, start_time=start, end_time=end, max_threads=4
        )
        html = self.client.get(URL).content.decode()
        assert "outside their schedule windows" in html
        assert "Outside schedule" in html

    def test_it_does_not_warn_when_every_group_is_served(self):
        self.server.groups.add(self.reporting)
        html = self.client.get(URL).content.decode()
        assert "danger-box" not in html
        assert "No online batch server" not in html

    def test_it_has_an_empty_state_without_servers(self):
        BatchServer.objects.all().delete()
        html = self.client.get(URL).content.decode()
        assert "No batch server has registered yet." in html

    # --- Selected / Remaining --------------------------------------------------------------

    def post_servers(
        self, group: BatchGroup, data: dict[str, object], **kwargs: Any
    ) -> _MonkeyPatchedWSGIResponse:
        return self.client.post(f"/groups/{group.pk}/servers/", data, **kwargs)

    def test_it_moves_servers_between_the_lists_before_saving(self):
        r = self.post_servers(
            self.reporting, {"add": [self.aos2.pk], "action": "add"}, headers=HTMX
        )
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="group-detail"')
        assert f'name="selected" value="{self.aos2.pk}"' in html
        assert "Not saved yet" in html
        assert not self.aos2.groups.filter(pk=self.reporting.pk).exists()

    def test_it_saves_the_selected_list_and_workers_follow(self):
        assert "batch.Reporting" not in worker.wanted_queues(self.aos2)
        r = self.post_servers(
            self.reporting, {"selected": [self.aos2.pk, self.server.pk], "action": "save"}
        )
        assert r.status_code == 302
        assert set(self.reporting.servers.all()) == {self.aos2, self.server}
        assert "batch.Reporting" in worker.wanted_queues(self.aos2)
        # And back out: removing aos2 from the list stops it consuming the queue.
        r = self.post_servers(
            self.reporting, {"selected": [self.server.pk], "action": "save"}, headers=HTMX
        )
        assert r.headers["HX-Retarget"] == "#groups"
        assert r.content.decode().lstrip().startswith('<div id="groups"')
        assert "batch.Reporting" not in worker.wanted_queues(self.aos2)

    def test_it_saves_through_htmx_into_the_whole_groups_area(self):
        r = self.post_servers(
            self.reporting, {"selected": [self.server.pk], "action": "save"}, headers=HTMX
        )
        html = r.content.decode()
        assert html.lstrip().startswith('<div id="groups"')
        assert "No online batch server" not in html

    def test_it_asks_for_a_pick_before_moving(self):
        r = self.post_servers(self.reporting, {"action": "add"}, headers=HTMX)
        assert "Pick one or more servers in Remaining servers first." in r.content.decode()

    def test_it_keeps_the_unsaved_lists_when_a_pick_is_bad(self):
        r = self.post_servers(
            self.reporting,
            {"selected": [self.aos2.pk], "add": [999999], "action": "add"},
            headers=HTMX,
        )
        html = r.content.decode()
        assert "Select a valid choice" in html
        assert f'name="selected" value="{self.aos2.pk}"' in html

    def test_it_lets_only_managers_change_the_lists(self):
        for user in (self.bob, self.dave, self.charlie):
            self.client.force_login(user)
            r = self.post_servers(self.reporting, {"selected": [self.aos2.pk], "action": "save"})
            assert r.status_code == 403
        assert not self.reporting.servers.exists()

    def test_it_shows_the_lists_read_only_to_others(self):
        self.client.force_login(self.bob)
        html = self.client.get(URL).content.decode()
        assert "Only a Batch job manager can change" in html
        assert 'name="action"' not in html
        assert "New batch group" not in html

    def test_it_refuses_people_without_a_batch_role(self):
        self.client.force_login(self.charlie)
        assert self.client.get(URL).status_code == 403

    # --- create, edit, delete --------------------------------------------------------------

    def test_it_serves_the_create_dialog_and_a_page(self):
        r = self.client.get("/groups/new/", headers=HTMX)
        assert "<html" not in r.content.decode()
        assert 'id="group-dialog"' in r.content.decode()
        r = self.client.get("/groups/new/")
        assert "<html" in r.content.decode()

    def test_it_creates_a_group_and_closes_the_dialog(self):
        r = self.client.post(
            "/groups/new/", {"code": "Nightly", "description": "Night work"}, headers=HTMX
        )
        group = BatchGroup.objects.get(code="Nightly")
        assert "dialog-close" in r.headers["HX-Trigger"]
        assert r.headers["HX-Push-Url"] == f"/groups/?group={group.pk}"
        assert r.content.decode().lstrip().startswith('<div id="groups"')
        # A new group has no server yet: the page says so at once.
        assert f'<a href="?group={group.pk}">Nightly</a>:' in r.content.decode()

    def test_it_rejects_a_bad_code_at_the_field_and_keeps_what_was_typed(self):
        r = self.client.post(
            "/groups/new/", {"code": "bad code!", "description": "Typed text"}, headers=HTMX
        )
        html = r.content.decode()
        assert r.headers["HX-Retarget"] == "#dialog"
        assert "Use 1-50 letters, digits, hyphens or underscores." in html
        assert 'value="Typed text"' in html
        assert 'value="bad code!"' in html
        r = self.client.post("/groups/new/", {"code": "reporting"}, headers=HTMX)
        assert "Group Reporting exists already." in r.content.decode()

    def test_it_edits_the_description_but_not_the_code(self):
        r = self.client.post(
            f"/groups/{self.reporting.pk}/edit/", {"code": "Renamed", "description": "New words"}
        )
        assert r.status_code == 302
        self.reporting.refresh_from_db()
        assert (self.reporting.code, self.reporting.description) == ("Reporting", "New words")

    def test_it_refuses_to_delete_a_group_tasks_use(self):
        job = self.make_job()
        self.make_task(job, "A", group=self.reporting)
        self.make_task(job, "B", group=self.reporting)
        r = self.client.post(f"/groups/{self.reporting.pk}/delete/", headers=HTMX)
        assert "Group Reporting is used by 2 tasks." in r.content.decode()
        assert r.headers["HX-Retarget"] == "#dialog"
        assert BatchGroup.objects.filter(pk=self.reporting.pk).exists()

    def test_it_refuses_to_delete_the_default_group(self):
        r = self.client.post(f"/groups/{self.default.pk}/delete/")
        assert r.status_code == 302
        assert BatchGroup.objects.filter(pk=self.default.pk).exists()

    def test_it_deletes_an_unused_group(self):
        r = self.client.get(f"/groups/{self.reporting.pk}/delete/", headers=HTMX)
        assert "Delete batch group Reporting?" in r.content.decode()
        r = self.client.post(f"/groups/{self.reporting.pk}/delete/", headers=HTMX)
        assert "dialog-close" in r.headers["HX-Trigger"]
        assert not BatchGroup.objects.filter(pk=self.reporting.pk).exists()

    def test_it_lets_only_managers_create_edit_and_delete(self):
        for user in (self.bob, self.dave):
            self.client.force_login(user)
            assert self.client.get("/groups/new/").status_code == 403
            assert self.client.post("/groups/new/", {"code": "X"}).status_code == 403
            edit = self.client.post(f"/groups/{self.reporting.pk}/edit/", {"description": "X"})
            assert edit.status_code == 403
            assert self.client.post(f"/groups/{self.reporting.pk}/delete/").status_code == 403
        assert BatchGroup.objects.filter(code="Reporting", description="Reports").exists()
        assert not BatchGroup.objects.filter(code="X").exists()

    def test_it_reads_the_page_in_a_bounded_number_of_queries(self):
        self.client.get(URL)
        with self.assertNumQueries(9):
            self.client.get(URL)
        for i in range(5):
            server = BatchServer.objects.create(name=f"extra{i}")
            server.groups.add(self.reporting, self.default)
            BatchGroup.objects.create(code=f"G{i}")
        with self.assertNumQueries(9):
            self.client.get(URL)

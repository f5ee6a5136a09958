from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils.timezone import now

from batchadmin.engine import transitions
from batchadmin.jobs.models import BatchTask
from batchadmin.servers import forms
from batchadmin.servers.models import (
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    BatchServerSchedule,
)
from tests.base import HOSTNAME, BaseTestCase, start

HTMX = {"HX-Request": "true"}


def schedule_data(
    rows: list[tuple[str, str, str]], *, existing: int = 0, **extra: Any
) -> dict[str, Any]:
    """POST data for the server form with these (start, end, max threads) schedule rows."""
    data: dict[str, Any] = {
        "schedule-TOTAL_FORMS": str(len(rows)),
        "schedule-INITIAL_FORMS": str(existing),
        "schedule-MIN_NUM_FORMS": "0",
        "schedule-MAX_NUM_FORMS": "1000",
    }
    for i, (start_time, end_time, threads) in enumerate(rows):
        data[f"schedule-{i}-start_time"] = start_time
        data[f"schedule-{i}-end_time"] = end_time
        data[f"schedule-{i}-max_threads"] = threads
    data.update(extra)
    return data


class ServerPagesTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.client.force_login(self.alice)  # Batch job manager
        self.replica = BatchServerReplica.objects.create(
            server=self.server,
            hostname=HOSTNAME,
            pid=4242,
            concurrency=4,
            busy=1,
            last_heartbeat=now(),
        )
        self.default = BatchGroup.objects.default()
        self.url = f"/servers/{self.server.pk}/"

    def running_task(self, **job: Any) -> BatchTask:
        job_ = self.make_job(description="Nightly invoicing", **job)
        task = self.make_task(job_, "post", description="Post invoices")
        start(job_)
        assert transitions.claim_task(task_id=task.pk, server_id=self.server.pk, hostname=HOSTNAME)
        return task

    def form_data(self, rows: list[tuple[str, str, str]], **overrides: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "name": self.server.name,
            "description": "Main batch server",
            "enabled": "on",
            "time_zone": "Europe/Oslo",
            "groups": [self.default.pk],
        }
        fields.update(overrides)
        existing = fields.pop("existing", 0)
        return schedule_data(rows, existing=existing, **fields)

    # --- the list ------------------------------------------------------------------------------

    def test_it_lists_servers_with_replicas_and_running_tasks(self):
        self.running_task()
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(20), end_time=dt.time(7, 30), max_threads=20
        )
        r = self.client.get("/servers/")
        html = r.content.decode()
        assert "<html" in html
        assert HOSTNAME in html
        assert "4242" in html
        assert "1 / 4" in html  # threads busy / total
        assert "Nightly invoicing" in html
        assert "Post invoices" in html
        assert "20:00–07:30 × 20" in html
        assert "default" in html

    def test_it_refreshes_the_live_part_as_a_fragment(self):
        r = self.client.get("/servers/", headers={**HTMX, "HX-Target": "server-list"})
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="server-list"')
        assert 'hx-trigger="every 3s"' in html

    def test_it_marks_stale_replicas_offline(self):
        self.replica.last_heartbeat = now() - dt.timedelta(hours=1)
        self.replica.save()
        html = self.client.get("/servers/").content.decode()
        assert "Offline" in html

    def test_it_shows_batch_users_only_the_tasks_of_their_jobs(self):
        self.running_task()  # alice's job
        self.client.force_login(self.dave)
        html = self.client.get("/servers/").content.decode()
        assert "Nightly invoicing" not in html
        assert "1 task of jobs you can't see." in html

    def test_it_has_an_empty_state(self):
        BatchServer.objects.all().delete()
        html = self.client.get("/servers/").content.decode()
        assert "No batch server has registered yet." in html

    def test_it_refuses_people_without_a_batch_role(self):
        self.client.force_login(self.charlie)
        assert self.client.get("/servers/").status_code == 403
        assert self.client.get(self.url).status_code == 403

    def test_it_reads_the_list_in_a_bounded_number_of_queries(self):
        self.running_task()
        self.client.get("/servers/")
        with self.assertNumQueries(8):
            self.client.get("/servers/")
        for i in range(4):
            server = BatchServer.objects.create(name=f"aos{i + 5}")
            server.groups.add(self.default)
            BatchServerReplica.objects.create(server=server, hostname=f"aos{i + 5}@h")
        with self.assertNumQueries(8):
            self.client.get("/servers/")

    # --- one server ----------------------------------------------------------------------------

    def test_it_shows_a_server_read_only_to_viewers(self):
        BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(8), end_time=dt.time(18), max_threads=2
        )
        self.client.force_login(self.bob)
        html = self.client.get(self.url).content.decode()
        assert 'class="server-form"' not in html
        assert "Only a Batch job manager can change a batch server." in html
        assert "08:00" in html

    def test_it_refreshes_the_server_activity_as_a_fragment(self):
        self.running_task()
        r = self.client.get(self.url, headers={**HTMX, "HX-Target": "server-activity"})
        html = r.content.decode()
        assert "<html" not in html
        assert html.lstrip().startswith('<section id="server-activity"')
        assert "Post invoices" in html

    def test_it_saves_settings_groups_and_schedule_rows(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        data = self.form_data(
            [("08:00", "18:00", "2"), ("18:00", "08:00", "20")],
            groups=[self.default.pk, reporting.pk],
        )
        r = self.client.post(self.url, data)
        assert r.status_code == 302, r.content.decode()
        self.server.refresh_from_db()
        assert self.server.time_zone == "Europe/Oslo"
        assert set(self.server.groups.all()) == {self.default, reporting}
        rows = list(self.server.schedule.values_list("start_time", "end_time", "max_threads"))
        assert rows == [(dt.time(8), dt.time(18), 2), (dt.time(18), dt.time(8), 20)]
        # The schedule is in force at once: Oslo 19:00 is in the night window.
        oslo_evening = dt.datetime(2026, 1, 15, 18, 0, tzinfo=dt.UTC)
        assert self.server.max_threads_at(oslo_evening) == 20

    def test_it_edits_and_deletes_existing_rows(self):
        day = BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(8), end_time=dt.time(18), max_threads=2
        )
        night = BatchServerSchedule.objects.create(
            server=self.server, start_time=dt.time(18), end_time=dt.time(8), max_threads=8
        )
        data = self.form_data([("07:00", "19:00", "3"), ("18:00", "08:00", "8")], existing=2)
        data.update({"schedule-0-id": day.pk, "schedule-1-id": night.pk, "schedule-1-DELETE": "on"})
        r = self.client.post(self.url, data)
        assert r.status_code == 302, r.content.decode()
        assert list(self.server.schedule.values_list("start_time", "end_time", "max_threads")) == [
            (dt.time(7), dt.time(19), 3)
        ]

    def test_it_rejects_too_many_threads_at_the_field_and_keeps_what_was_typed(self):
        data = self.form_data([("08:00", "18:00", "513")], description="Typed words")
        r = self.client.post(self.url, data)
        html = r.content.decode()
        assert r.status_code == 200
        assert "Ensure this value is less than or equal to 512." in html
        assert 'value="Typed words"' in html
        assert 'value="513"' in html
        assert not self.server.schedule.exists()

    def test_it_rejects_negative_threads_and_bad_times(self):
        html = self.client.post(
            self.url, self.form_data([("25:00", "18:00", "-1")])
        ).content.decode()
        assert "Enter a time as 18:30 (or 6:30 PM)." in html
        assert "Ensure this value is greater than or equal to 0." in html
        assert 'value="25:00"' in html

    def test_it_rejects_overlapping_rows(self):
        data = self.form_data([("08:00", "18:00", "2"), ("17:00", "07:00", "8")])
        html = self.client.post(self.url, data).content.decode()
        assert "17:00-07:00 overlaps 08:00-18:00" in html
        assert not self.server.schedule.exists()

    def test_it_accepts_rows_that_meet_across_midnight(self):
        data = self.form_data([("20:00", "07:30", "20"), ("07:30", "20:00", "2")])
        assert self.client.post(self.url, data).status_code == 302
        assert self.server.schedule.count() == 2

    def test_it_rejects_an_unknown_time_zone(self):
        html = self.client.post(
            self.url, self.form_data([], time_zone="Mars/Olympus")
        ).content.decode()
        assert (
            "Mars/Olympus is not a time zone: type a city or region, e.g. Europe/Oslo or America/New York, and pick it from the list."
            in html
        )

    def test_it_keeps_the_server_id_fixed(self):
        self.client.post(self.url, self.form_data([], name="renamed"))
        self.server.refresh_from_db()
        assert self.server.name == "aos1"

    def test_it_lets_only_managers_change_a_server(self):
        for user in (self.bob, self.dave):
            self.client.force_login(user)
            r = self.client.post(self.url, self.form_data([("08:00", "18:00", "2")]))
            assert r.status_code == 403
            assert self.client.get("/servers/new/").status_code == 403
            assert self.client.post(f"/servers/{self.server.pk}/delete/").status_code == 403
            assert self.client.get("/servers/schedule-row/").status_code == 403
        self.server.refresh_from_db()
        assert self.server.time_zone == "UTC"
        assert not self.server.schedule.exists()

    def test_it_adds_a_schedule_row_through_htmx(self):
        r = self.client.get("/servers/schedule-row/?schedule-TOTAL_FORMS=2", headers=HTMX)
        html = r.content.decode()
        assert 'name="schedule-2-start_time"' in html
        assert 'id="id_schedule-TOTAL_FORMS"' in html
        assert 'value="3"' in html
        assert 'hx-swap-oob="true"' in html

    def test_it_creates_a_server(self):
        assert self.client.get("/servers/new/").status_code == 200
        data = schedule_data(
            [("00:00", "00:00", "16")],
            name="aos9",
            time_zone="UTC",
            enabled="on",
            groups=[self.default.pk],
        )
        r = self.client.post("/servers/new/", data)
        server = BatchServer.objects.get(name="aos9")
        assert r.headers["Location"] == f"/servers/{server.pk}/"
        assert server.max_threads_at(now()) == 16  # start = end: all day

    def test_it_rejects_a_duplicate_server_id(self):
        data = schedule_data([], name="aos1", time_zone="UTC")
        html = self.client.post("/servers/new/", data).content.decode()
        assert "Batch server with this Server ID already exists." in html

    def test_it_refuses_to_delete_a_server_that_is_online(self):
        r = self.client.post(f"/servers/{self.server.pk}/delete/", headers=HTMX)
        assert "has 1 online replica" in r.content.decode()
        assert r.headers["HX-Retarget"] == "#dialog"
        assert BatchServer.objects.filter(pk=self.server.pk).exists()

    def test_it_deletes_an_offline_server(self):
        old = BatchServer.objects.create(name="retired")
        r = self.client.get(f"/servers/{old.pk}/delete/", headers=HTMX)
        assert "Delete batch server retired?" in r.content.decode()
        r = self.client.post(f"/servers/{old.pk}/delete/", headers=HTMX)
        assert r.headers["HX-Redirect"] == "/servers/"
        assert not BatchServer.objects.filter(pk=old.pk).exists()


class OverlapTestCase(BaseTestCase):
    def test_it_finds_overlaps_across_midnight(self):
        t = dt.time
        assert forms.overlap((t(20), t(7)), (t(6), t(8)))
        assert forms.overlap((t(20), t(7)), (t(23), t(23, 30)))
        assert not forms.overlap((t(20), t(7)), (t(7), t(20)))
        assert forms.overlap((t(0), t(0)), (t(12), t(13)))  # all day overlaps everything
        assert not forms.overlap((t(8), t(12)), (t(12), t(18)))

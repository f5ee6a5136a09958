from __future__ import annotations

import datetime as dt

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils.timezone import now

from batchadmin.jobs.models import BatchJob, BatchStatus
from batchadmin.servers.models import BatchGroup
from tests.base import BaseTestCase

S = BatchStatus
HX = {"HX-Request": "true", "HX-Target": "job-table"}


class JobListTestCase(BaseTestCase):
    def setUp(self):
        super().setUp()
        self.mine = self.make_job(description="Dave's invoicing", created_by=self.dave)
        self.theirs = self.make_job(description="Alice's clean-up", status=S.ERROR)

    def test_it_requires_sign_in(self):
        r = self.client.get("/jobs/")
        assert r.status_code == 302 and r["Location"].startswith("/login/")

    def test_it_renders_the_full_page(self):
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/")
        assert r.status_code == 200
        assert b"<html" in r.content
        assert b"Dave&#x27;s invoicing" in r.content and b"Alice&#x27;s clean-up" in r.content

    def test_it_renders_the_table_fragment_for_htmx(self):
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/", headers=HX)
        assert r.status_code == 200
        assert b"<html" not in r.content
        assert b'id="job-table"' in r.content

    def test_it_shows_a_batch_user_only_their_jobs(self):
        self.client.force_login(self.dave)
        r = self.client.get("/jobs/")
        assert b"Dave&#x27;s invoicing" in r.content
        assert b"Alice&#x27;s clean-up" not in r.content

    def test_it_shows_a_batch_user_jobs_they_run_as(self):
        self.theirs.run_as = self.dave
        self.theirs.save()
        self.client.force_login(self.dave)
        assert b"Alice&#x27;s clean-up" in self.client.get("/jobs/").content

    def test_it_shows_a_viewer_every_job_without_new_button(self):
        self.client.force_login(self.bob)
        r = self.client.get("/jobs/")
        assert b"Dave&#x27;s invoicing" in r.content and b"Alice&#x27;s clean-up" in r.content
        assert b"New batch job" not in r.content

    def test_it_shows_nothing_to_a_user_without_role(self):
        self.client.force_login(self.charlie)
        r = self.client.get("/jobs/")
        assert b"No batch jobs yet." in r.content

    def test_it_filters_by_several_statuses_and_description(self):
        self.make_job(description="Held one", status=S.WITHHOLD)
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/?status=error&status=withhold")
        assert b"Held one" in r.content and b"Alice&#x27;s clean-up" in r.content
        assert b"Dave&#x27;s invoicing" not in r.content
        r = self.client.get("/jobs/?description=INVOIC")
        assert b"Dave&#x27;s invoicing" in r.content and b"Held one" not in r.content

    def test_it_filters_jobs_with_errors_and_by_group(self):
        nightly = BatchGroup.objects.create(code="nightly")
        ok_job = self.make_job(description="Fine job", status=S.ENDED)
        self.make_task(ok_job, "T1", group=nightly)
        self.make_task(ok_job, "T2", group=nightly)
        failing = self.make_job(description="Ended with failed task", status=S.ENDED)
        self.make_task(failing, "T1", status=S.ERROR, ignore_failure=True)
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/?has_errors=on")
        assert b"Ended with failed task" in r.content and b"Alice&#x27;s clean-up" in r.content
        assert b"Fine job" not in r.content
        r = self.client.get(f"/jobs/?group={nightly.pk}")
        assert r.content.count(b">Fine job<") == 1  # once, though two of its tasks match
        assert b"Dave&#x27;s invoicing" not in r.content

    def test_it_filters_by_scheduled_dates(self):
        self.make_job(description="Last year", scheduled_start=now() - dt.timedelta(days=400))
        self.client.force_login(self.alice)
        since = (now() - dt.timedelta(days=1)).date().isoformat()
        r = self.client.get(f"/jobs/?scheduled_after={since}")
        assert b"Last year" not in r.content and b"Dave&#x27;s invoicing" in r.content

    def test_it_sorts_and_keeps_the_filter_in_links(self):
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/?o=description&description=a")
        body = r.content.decode()
        assert body.index("Alice&#x27;s clean-up") < body.index("Dave&#x27;s invoicing")
        assert "o=-description" in body  # clicking again reverses
        assert "description=a" in body

    def test_it_paginates(self):
        for n in range(60):
            self.make_job(description=f"Bulk {n:02d}")
        self.client.force_login(self.alice)
        r = self.client.get("/jobs/")
        assert b"Page 1 of 2" in r.content
        assert b"Page 2 of 2" in self.client.get("/jobs/?page=2").content

    def test_a_description_search_counts_its_matches_in_the_page_query(self):
        for n in range(60):
            self.make_job(description=f"Bulk {n:02d}")
        self.client.force_login(self.alice)
        self.client.get("/jobs/")  # the first request also stores the session's time zone

        def page(query: str) -> tuple[str, list[str]]:
            with CaptureQueriesContext(connection) as ctx:
                html = self.client.get(f"/jobs/?{query}").content.decode()
            # The live version's check (jobs/live.py) counts all jobs, not the matches.
            sqls = [q["sql"] for q in ctx.captured_queries if "jobs_batchjob" in q["sql"]]
            return html, [sql for sql in sqls if "jobs_statuschange" not in sql]

        html, queries = page("description=bulk&o=description")
        assert "60 jobs" in html and "Page 1 of 2" in html
        assert html.count('class="desc"') == 50 and "Bulk 00" in html and "Bulk 50" not in html
        # No COUNT(*) of its own: the page's query counted the matches (OVER ()).
        assert not any("COUNT(*)" in sql for sql in queries), queries
        assert any("OVER ()" in sql for sql in queries)
        html, queries = page("description=bulk&o=description&page=2")
        assert "Page 2 of 2" in html and html.count('class="desc"') == 10 and "Bulk 59" in html
        # Past the last page: the paginator counts and shows the last page, as without search.
        html, _ = page("description=bulk&o=description&page=9")
        assert "Page 2 of 2" in html and "Bulk 59" in html
        html, _ = page("description=nothing+like+it")
        assert "No batch jobs match these filters." in html
        # Without a search the list counts with COUNT(*), which an index serves.
        _, queries = page("status=waiting")
        assert any("COUNT(*)" in sql for sql in queries)

    def test_its_query_count_does_not_grow_with_rows(self):
        self.client.force_login(self.alice)

        def count() -> int:
            with CaptureQueriesContext(connection) as ctx:
                assert self.client.get("/jobs/").status_code == 200
            return len(ctx.captured_queries)

        count()  # the first request also stores the session's time zone
        few = count()
        for n in range(40):
            self.make_job(description=f"More {n}", created_by=self.dave, run_as=self.bob)
        assert count() == few

    def test_the_description_search_can_use_the_trigram_index(self):
        # migration jobs.0009: the index must match the SQL Django writes for icontains, or
        # PostgreSQL never uses it. With sequential scans off, a usable index shows in the plan.
        self.client.force_login(self.alice)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
        with CaptureQueriesContext(connection) as ctx:
            r = self.client.get("/jobs/?description=invoic")
        assert b"Dave&#x27;s invoicing" in r.content
        assert b"Alice&#x27;s clean-up" not in r.content
        search = next(q["sql"] for q in ctx.captured_queries if "LIKE" in q["sql"])
        # The list's own condition, without its ORDER BY (an index scan in order is as good a
        # plan on a table of two rows).
        condition = search.split(" WHERE ", 1)[1].split(" ORDER BY ", 1)[0]
        with connection.cursor() as cursor:
            cursor.execute(f'EXPLAIN SELECT count(*) FROM "jobs_batchjob" WHERE {condition}')
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "job_description_trgm_idx" in plan, plan


class BulkStatusTestCase(BaseTestCase):
    def test_it_changes_the_selected_jobs(self):
        a = self.make_job(status=S.WITHHOLD)
        b = self.make_job(status=S.WITHHOLD)
        for job in (a, b):
            self.make_task(job, "T1")
        self.client.force_login(self.alice)
        r = self.client.post(
            "/jobs/bulk-status/", {"action": "waiting", "job": [a.pk, b.pk], "confirm": "1"}
        )
        assert r.status_code == 302
        assert set(BatchJob.objects.values_list("status", flat=True)) == {S.WAITING}

    def test_it_leaves_a_job_without_tasks_to_the_change_status_dialog(self):
        full = self.make_job(status=S.WITHHOLD)
        self.make_task(full, "T1")
        empty = self.make_job(status=S.WITHHOLD)
        self.client.force_login(self.alice)
        data = {"action": "waiting", "job": [full.pk, empty.pk], "confirm": "1"}
        r = self.client.post("/jobs/bulk-status/", data, follow=True)
        assert f"Not changed: {empty.pk} (no tasks: use Change status" in r.content.decode()
        full.refresh_from_db()
        empty.refresh_from_db()
        assert (full.status, empty.status) == (S.WAITING, S.WITHHOLD)

    def test_it_reports_jobs_it_could_not_change(self):
        a = self.make_job(status=S.WITHHOLD)
        ended = self.make_job(status=S.ENDED)
        self.client.force_login(self.alice)
        r = self.client.post(
            "/jobs/bulk-status/",
            {"action": "withhold", "job": [a.pk, ended.pk], "confirm": "1"},
            follow=True,
        )
        a.refresh_from_db()
        assert a.status == S.WITHHOLD  # already: Withhold -> Withhold is no move
        assert b"Not changed" in r.content

    def test_it_does_not_let_a_viewer_change_anything(self):
        job = self.make_job(status=S.WITHHOLD)
        self.client.force_login(self.bob)
        self.client.post("/jobs/bulk-status/", {"action": "waiting", "job": [job.pk]})
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    def test_it_does_not_let_a_batch_user_change_others_jobs(self):
        job = self.make_job(status=S.WITHHOLD)
        self.client.force_login(self.dave)
        self.client.post("/jobs/bulk-status/", {"action": "waiting", "job": [job.pk]})
        job.refresh_from_db()
        assert job.status == S.WITHHOLD

    def test_it_refuses_an_unknown_action(self):
        job = self.make_job(status=S.WITHHOLD)
        self.client.force_login(self.alice)
        r = self.client.post(
            "/jobs/bulk-status/", {"action": "explode", "job": [job.pk]}, follow=True
        )
        assert b"Choose Waiting, Withhold or Cancel." in r.content

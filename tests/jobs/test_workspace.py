"""The monitoring workspace at "/": counts, batch groups, what is not running and why, recent
failures, charts, the live fragment, access and the empty states of a fresh install."""

from __future__ import annotations

import datetime as dt
from unittest import mock

import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils.timezone import now

from batchadmin.engine import world
from batchadmin.jobs.models import BatchJob, BatchJobRun, BatchStatus, BatchTask, BatchTaskRun
from batchadmin.servers.models import BatchGroup, BatchServer, BatchServerReplica
from tests.base import HOSTNAME, BaseTestCase, start
from tests.jobs.form_base import squash

S = BatchStatus
UTC = dt.UTC
NOON = dt.datetime(2026, 3, 10, 12, 0, 30, tzinfo=UTC)
URL = "/"
LIVE = {"HX-Request": "true", "HX-Target": "workspace-live"}


class WorkspaceTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.enterContext(time_machine.travel(NOON, tick=False))
        self.queues = self.enterContext(
            mock.patch.object(world, "queue_sizes", side_effect=lambda gs: {g.pk: 0 for g in gs})
        )
        BatchServerReplica.objects.create(
            server=self.server, hostname=HOSTNAME, concurrency=4, busy=1, last_heartbeat=NOON
        )
        self.client.force_login(self.alice)
        # Counts start from nothing: no history clean-up job (seeded by jobs migration 0005).
        BatchJob.objects.all().delete()

    def run_of(
        self, job: BatchJob, *, status: str = S.ENDED, ended_at: dt.datetime = NOON
    ) -> BatchJobRun:
        return BatchJobRun.objects.create(
            job=job,
            status=status,
            scheduled_start=ended_at - dt.timedelta(minutes=5),
            started_at=ended_at - dt.timedelta(minutes=5),
            ended_at=ended_at,
        )

    def attempt(
        self,
        run: BatchJobRun,
        task: BatchTask,
        *,
        status: str = S.ENDED,
        ended_at: dt.datetime = NOON,
        error: str = "",
        attempt: int = 1,
    ) -> BatchTaskRun:
        return BatchTaskRun.objects.create(
            job_run=run,
            task=task,
            attempt=attempt,
            status=status,
            started_at=ended_at - dt.timedelta(seconds=5),
            ended_at=ended_at,
            error_message=error,
        )


class AccessTestCase(WorkspaceTestCase):
    def test_it_is_the_site_root(self):
        assert reverse("workspace") == "/"

    def test_every_batch_role_sees_it(self):
        for user in (self.alice, self.bob, self.dave):
            self.client.force_login(user)
            r = self.client.get(URL)
            assert r.status_code == 200, user
            assert "Batch workspace" in r.content.decode()

    def test_someone_without_a_batch_role_is_refused(self):
        self.client.force_login(self.charlie)
        assert self.client.get(URL).status_code == 403
        assert self.client.get(URL, headers=LIVE).status_code == 403

    def test_signed_out_visitors_go_to_the_login_page(self):
        self.client.logout()
        r = self.client.get(URL)
        assert r.status_code == 302
        assert r["Location"].startswith("/login/")

    def test_the_nav_link_comes_first_and_is_current(self):
        html = self.client.get(URL).content.decode()
        nav = html.split('<nav id="site-nav" class="mainnav"')[1].split("</nav>")[0]
        assert nav.index(">Workspace</a>") < nav.index(">Batch jobs</a>")
        assert 'aria-current="page">Workspace</a>' in nav

    def test_only_get(self):
        assert self.client.post(URL).status_code == 405


class LiveFragmentTestCase(WorkspaceTestCase):
    def test_the_page_polls_its_live_part_while_the_tab_is_visible(self):
        html = self.client.get(URL).content.decode()
        assert "<html" in html
        live = html.split('id="workspace-live"')[1].split(">")[0]
        assert 'hx-get="/"' in live
        assert "every 5s [document.visibilityState == 'visible']" in live
        assert "visibilitychange" in live

    def test_htmx_gets_only_the_fragment(self):
        r = self.client.get(URL, headers=LIVE)
        html = r.content.decode()
        assert r.status_code == 200
        assert "<html" not in html
        assert html.lstrip().startswith('<div id="workspace-live"')
        assert "Batch groups" in html

    def test_the_fragment_costs_a_fixed_number_of_queries_whatever_the_history(self):
        def queries() -> int:
            self.client.get(URL, headers=LIVE)  # the session's first request reads more
            with CaptureQueriesContext(connection) as ctx:
                assert self.client.get(URL, headers=LIVE).status_code == 200
            return len(ctx.captured_queries)

        job = self.make_job(status=S.ERROR)
        task = self.make_task(job, "T1", status=S.ERROR)
        run = self.run_of(job, status=S.ERROR)
        self.attempt(run, task, status=S.ERROR, error="boom")
        self.make_task(self.make_job(scheduled_start=NOON - dt.timedelta(minutes=5)), "D1")
        before = queries()
        BatchTaskRun.objects.bulk_create(
            BatchTaskRun(
                job_run=run,
                task=task,
                attempt=1,
                status=S.ERROR if i % 10 == 0 else S.ENDED,
                ended_at=NOON - dt.timedelta(seconds=17 * i),
            )
            for i in range(2_000)
        )
        for i in range(30):
            failed = self.make_job(status=S.ERROR, description=f"failed {i}")
            self.attempt(
                self.run_of(failed, status=S.ERROR), self.make_task(failed, "X"), status=S.ERROR
            )
            due = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=5 + i))
            self.make_task(due, "D1")
        for i in range(5):
            BatchGroup.objects.create(code=f"G{i}")
        after = queries()
        assert after == before
        assert after <= 25, after


class EmptyStatesTestCase(WorkspaceTestCase):
    def test_a_fresh_install_says_what_to_do(self):
        BatchServer.objects.all().delete()
        html = self.client.get(URL).content.decode()
        assert "No batch server has registered yet: nothing runs." in html
        assert "celery -A batchadmin worker -n aos1@%h" in html
        assert "No batch job has run yet." in html
        assert "python manage.py demo_data" in html
        assert "Nothing is stuck." in html
        assert "No job run has ended in Error." in html
        assert "No task attempt finished in the last hour." in html
        assert "No task attempt failed in the last 24 hours." in html
        assert 'href="/jobs/new/"' in html  # alice may create jobs
        # Counts read 0, not an empty cell.
        assert html.count('<td class="num">0</td>') >= 2

    def test_scheduled_jobs_are_named_instead_of_asking_for_demo_data(self):
        first = self.make_job(scheduled_start=now() + dt.timedelta(minutes=2))
        self.make_job(scheduled_start=now() + dt.timedelta(minutes=5))
        html = squash(self.client.get(URL).content.decode())
        assert "No batch job has run yet." in html
        assert f'The first to start is <a href="/jobs/{first.pk}/">batch job {first.pk}' in html
        assert "demo_data" not in html

    def test_jobs_that_are_not_waiting_are_pointed_to_change_status(self):
        self.make_job(status=S.WITHHOLD)
        html = self.client.get(URL).content.decode()
        assert "No job is Waiting: open one and set it to Waiting" in html
        assert "demo_data" not in html

    def test_a_viewer_is_not_offered_to_create_a_job(self):
        self.client.force_login(self.bob)
        html = self.client.get(URL).content.decode()
        assert "No batch job has run yet." in html
        assert "Create a batch job" not in html


class CountsTestCase(WorkspaceTestCase):
    def test_it_counts_tasks_by_status_and_jobs_waiting_to_start(self):
        running = self.make_job()
        parent = self.make_task(running, "T1")
        self.make_task(running, "T2")
        child = self.make_task(running, "T3")
        self.add_condition(child, parent)
        start(running)
        BatchTask.objects.filter(pk=parent.pk).update(status=S.EXECUTING)
        self.make_job(scheduled_start=NOON - dt.timedelta(minutes=1))  # due
        self.make_job(scheduled_start=NOON + dt.timedelta(hours=1))
        self.make_job(status=S.WITHHOLD)
        old = self.make_job(status=S.ERROR)
        self.run_of(old, status=S.ERROR, ended_at=NOON - dt.timedelta(hours=2))
        self.run_of(old, status=S.ERROR, ended_at=NOON - dt.timedelta(hours=25))
        self.run_of(old, status=S.ENDED, ended_at=NOON - dt.timedelta(hours=1))
        counts = self.client.get(URL).context["counts"]
        assert (counts.executing_tasks, counts.ready_tasks, counts.waiting_tasks) == (1, 1, 1)
        assert (counts.running_jobs, counts.waiting_jobs, counts.due_jobs) == (1, 2, 1)
        assert counts.failed_runs == 1

    def test_the_counts_are_of_every_job_even_for_a_batch_user(self):
        job = self.make_job()
        self.make_task(job, "T1")
        start(job)
        self.client.force_login(self.dave)
        r = self.client.get(URL)
        assert r.context["counts"].ready_tasks == 1
        assert "Only jobs you may open are listed; the counts are of every job." in (
            r.content.decode()
        )


class GroupsTestCase(WorkspaceTestCase):
    def test_each_group_shows_its_tasks_servers_and_threads(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        job = self.make_job()
        self.make_task(job, "T1")
        self.make_task(job, "T2", group=reporting)
        self.make_task(job, "T3", group=reporting)
        start(job)
        r = self.client.get(URL)
        rows = {row.group.code: row for row in r.context["groups"]}
        assert list(rows) == ["default", "Reporting"]  # the default group first
        assert (rows["default"].ready, rows["default"].state.ok) == (1, True)
        assert (rows["default"].state.busy, rows["default"].state.threads) == (1, 4)
        assert (rows["Reporting"].ready, rows["Reporting"].state.ok) == (2, False)
        html = r.content.decode()
        table = html.split('class="grid ws-groups"')[1].split("</table>")[0]
        reporting_row = table.split(">Reporting</a>")[1].split("</tr>")[0]
        assert "No server" in reporting_row
        assert "1 / 4" in table
        assert "No online batch server runs the tasks of group" in html


class StuckTestCase(WorkspaceTestCase):
    def test_a_due_job_that_has_not_started_says_why(self):
        job = self.make_job(
            description="Warehouse clean-up", scheduled_start=NOON - dt.timedelta(minutes=5)
        )
        self.make_task(job, "T1")
        # Saved before its start (one saved with a past start just now is only due).
        BatchJob.objects.filter(pk=job.pk).update(modified=NOON - dt.timedelta(hours=1))
        html = self.client.get(URL).content.decode()
        panel = html.split('id="stuck-head"')[1].split("</section>")[0]
        assert f"Job {job.pk}: Warehouse clean-up" in panel
        assert "Due since 11:55 UTC (5 min 00 s) and not started" in panel

    def test_a_job_just_due_is_not_stuck(self):
        self.make_job(scheduled_start=NOON - dt.timedelta(seconds=2))
        assert self.client.get(URL).context["stuck_jobs"] == []

    def test_long_ready_tasks_of_one_job_share_a_line_with_their_reason(self):
        reporting = BatchGroup.objects.create(code="Reporting")
        job = self.make_job(
            description="Sales report export", scheduled_start=NOON - dt.timedelta(minutes=10)
        )
        for i in range(3):
            self.make_task(job, f"R{i}", group=reporting)
        with time_machine.travel(NOON - dt.timedelta(minutes=10), tick=False):
            start(job)
        fresh = self.make_job(description="Just released")
        self.make_task(fresh, "F1")
        start(fresh)  # Ready for a moment only: not listed
        r = self.client.get(URL)
        [line] = r.context["stuck_tasks"]
        assert [t.key for t in line.tasks] == ["R0", "R1", "R2"]
        html = r.content.decode()
        panel = html.split('id="stuck-head"')[1].split("</section>")[0]
        assert "3 tasks" in panel
        assert "R0, R1, R2" in panel
        assert "No batch server serves group Reporting" in panel
        assert "Just released" not in panel

    def test_a_queued_task_tells_the_queue_length(self):
        job = self.make_job(scheduled_start=NOON - dt.timedelta(minutes=10))
        self.make_task(job, "T1")
        with time_machine.travel(NOON - dt.timedelta(minutes=10), tick=False):
            start(job)
        self.queues.side_effect = lambda gs: {g.pk: 40 for g in gs}
        html = self.client.get(URL).content.decode()
        assert "Queued for group default; 40 tasks in its queue" in html
        [call] = self.queues.call_args_list
        assert [g.code for g in call.args[0]] == ["default"]

    def test_a_batch_user_sees_only_their_own_stuck_jobs(self):
        mine = self.make_job(description="Mine", created_by=self.dave)
        theirs = self.make_job(description="Theirs")
        for job in (mine, theirs):
            self.make_task(job, "T1")
            BatchJob.objects.filter(pk=job.pk).update(scheduled_start=NOON - dt.timedelta(hours=1))
        self.client.force_login(self.dave)
        stuck = self.client.get(URL).context["stuck_jobs"]
        assert [s.job.description for s in stuck] == ["Mine"]


class FailuresTestCase(WorkspaceTestCase):
    def test_it_lists_failed_runs_with_the_first_line_of_the_error_and_a_link(self):
        job = self.make_job(status=S.ERROR, description="Vendor payments")
        task = self.make_task(job, "pay", status=S.ERROR)
        run = self.run_of(job, status=S.ERROR)
        self.attempt(
            run, task, status=S.ERROR, error="first try", ended_at=NOON - dt.timedelta(minutes=1)
        )
        self.attempt(
            run,
            task,
            status=S.ERROR,
            attempt=2,
            error="\nValueError: vendor V-1042 has no bank account\nTraceback (most recent...)",
        )
        ok = self.make_job(description="Fine")
        self.run_of(ok, status=S.ENDED)
        r = self.client.get(URL)
        [failure] = r.context["failures"]
        assert failure.error == "ValueError: vendor V-1042 has no bank account"
        assert failure.url == f"/jobs/{job.pk}/history/{run.pk}/"
        html = r.content.decode()
        assert f'href="/jobs/{job.pk}/history/{run.pk}/"' in html
        assert "(attempt 2)" in html
        assert "Traceback" not in html

    def test_the_last_ten_newest_first(self):
        job = self.make_job(status=S.ERROR)
        for hours in range(12):
            self.run_of(job, status=S.ERROR, ended_at=NOON - dt.timedelta(hours=hours))
        failures = self.client.get(URL).context["failures"]
        assert len(failures) == 10
        assert failures[0].run.ended_at == NOON
        assert failures[0].task_run is None

    def test_a_batch_user_sees_only_the_failures_of_their_jobs(self):
        for owner in (self.alice, self.dave):
            job = self.make_job(status=S.ERROR, created_by=owner)
            self.run_of(job, status=S.ERROR)
        self.client.force_login(self.dave)
        failures = self.client.get(URL).context["failures"]
        assert [f.run.job.created_by_id for f in failures] == [self.dave.pk]


class ChartsTestCase(WorkspaceTestCase):
    def test_it_counts_attempts_per_minute_and_failures_per_hour(self):
        job = self.make_job(status=S.ENDED)
        task = self.make_task(job, "T1", status=S.ENDED)
        run = self.run_of(job)
        for ended_at, status in [
            (NOON, S.ENDED),
            (NOON - dt.timedelta(seconds=10), S.ENDED),  # 12:00:20, the same minute
            (NOON - dt.timedelta(seconds=40), S.ERROR),  # 11:59:50
            (NOON - dt.timedelta(minutes=59), S.CANCELED),  # 11:01: the first bar
            (NOON - dt.timedelta(minutes=61), S.ENDED),  # before the chart
            (NOON - dt.timedelta(hours=5), S.ERROR),  # 07:00:30
            (NOON - dt.timedelta(hours=23, minutes=30), S.ERROR),  # 12:30 yesterday
            (NOON - dt.timedelta(hours=25), S.ERROR),  # before the chart
        ]:
            self.attempt(run, task, status=status, ended_at=ended_at)
        context = self.client.get(URL).context
        minutes = context["per_minute"]
        assert len(minutes.labels) == 60
        assert (minutes.labels[0], minutes.labels[-1]) == ("11:01", "12:00")
        ended, failed, canceled = (s.values for s in minutes.series)
        assert (ended[-1], failed[-2], canceled[0]) == (2, 1, 1)
        assert sum(ended) + sum(failed) + sum(canceled) == 4
        hours = context["per_hour"]
        assert (hours.labels[0], hours.labels[-1]) == ("13:00", "12:00")
        [failed_per_hour] = [s.values for s in hours.series]
        assert failed_per_hour[-1] == 0  # the 11:59 failure is in the 11:00 bar
        assert failed_per_hour[-2] == 1
        assert failed_per_hour[hours.labels.index("07:00")] == 1
        assert sum(failed_per_hour) == 2  # 12:30 yesterday is before the first bar (13:00)

    def test_the_charts_are_inline_svg_with_words_for_screen_readers(self):
        html = self.client.get(URL).content.decode()
        assert '<svg class="chart" id="chart-minutes"' in html
        assert 'aria-labelledby="chart-minutes-title chart-minutes-desc"' in html
        assert "<script" not in html.split('id="workspace-live"')[1]


class GroupCapacityTestCase(WorkspaceTestCase):
    def test_a_groups_maximum_running_tasks_shows_as_used_of_limit(self):
        group = BatchGroup.objects.create(code="Integration", max_tasks=4)
        job = self.make_job()
        for key in ("A", "B", "C"):
            self.make_task(job, key, group=group)
        start(job)
        BatchTask.objects.filter(job=job, key__in=["A", "B"]).update(status=S.EXECUTING)
        html = self.client.get(URL).content.decode()
        assert "2 / 4 running" in html

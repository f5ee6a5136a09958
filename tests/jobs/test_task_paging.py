"""A big job's form: the task lines load in pages, the diagram is drawn on request."""

from __future__ import annotations

import re
from unittest import mock

from batchadmin.jobs import task_grid, views
from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask
from tests.base import start
from tests.jobs.form_base import FormTestCase
from tests.jobs.test_task_grid import task_data

S = BatchStatus
P = views.TASK_PAGE


def line_ids(html: str) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr id="task-(\d+)" class="task-line"', html)]


class TaskPagingTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.tasks = [
            self.make_task(self.job, f"T{i}", position=i)
            for i in range(1, views.TASK_PAGE * 2 + 31)
        ]
        self.login(self.dave)

    def page_url(self, offset: int | str, job: BatchJob | None = None) -> str:
        return f"/jobs/{(job or self.job).pk}/tasks/page/?offset={offset}"

    def test_the_form_shows_the_first_page_and_a_load_more_line(self):
        html = self.client.get(f"/jobs/{self.job.pk}/").content.decode()
        assert line_ids(html) == [t.pk for t in self.tasks[: views.TASK_PAGE]]
        assert 'id="task-more"' in html
        assert f"Load more tasks ({len(self.tasks) - P} left)" in html
        assert 'hx-trigger="click, revealed"' in html
        assert f'hx-get="{self.page_url(views.TASK_PAGE)}"' in html
        # A real link too: without htmx it shows every line.
        assert f'href="/jobs/{self.job.pk}/?tasks=all#task-{self.tasks[P].pk}"' in html
        # One delete form for the grid, one CSRF token for it (and none per line).
        assert html.count('form="task-delete"') == views.TASK_PAGE
        assert html.count('id="task-delete"') == 1
        # Sign out, the header's form and the grid's: none per line.
        assert html.count("csrfmiddlewaretoken") == 3

    def test_the_next_page_returns_the_next_lines_and_the_next_load_more_line(self):
        r = self.client.get(self.page_url(views.TASK_PAGE), headers=self.htmx("task-more"))
        assert r.status_code == 200
        html = r.content.decode()
        assert "<html" not in html
        assert line_ids(html) == [t.pk for t in self.tasks[P : 2 * P]]
        assert f"Load more tasks ({len(self.tasks) - 2 * P} left)" in html
        assert f"{self.tasks[P + 1].pk}/edit/" in html  # the lines are editable
        last = self.client.get(self.page_url(2 * P), headers=self.htmx("task-more")).content
        assert line_ids(last.decode()) == [t.pk for t in self.tasks[2 * P :]]
        assert b'id="task-more"' not in last

    def test_a_line_of_a_later_page_can_be_edited(self):
        task = self.tasks[P + P // 2]
        edit = f"/jobs/{self.job.pk}/tasks/{task.pk}/edit/"
        r = self.client.get(edit, headers=self.htmx(f"task-{task.pk}"))
        assert f'id="task-{task.pk}-form"' in r.content.decode()
        data = task_data(description="Edited on page two")
        r = self.client.post(edit, data, headers=self.htmx(f"task-{task.pk}"))
        assert r.status_code == 200
        assert f'<tr id="task-{task.pk}" class="task-line" tabindex="-1">' in r.content.decode()
        task.refresh_from_db()
        assert task.description == "Edited on page two"

    def test_a_line_of_a_later_page_can_be_deleted_through_the_grid_form(self):
        task = self.tasks[P + P // 2]
        r = self.client.post(
            f"/jobs/{self.job.pk}/tasks/{task.pk}/delete/", headers=self.htmx(f"task-{task.pk}")
        )
        assert r.status_code == 200
        assert not BatchTask.objects.filter(pk=task.pk).exists()

    def test_without_htmx_the_load_more_link_shows_every_line(self):
        r = self.client.get(self.page_url(P))
        assert r.status_code == 302
        assert r["Location"] == f"/jobs/{self.job.pk}/?tasks=all"
        html = self.client.get(r["Location"]).content.decode()
        assert len(line_ids(html)) == len(self.tasks)
        assert 'id="task-more"' not in html

    def test_a_bad_offset_is_refused(self):
        r = self.client.get(self.page_url("x"), headers=self.htmx("task-more"))
        assert r.status_code == 400

    def test_a_viewer_reads_pages_without_edit_controls(self):
        self.login(self.bob)
        r = self.client.get(self.page_url(P), headers=self.htmx("task-more"))
        assert r.status_code == 200
        html = r.content.decode()
        assert len(line_ids(html)) == P
        assert "/edit/" not in html and 'form="task-delete"' not in html

    def test_no_role_or_another_users_job_is_not_found(self):
        # As the job form itself: a job the user may not see does not exist for them.
        self.login(self.charlie)
        assert self.client.get(self.page_url(P), headers=self.htmx()).status_code == 404
        other = self.make_job(created_by=self.alice, status=S.WITHHOLD)
        self.login(self.dave)
        assert self.client.get(self.page_url(0, other), headers=self.htmx()).status_code == 404


class DiagramThresholdTestCase(FormTestCase):
    def make_chain(self, n: int, status: str = S.WITHHOLD) -> BatchJob:
        job = self.make_job(created_by=self.dave, status=status)
        tasks = [self.make_task(job, f"T{i}", position=i) for i in range(n)]
        for parent, child in zip(tasks, tasks[1:], strict=False):
            self.add_condition(child, parent)
        return job

    def test_a_small_job_draws_its_diagram_inline(self):
        job = self.make_chain(5)
        self.login(self.dave)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert '<svg class="diagram"' in html
        assert "Show the diagram" not in html

    def test_a_big_job_shows_counts_and_draws_the_diagram_on_request(self):
        job = self.make_chain(views.DIAGRAM_INLINE_MAX + 1)
        job.tasks.filter(key="T0").update(status=S.ENDED)
        self.login(self.bob)  # a viewer may look at it too
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert '<svg class="diagram"' not in html
        assert f"{views.DIAGRAM_INLINE_MAX + 1} tasks:" in html
        assert "Show the diagram" in html
        summary = html[html.index("diagram-summary") :]
        assert re.search(r"status-ended[^<]*>Ended</span>\s*1\b", summary)
        r = self.client.get(f"/jobs/{job.pk}/?diagram=1", headers=self.htmx("job-diagram"))
        drawn = r.content.decode()
        assert "<html" not in drawn and '<svg class="diagram"' in drawn
        assert drawn.count('class="node ') == views.DIAGRAM_INLINE_MAX + 1
        # The drawn diagram refreshes itself drawn; the summary refreshes as a summary.
        assert "diagram=1" in drawn.split(">", 1)[0]

    def test_a_live_big_job_polls_the_status_of_the_lines_the_page_shows(self):
        job = self.make_chain(views.DIAGRAM_INLINE_MAX + 1, S.WAITING)
        start(job)
        self.login(self.dave)
        html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert "?poll=1&amp;editable=0&amp;v=" in html and "&amp;diagram=0" in html
        poll = f"/jobs/{job.pk}/?poll=1&editable=0&diagram=0"
        lines = list(job.tasks.order_by("position", "pk").values_list("pk", flat=True))

        def swapped(html: str) -> list[int]:
            found = re.findall(r'<span id="task-status-(\d+)" hx-swap-oob="true">', html)
            return [int(pk) for pk in found]

        polled = self.client.get(poll, headers=self.htmx("job-diagram")).content.decode()
        assert '<svg class="diagram"' not in polled
        # Without a count (the page's first poll), the first page of lines.
        assert swapped(polled) == lines[: views.TASK_PAGE]
        # app.js says how many lines the browser has loaded: those lines, and no others.
        polled = self.client.get(
            f"{poll}&lines=150", headers=self.htmx("job-diagram")
        ).content.decode()
        assert swapped(polled) == lines[:150]
        polled = self.client.get(
            f"{poll}&lines={len(lines)}", headers=self.htmx("job-diagram")
        ).content.decode()
        assert swapped(polled) == lines
        # The summary counts every task, loaded or not.
        assert f"{len(lines)} tasks:" in polled

    def test_a_big_job_page_builds_only_the_lines_it_shows(self):
        job = self.make_chain(views.DIAGRAM_INLINE_MAX + 50)
        self.login(self.dave)
        built: list[int] = []
        real_init = task_grid.TaskRow.__init__

        def counting_init(row, *args, **kwargs):
            built.append(1)
            real_init(row, *args, **kwargs)

        with mock.patch.object(task_grid.TaskRow, "__init__", counting_init):
            html = self.client.get(f"/jobs/{job.pk}/").content.decode()
        assert len(line_ids(html)) == views.TASK_PAGE
        assert len(built) == views.TASK_PAGE
        # The line after the window is named for the no-JavaScript link all the same.
        after = job.tasks.order_by("position", "pk")[views.TASK_PAGE]
        assert f"?tasks=all#task-{after.pk}" in html
        assert f"Load more tasks ({views.DIAGRAM_INLINE_MAX + 50 - views.TASK_PAGE} left)" in html

    def test_a_later_page_names_and_explains_parents_on_earlier_pages(self):
        job = self.make_chain(views.DIAGRAM_INLINE_MAX + 50, S.WAITING)
        start(job)
        self.login(self.dave)
        r = self.client.get(
            f"/jobs/{job.pk}/tasks/page/?offset={views.TASK_PAGE}", headers=self.htmx("task-more")
        )
        html = r.content.decode()
        first = job.tasks.get(key=f"T{views.TASK_PAGE}")
        line = html[html.index(f'id="task-{first.pk}"') : html.index("</tr>")]
        parent = f"T{views.TASK_PAGE - 1}"
        assert f'<span class="cond cond-ended">{parent} <span>Ended</span></span>' in line
        assert f"Waiting for task {parent} " in line
        assert "(needs Ended, it is Waiting)" in line

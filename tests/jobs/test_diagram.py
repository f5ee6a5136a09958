from __future__ import annotations

import json

from django.test import SimpleTestCase

from batchadmin.engine import transitions
from batchadmin.jobs import live, task_grid
from batchadmin.jobs.models import BatchJob, BatchStatus
from batchadmin.lib import diagram
from tests.base import HOSTNAME, drain, start
from tests.jobs.form_base import FormTestCase

S = BatchStatus
# The walkthrough as (parent, child, expected status).
WALKTHROUGH = [
    ("T1", "T2", "ended_or_error"),
    ("T2", "T3", "ended"),
    ("T2", "T4", "ended"),
    ("T2", "T5", "error"),
    ("T3", "T6", "error"),
    ("T3", "T7", "ended"),
    ("T4", "T7", "ended"),
]
KEYS = ["T1", "T2", "T3", "T4", "T5", "T6", "T7"]


class LayoutTestCase(SimpleTestCase):
    def test_it_puts_each_task_in_the_column_of_its_dependency_depth(self):
        layout = diagram.layout(KEYS, WALKTHROUGH)
        columns = {key: box.layer for key, box in layout.boxes.items()}
        assert columns == {"T1": 0, "T2": 1, "T3": 2, "T4": 2, "T5": 2, "T6": 3, "T7": 3}

    def test_every_arrow_points_right_from_parent_to_child(self):
        layout = diagram.layout(KEYS, WALKTHROUGH)
        assert len(layout.arrows) == 7
        for arrow in layout.arrows:
            parent, child = layout.boxes[arrow.parent], layout.boxes[arrow.child]
            assert parent.x + diagram.NODE_W < child.x
            assert parent.x + diagram.NODE_W < arrow.label_x < child.x
            assert arrow.path.startswith(f"M{parent.x + diagram.NODE_W:g},")

    def test_the_drawing_holds_every_box(self):
        layout = diagram.layout(KEYS, WALKTHROUGH)
        for box in layout.boxes.values():
            assert box.x >= 0 and box.x + diagram.NODE_W <= layout.width
            assert box.y >= 0 and box.y + diagram.NODE_H <= layout.height

    def test_it_orders_a_column_by_the_rows_of_the_parents(self):
        # B's child comes first in display order but follows B, which sits below A.
        layout = diagram.layout(["A", "B", "b", "a"], [("B", "b", "ended"), ("A", "a", "ended")])
        assert layout.boxes["a"].y < layout.boxes["b"].y

    def test_columns_centre_on_the_tallest_one(self):
        layout = diagram.layout(["A", "b", "c", "d"], [("A", k, "ended") for k in "bcd"])
        step = diagram.NODE_H + diagram.GAP_Y
        assert layout.boxes["A"].y == layout.boxes["c"].y == diagram.MARGIN + step

    def test_a_very_tall_column_leaves_the_first_boxes_in_sight(self):
        children = [f"c{i}" for i in range(80)]
        layout = diagram.layout(["A", *children], [("A", c, "ended") for c in children])
        step = diagram.NODE_H + diagram.GAP_Y
        # Centred on the first CENTRE_ROWS rows, not on all 80: the root is near the top.
        assert layout.boxes["A"].y == diagram.MARGIN + (diagram.CENTRE_ROWS - 1) * step / 2
        assert layout.height >= layout.boxes["c79"].y + diagram.NODE_H

    def test_a_longest_path_wins_over_a_shortcut(self):
        edges = [("A", "B", "ended"), ("B", "C", "ended"), ("A", "C", "ended")]
        assert diagram.depths(["A", "B", "C"], {"B": ["A"], "C": ["B", "A"]}) == {
            "A": 0,
            "B": 1,
            "C": 2,
        }
        assert diagram.layout(["A", "B", "C"], edges).boxes["C"].layer == 2

    def test_a_cycle_is_still_drawn(self):
        depths = diagram.depths(["A", "B", "C"], {"B": ["A", "C"], "C": ["B"]})
        assert depths == {"A": 0, "B": 1, "C": 1}

    def test_nothing_to_draw(self):
        layout: diagram.Layout[str] = diagram.layout([], [])
        assert (layout.boxes, layout.arrows) == ({}, [])

    def test_a_10000_task_chain_needs_no_recursion(self):
        keys = list(range(10_000))
        edges = [(k, k + 1, "ended") for k in keys[:-1]]
        assert diagram.layout(keys, edges).boxes[9_999].layer == 9_999


class DiagramViewTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login(self.dave)

    def url(self, job: BatchJob) -> str:
        return f"/jobs/{job.pk}/"

    def diagram(self, job: BatchJob, query: str = "") -> tuple[int, str, dict[str, str]]:
        r = self.client.get(self.url(job) + query, headers=self.htmx("job-diagram"))
        return r.status_code, r.content.decode(), dict(r.headers)

    def test_it_draws_the_tasks_and_their_conditions(self):
        job, tasks = self.make_walkthrough(created_by=self.dave, status=S.WITHHOLD)
        status, html, _ = self.diagram(job)
        assert status == 200
        assert "<html" not in html
        assert html.count('class="node n-waiting"') == 7
        assert html.count('<g class="edge edge-ended">') == 4
        assert html.count('<g class="edge edge-error">') == 2
        assert html.count('<g class="edge edge-ended_or_error">') == 1
        assert '>Ended or</tspan><tspan x="' in html  # two lines fit between the columns
        assert "<title>T7 runs when T4 is ended</title>" in html
        assert f'href="#task-{tasks["T7"].pk}"' in html

    def test_nodes_take_the_colour_of_their_status(self):
        job, _ = self.make_walkthrough(created_by=self.dave)
        start(job)
        drain(job)
        _, html, _ = self.diagram(job)
        assert html.count('class="node n-ended"') == 5
        assert html.count('class="node n-not_run"') == 2
        assert ">Didn&#x27;t run</text>" in html

    def test_the_page_polls_whatever_the_jobs_status(self):
        held = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.make_task(held, "T1")
        html = self.client.get(self.url(held)).content.decode()
        assert "every 2s [document.visibilityState == &#x27;visible&#x27;]" in html or (
            "every 2s [document.visibilityState == 'visible']" in html
        )
        assert "?poll=1&amp;editable=1&amp;v=" in html

    def test_an_unchanged_poll_of_a_job_that_is_not_running_answers_204(self):
        job = self.make_job(created_by=self.dave, status=S.WITHHOLD)
        self.make_task(job, "T1")
        version = live.job_version(job)
        status, _, _ = self.diagram(job, f"?poll=1&editable=1&v={version}")
        assert status == 204
        transitions.change_status(job_id=job.pk, to=S.WAITING, by_id=self.dave.pk)
        status, html, headers = self.diagram(job, f"?poll=1&editable=1&v={version}")
        assert status == 200 and "status-waiting" in html
        # The header and the task lines redraw too: the job moved since the page was drawn.
        assert json.loads(headers["HX-Trigger-After-Settle"]) == {"job-changed": {}}

    def test_a_poll_of_a_running_job_updates_the_status_badges(self):
        job = self.make_job(created_by=self.dave)
        t1 = self.make_task(job, "T1")
        start(job)
        assert transitions.claim_task(task_id=t1.pk, server_id=self.server.pk, hostname=HOSTNAME)
        status, html, headers = self.diagram(job, "?poll=1&editable=0")
        assert status == 200
        assert "HX-Trigger-After-Settle" not in headers
        assert 'class="node n-executing"' in html
        assert '<span id="job-status" hx-swap-oob="true">' in html
        assert f'<span id="task-status-{t1.pk}" hx-swap-oob="true">' in html
        assert 'id="job-times" hx-swap-oob="true"' in html
        assert "every 2s" in html

    def test_a_poll_of_a_settled_job_shows_the_end_and_keeps_polling(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "T1")
        start(job)
        drain(job)
        assert job.status == S.ENDED
        # The page was read-only while it ran; it still is for a viewer.
        self.login(self.bob)
        status, html, _ = self.diagram(job, "?poll=1&editable=0")
        assert status == 200
        assert 'class="node n-ended"' in html
        assert "every 2s" in html  # it may be set Waiting again from elsewhere

    def test_a_poll_that_finds_the_page_out_of_date_refreshes_every_section(self):
        job = self.make_job(created_by=self.dave)
        self.make_task(job, "T1")
        start(job)
        drain(job)
        # The page was drawn read-only while the job ran; now it may be edited again.
        status, html, headers = self.diagram(job, "?poll=1&editable=0")
        assert status == 200
        assert 'class="node n-ended"' in html
        assert json.loads(headers["HX-Trigger-After-Settle"]) == {"job-changed": {}}
        # The new diagram carries the new state, so its next request changes nothing more.
        _, _, headers = self.diagram(job, "?poll=1&editable=1")
        assert "HX-Trigger-After-Settle" not in headers

    def test_a_viewer_sees_the_diagram(self):
        job, _ = self.make_walkthrough()
        self.login(self.bob)
        status, html, _ = self.diagram(job)
        assert status == 200
        assert html.count('class="node n-waiting"') == 7

    def test_a_batch_user_cannot_see_the_diagram_of_others(self):
        job, _ = self.make_walkthrough(created_by=self.alice)
        status, _, _ = self.diagram(job, "?poll=1&editable=0")
        assert status == 404


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """Whether two (left, top, right, bottom) boxes share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


class LabelsTestCase(SimpleTestCase):
    # Three tasks that each wait for four parents: twelve labels in one gap.
    EDGES = [(p, c, "ended_or_error") for p in "ABCD" for c in "xyz"]

    def test_labels_in_one_gap_never_overlap_and_stay_in_the_drawing(self):
        layout = diagram.layout([*"ABCD", *"xyz"], self.EDGES, label_height=lambda kind: 24)
        boxes = [
            (a.label_x - 30, a.label_y - 12, a.label_x + 30, a.label_y + 12) for a in layout.arrows
        ]
        for i, one in enumerate(boxes):
            assert one[3] <= layout.height
            for other in boxes[i + 1 :]:
                assert not overlaps(one, other)

    def test_labels_stay_in_the_gap_before_their_task(self):
        layout = diagram.layout([*"ABCD", *"xyz"], self.EDGES)
        for arrow in layout.arrows:
            child = layout.boxes[arrow.child]
            assert child.x - diagram.GAP_X + 30 <= arrow.label_x <= child.x - 30

    def test_a_task_with_several_parents_gets_a_join_where_its_arrows_end(self):
        layout = diagram.layout(KEYS, WALKTHROUGH)
        assert set(layout.joins) == {"T7"}  # T3 and T4
        join = layout.joins["T7"]
        assert join.x == layout.boxes["T7"].x - diagram.JOIN_W
        for arrow in layout.arrows:
            end = arrow.path.rsplit(" ", 1)[1]
            x = float(end.split(",")[0])
            assert x == (join.x if arrow.child == "T7" else layout.boxes[arrow.child].x) - 2


class NodeTextTestCase(SimpleTestCase):
    def test_text_longer_than_its_box_is_cut_with_an_ellipsis(self):
        long = "Extract the general ledgers of every company"
        cut = task_grid.fit(long, task_grid.DESC_CHAR_PX)
        assert cut.endswith("…") and long.startswith(cut[:-1])
        assert len(cut) * task_grid.DESC_CHAR_PX <= task_grid.TEXT_W
        assert task_grid.fit("post", task_grid.KEY_CHAR_PX) == "post"


class DiagramDrawingTestCase(FormTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.login(self.dave)

    def test_it_draws_all_and_any_where_arrows_meet(self):
        job, tasks = self.make_walkthrough(created_by=self.dave, status=S.WITHHOLD)
        tasks["T7"].condition_type = "any"
        tasks["T7"].save()
        html = self.client.get(f"/jobs/{job.pk}/", headers=self.htmx("job-diagram")).content
        page = html.decode()
        assert page.count('<g class="join join-any"') == 1
        assert "<title>T7 runs when one condition holds</title>" in page
        assert '<span class="join-key join-any">Any</span>' in page
        # Zoom and pan are offered with the drawing.
        assert 'data-zoom="in"' in page and 'data-diagram="' in page

    def test_a_cross_job_trigger_is_drawn_as_a_linked_box_before_its_task(self):
        job, tasks = self.make_walkthrough(created_by=self.dave, status=S.WITHHOLD)
        rows = task_grid.load(job).rows
        trigger = task_grid.ExternalParent(
            key="job-99-post",
            label="Job 99 · post",
            description="Post invoices",
            status="ended",
            status_label="Ended",
            url="/jobs/99/",
            child_pk=tasks["T1"].pk,
            expected="ended",
        )
        drawing = task_grid.build_diagram(rows, [trigger])
        outside = [n for n in drawing.nodes if n.external]
        assert [n.href for n in outside] == ["/jobs/99/"]
        t1 = next(n for n in drawing.nodes if n.row and n.row.task.key == "T1")
        assert outside[0].x < t1.x
        assert "T1 runs when Job 99 · post is ended" in [a.title for a in drawing.arrows]

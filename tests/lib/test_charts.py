from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from django.test import SimpleTestCase

from batchadmin.lib import charts
from batchadmin.lib.charts import Chart, Series

SVG = "{http://www.w3.org/2000/svg}"


def chart(**overrides: Any) -> Chart:
    defaults = {
        "id": "c1",
        "title": "Tasks per minute",
        "description": "Stacked bars.",
        "labels": ["14:00", "14:01", "14:02", "14:03"],
        "series": [
            Series("Ended", "ended", [3, 0, 5, 1]),
            Series("Failed", "error", [1, 0, 0, 2]),
        ],
    }
    return Chart(**dict(defaults, **overrides))


def parse(svg: str) -> ET.Element:
    # The markup must be well-formed XML: an <svg> inline in HTML is parsed as XML-like.
    return ET.fromstring(svg.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


class ScaleTestCase(SimpleTestCase):
    def test_the_top_of_the_axis_is_a_round_number(self):
        cases = {0: 1, 1: 1, 2: 2, 3: 5, 7: 10, 10: 10, 11: 20, 45: 50, 101: 200, 999: 1000}
        assert {v: charts.nice_max(v) for v in cases} == cases

    def test_ticks_cut_the_axis_into_whole_steps(self):
        assert {top: charts.tick_step(top) for top in (1, 2, 5, 10, 20, 50, 200)} == {
            1: 1,
            2: 1,
            5: 1,
            10: 2,
            20: 4,
            50: 10,
            200: 40,
        }

    def test_tick_values_run_from_zero_to_the_top(self):
        assert [t.value for t in chart().ticks()] == [0, 1, 2, 3, 4, 5]
        taller = chart(series=[Series("Ended", "ended", [7, 0, 0, 0])])
        assert [t.value for t in taller.ticks()] == [0, 2, 4, 6, 8, 10]

    def test_an_empty_chart_still_has_an_axis(self):
        empty = chart(series=[Series("Ended", "ended", [0, 0, 0, 0])])
        assert [t.value for t in empty.ticks()] == [0, 1]
        assert empty.is_empty()


class ValidationTestCase(SimpleTestCase):
    def test_each_series_needs_a_value_per_label(self):
        with self.assertRaisesMessage(ValueError, "Series 'Ended' has 2 values for 4 labels."):
            chart(series=[Series("Ended", "ended", [1, 2])])

    def test_values_are_counts(self):
        with self.assertRaisesMessage(ValueError, "negative"):
            chart(series=[Series("Ended", "ended", [1, -2, 0, 0])])

    def test_a_chart_needs_a_series(self):
        with self.assertRaisesMessage(ValueError, "at least one series"):
            chart(series=[])

    def test_label_every_is_positive(self):
        with self.assertRaisesMessage(ValueError, "label_every"):
            chart(label_every=0)


class FiguresTestCase(SimpleTestCase):
    def test_totals_stack_the_series(self):
        assert chart().totals() == [4, 0, 5, 3]
        assert chart().total() == 12

    def test_the_summary_gives_totals_and_the_peak(self):
        assert chart().summary() == "9 ended, 3 failed in 4 bars; the highest is 5 tasks at 14:02."

    def test_the_summary_of_nothing_says_so(self):
        empty = chart(series=[Series("Ended", "ended", [0, 0, 0, 0])], unit="attempts")
        assert empty.summary() == "No attempts in this period."

    def test_rows_feed_the_table_of_figures(self):
        assert chart().rows()[0] == ("14:00", [3, 1], 4)
        assert len(chart().rows()) == 4


class GeometryTestCase(SimpleTestCase):
    def test_segments_stack_from_the_axis_up(self):
        c = chart()
        bottom = charts.HEIGHT - charts.PAD_BOTTOM
        by_index = dict(c.bars())
        ended, failed = by_index[0]
        assert (ended.css, failed.css) == ("ended", "error")
        assert abs(ended.y + ended.height - bottom) < 0.02
        assert abs(failed.y + failed.height - ended.y) < 0.02
        assert by_index[1] == []  # nothing that minute: no bar at all
        [only] = by_index[2]  # no failures that minute: one segment
        assert only.css == "ended"

    def test_bar_heights_are_proportional(self):
        c = chart()
        heights = {i: sum(b.height for b in segs) for i, segs in c.bars()}
        # The tallest bar (5) reaches the top of a scale of 5; 4 is 0.8 of it.
        plot = charts.HEIGHT - charts.PAD_BOTTOM - charts.PAD_TOP
        assert abs(heights[2] - plot) < 0.05
        assert abs(heights[0] - plot * 0.8) < 0.05

    def test_bars_sit_in_order_inside_the_plot(self):
        xs = [segs[0].x for _, segs in chart().bars() if segs]
        assert xs == sorted(xs)
        assert xs[0] >= charts.PAD_LEFT
        last = [segs for _, segs in chart().bars() if segs][-1][0]
        assert last.x + last.width <= charts.WIDTH - charts.PAD_RIGHT

    def test_labels_fall_every_nth_bar_from_the_offset(self):
        c = chart(labels=[f"14:{m:02d}" for m in range(7)], series=[Series("E", "e", [1] * 7)])
        assert [label for _, label in c.x_labels()] == [f"14:{m:02d}" for m in range(7)]
        spaced = chart(
            labels=[f"14:{m:02d}" for m in range(7)],
            series=[Series("E", "e", [1] * 7)],
            label_every=3,
            label_offset=1,
        )
        assert [label for _, label in spaced.x_labels()] == ["14:01", "14:04"]


class MarkupTestCase(SimpleTestCase):
    def test_it_is_well_formed_svg_named_by_its_title_and_desc(self):
        root = parse(chart().svg())
        assert root.get("role") == "img"
        assert root.get("aria-labelledby") == "c1-title c1-desc"
        title = root.find(f"{SVG}title")
        desc = root.find(f"{SVG}desc")
        assert title is not None and title.get("id") == "c1-title"
        assert title.text == "Tasks per minute"
        assert desc is not None and desc.get("id") == "c1-desc"
        assert desc.text == (
            "Stacked bars. 9 ended, 3 failed in 4 bars; the highest is 5 tasks at 14:02."
        )

    def test_every_bar_has_a_tooltip_with_its_figures(self):
        root = parse(chart().svg())
        groups = [g for g in root.iter(f"{SVG}g") if g.find(f"{SVG}rect") is not None]
        tips = [g.find(f"{SVG}title").text for g in groups]  # type: ignore[union-attr]
        assert tips == [
            "14:00: 3 ended, 1 failed",
            "14:02: 5 ended, 0 failed",
            "14:03: 1 ended, 2 failed",
        ]
        classes = [r.get("class") for r in root.iter(f"{SVG}rect")]
        assert classes == ["bar bar-ended", "bar bar-error", "bar bar-ended"] + [
            "bar bar-ended",
            "bar bar-error",
        ]

    def test_it_draws_the_axis_ticks_and_labels(self):
        root = parse(chart(label_every=2).svg())
        texts = [t.text for t in root.iter(f"{SVG}text")]
        assert texts[:6] == ["0", "1", "2", "3", "4", "5"]
        assert texts[6:] == ["14:00", "14:02"]
        assert root.find(f"{SVG}line[@class='axis']") is not None

    def test_text_is_escaped(self):
        c = chart(title="<script>alert(1)</script>", labels=["a&b", "<i>", "c", "d"])
        svg = c.svg()
        assert "<script>" not in svg
        assert "&lt;script&gt;" in svg
        parse(svg)  # still well-formed

    def test_large_numbers_get_separators(self):
        big = chart(series=[Series("Ended", "ended", [12_000, 0, 0, 0])])
        texts = [t.text for t in parse(big.svg()).iter(f"{SVG}text")]
        assert "20,000" in texts
        assert "12,000 ended in 4 bars" in big.summary()

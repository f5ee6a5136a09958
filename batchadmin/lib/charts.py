"""Bar charts as server-rendered SVG: no JavaScript library, no CDN.

A chart is bars over equal buckets (minutes, hours), optionally stacked from several series,
with a y axis of round numbers, labels under some of the bars, and the figures for assistive
technology: ``<title>`` and ``<desc>`` on the ``<svg>`` (named by ``aria-labelledby``), a
``<title>`` on every bar (the tooltip), and ``rows()`` for a table of the same figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

# Drawing area in SVG units; the page scales the whole drawing to its column.
WIDTH = 640
HEIGHT = 190
PAD_LEFT = 40  # room for the y axis labels
PAD_RIGHT = 8
PAD_TOP = 10
PAD_BOTTOM = 24  # room for the x axis labels
GAP = 0.2  # share of a bucket's width left empty between bars


@dataclass(frozen=True)
class Series:
    name: str  # "Ended"; also the legend and the table's column header
    css: str  # class suffix: bars get class "bar bar-<css>", coloured by static/app.css
    values: Sequence[int]


@dataclass(frozen=True)
class Tick:
    value: int
    y: float


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    css: str


@dataclass(frozen=True)
class Chart:
    """Stacked bars: ``series`` are drawn bottom to top in their order, one bar per label."""

    id: str  # unique on the page: the ids of <title> and <desc> derive from it
    title: str
    description: str  # what the chart shows, before the figures; the summary is appended
    labels: Sequence[str]  # one per bucket, e.g. "14:05"
    series: Sequence[Series]
    label_every: int = 1  # write every n-th label under the x axis ...
    label_offset: int = 0  # ... starting with this one (so they fall on round times)
    unit: str = "tasks"
    width: int = WIDTH
    height: int = HEIGHT

    def __post_init__(self) -> None:
        if not self.series:
            raise ValueError("A chart needs at least one series.")
        for s in self.series:
            if len(s.values) != len(self.labels):
                raise ValueError(
                    f"Series {s.name!r} has {len(s.values)} values for {len(self.labels)} labels."
                )
            if any(v < 0 for v in s.values):
                raise ValueError(f"Series {s.name!r} has a negative value.")
        if self.label_every < 1:
            raise ValueError("label_every must be 1 or more.")

    # --- figures --------------------------------------------------------------------------

    def totals(self) -> list[int]:
        """The height of each stacked bar."""
        return [sum(s.values[i] for s in self.series) for i in range(len(self.labels))]

    def total(self) -> int:
        return sum(self.totals())

    def is_empty(self) -> bool:
        return self.total() == 0

    def summary(self) -> str:
        """The figures in one sentence: totals per series and the peak bucket."""
        totals = self.totals()
        if not totals or not any(totals):
            return f"No {self.unit} in this period."
        parts = [f"{sum(s.values):,} {s.name.lower()}" for s in self.series]
        peak = max(range(len(totals)), key=lambda i: (totals[i], -i))
        return (
            f"{', '.join(parts)} in {len(totals)} bars; the highest is {totals[peak]:,} "
            f"{self.unit} at {self.labels[peak]}."
        )

    def rows(self) -> list[tuple[str, list[int], int]]:
        """(label, value per series, total) per bucket, for the table of figures."""
        totals = self.totals()
        return [
            (label, [s.values[i] for s in self.series], totals[i])
            for i, label in enumerate(self.labels)
        ]

    # --- geometry -------------------------------------------------------------------------

    def scale_max(self) -> int:
        return nice_max(max(self.totals(), default=0))

    def ticks(self) -> list[Tick]:
        top = self.scale_max()
        step = tick_step(top)
        return [Tick(v, self._y(v, top)) for v in range(0, top + 1, step)]

    def bars(self) -> list[tuple[int, list[Bar]]]:
        """(bucket index, its stacked segments bottom to top); empty buckets have none."""
        top = self.scale_max()
        slot = self._plot_width() / max(len(self.labels), 1)
        width = max(slot * (1 - GAP), 1.0)
        result = []
        for i in range(len(self.labels)):
            x = PAD_LEFT + i * slot + (slot - width) / 2
            base = 0
            segments = []
            for s in self.series:
                v = s.values[i]
                if v:
                    y_top = self._y(base + v, top)
                    y_bottom = self._y(base, top)
                    segments.append(Bar(x, y_top, width, y_bottom - y_top, s.css))
                    base += v
            result.append((i, segments))
        return result

    def x_labels(self) -> list[tuple[float, str]]:
        slot = self._plot_width() / max(len(self.labels), 1)
        return [
            (PAD_LEFT + i * slot + slot / 2, label)
            for i, label in enumerate(self.labels)
            if (i - self.label_offset) % self.label_every == 0
        ]

    def _plot_width(self) -> float:
        return float(self.width - PAD_LEFT - PAD_RIGHT)

    def _plot_bottom(self) -> float:
        return float(self.height - PAD_BOTTOM)

    def _y(self, value: int, top: int) -> float:
        plot_height = self._plot_bottom() - PAD_TOP
        return round(self._plot_bottom() - plot_height * value / top, 2)

    # --- markup ---------------------------------------------------------------------------

    def svg(self) -> SafeString:
        title_id, desc_id = f"{self.id}-title", f"{self.id}-desc"
        parts: list[SafeString] = [
            format_html(
                '<svg class="chart" id="{}" viewBox="0 0 {} {}" width="{}" height="{}" '
                'role="img" aria-labelledby="{} {}">',
                self.id,
                self.width,
                self.height,
                self.width,
                self.height,
                title_id,
                desc_id,
            ),
            format_html('<title id="{}">{}</title>', title_id, self.title),
            format_html('<desc id="{}">{} {}</desc>', desc_id, self.description, self.summary()),
        ]
        right = self.width - PAD_RIGHT
        for tick in self.ticks():
            parts.append(
                format_html(
                    '<g class="tick"><line x1="{}" x2="{}" y1="{}" y2="{}"/>'
                    '<text x="{}" y="{}" text-anchor="end">{}</text></g>',
                    PAD_LEFT,
                    right,
                    tick.y,
                    tick.y,
                    PAD_LEFT - 6,
                    tick.y + 4,
                    f"{tick.value:,}",
                )
            )
        by_index = dict(self.bars())
        for i, label in enumerate(self.labels):
            segments = by_index[i]
            if not segments:
                continue
            figures = ", ".join(f"{s.values[i]:,} {s.name.lower()}" for s in self.series)
            parts.append(format_html("<g><title>{}: {}</title>", label, figures))
            parts.extend(
                format_html(
                    '<rect class="bar bar-{}" x="{}" y="{}" width="{}" height="{}"/>',
                    bar.css,
                    round(bar.x, 2),
                    bar.y,
                    round(bar.width, 2),
                    round(bar.height, 2),
                )
                for bar in segments
            )
            parts.append(mark_safe("</g>"))
        bottom = self._plot_bottom()
        parts.append(
            format_html(
                '<line class="axis" x1="{}" x2="{}" y1="{}" y2="{}"/>',
                PAD_LEFT,
                right,
                bottom,
                bottom,
            )
        )
        parts.extend(
            format_html(
                '<text class="x-label" x="{}" y="{}" text-anchor="middle">{}</text>',
                round(x, 2),
                bottom + 16,
                label,
            )
            for x, label in self.x_labels()
        )
        parts.append(mark_safe("</svg>"))
        return mark_safe("".join(parts))


def nice_max(value: int) -> int:
    """The top of the y axis: ``value`` rounded up to 1, 2 or 5 times a power of ten (at least 1)."""
    if value <= 1:
        return 1
    magnitude: int = 10 ** len(str(value - 1)) // 10  # the power of ten at or below value
    for factor in (1, 2, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    raise AssertionError("unreachable: 10 * magnitude exceeds value")


def tick_step(top: int) -> int:
    """A step that cuts [0, top] into 2 to 5 equal whole parts (top comes from nice_max)."""
    if top <= 1:
        return 1
    for parts in (5, 4, 2):
        if top % parts == 0:
            return top // parts
    return top

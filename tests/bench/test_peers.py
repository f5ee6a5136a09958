"""bench/peers.py: its options and the table it prints (its runs are bench/README.md's)."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from django.test import SimpleTestCase

from bench import peers


def result(workers: int, engine: float, celery: float) -> dict[str, Any]:
    hop = {"median": 2.3, "p99": 10.6}
    return {
        "workers": workers,
        "engine": {"tasks": 2000.0, "tasks_per_s": engine},
        "engine_rounds": [engine - 10, engine, engine + 10],
        "celery": {"tasks_per_s": celery},
        "celery_rounds": [celery],
        "engine_hop_ms": hop,
        "celery_hop_ms": hop,
        "machine": {
            "cores": 2,
            "cpu": "AMD EPYC",
            "platform": "Linux",
            "python": "3.11.7",
            "packages": {"celery": "5.7.0"},
            "postgresql": "15.20",
            "redis": "7.0.15",
        },
        "git": {"commit": "817d7e8"},
        "anomalies": [],
    }


class PeersTestCase(SimpleTestCase):
    def test_the_table_has_a_line_per_worker_count_beside_celery(self):
        text = peers.report([result(1, 280, 463), result(4, 581, 515)])
        lines = text.splitlines()
        assert "commit 817d7e8" in lines[0]
        assert lines[4].split()[:5] == ["1", "280", "270", "280", "290"]
        assert "60%" in lines[4] and "113%" in lines[5]
        assert "2.3 / 10.6" in lines[5]
        assert "versions: Python 3.11.7, celery 5.7.0, PostgreSQL 15.20, Redis 7.0.15" in text

    def test_worker_counts_are_checked_with_a_message_that_names_them(self):
        assert peers.parse_args(["--workers", "1,2,4"]).counts == [1, 2, 4]
        for bad in ("1,two", "0", ""):
            err = io.StringIO()
            with contextlib.redirect_stderr(err), self.assertRaises(SystemExit):
                peers.parse_args(["--workers", bad])
            assert "--workers" in err.getvalue()

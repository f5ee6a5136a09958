"""cProfile every pool process of the bench's workers (``engine_vs_celery.py --profile``).

Loaded into the workers with ``-I bench.worker_profile``; each pool process profiles itself from
its start and writes ``worker-<pid>.prof`` into ``BENCH_PROFILE_DIR`` when it exits. The timer is
the process's CPU time, so the profile shows where the workers spend CPU, not where they wait
(a lock, the database, the broker); ``BENCH_PROFILE_CLOCK=wall`` profiles wall time instead.
Profiling slows the workers down, so the figures of a profiled run only compare with each other.
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path
from typing import Any

from celery import signals

_profile: cProfile.Profile | None = None


@signals.worker_process_init.connect
def start_profile(**kwargs: Any) -> None:
    global _profile
    wall = os.environ.get("BENCH_PROFILE_CLOCK") == "wall"
    _profile = cProfile.Profile(time.perf_counter if wall else time.process_time)
    _profile.enable()


@signals.worker_process_shutdown.connect
def dump_profile(**kwargs: Any) -> None:
    if _profile is None:
        return
    _profile.disable()
    out = Path(os.environ["BENCH_PROFILE_DIR"]) / f"worker-{os.getpid()}.prof"
    _profile.dump_stats(out)

"""A clock for the whole cluster that an end-to-end test moves forward (test_recurrence.py).

Python imports ``sitecustomize`` at start-up, so every process started with this folder first on
PYTHONPATH and E2E_CLOCK_FILE set (beat, the workers, their pool processes) runs on the same
clock: real time plus the offset in seconds written in that file, applied with time-machine. Each
process re-reads the file every 50 ms from a thread (a pool process starts its own after the
fork), so when the test writes a new offset the whole cluster jumps forward together; nothing in
the engine knows. Sleeps, timeouts and the monotonic clock stay real.
"""

from __future__ import annotations

import os
import threading
import time

CLOCK_FILE = os.environ.get("E2E_CLOCK_FILE", "")
POLL_SECONDS = 0.05


def _read_offset(default: float) -> float:
    try:
        with open(CLOCK_FILE) as f:
            return float(f.read())
    except (OSError, ValueError):
        return default  # written with os.replace, so a half-written file is not expected


def _start() -> None:
    import time_machine

    offset = _read_offset(0.0)
    traveller = time_machine.travel(time.time() + offset, tick=True).start()
    applied = [offset]

    def follow() -> None:
        while True:
            time.sleep(POLL_SECONDS)
            wanted = _read_offset(applied[0])
            if wanted != applied[0]:
                traveller.shift(wanted - applied[0])
                applied[0] = wanted

    def start_following() -> None:
        threading.Thread(target=follow, name="e2e-clock", daemon=True).start()

    start_following()
    os.register_at_fork(after_in_child=start_following)


if CLOCK_FILE:
    _start()

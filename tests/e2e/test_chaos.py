"""The chaos soak's short form (bench/chaos.py): two minutes of random faults on three hosts.

The soak brings its own Redis, PostgreSQL, workers, beat and (with hosts) network namespaces,
and removes them at the end; this runs it as a CI user would and reads its last line. Without
root or iproute2 the namespaces cannot be made, and it runs the same soak on one host instead
(every fault but the network ones). The seed is fixed, so a failure here can be replayed with
the command the output starts with; the soak's own output (fault log, findings) is printed on
failure.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench import chaos_net
from tests.e2e.cluster import ROOT

pytestmark = [pytest.mark.faults, pytest.mark.chaos]

SEED = 18
MINUTES = 2
SUMMARY = re.compile(r"^faults (\d+) tasks (\d+) lost (\d+) doubled (\d+) stuck (\d+)$")


def test_two_minutes_of_faults_lose_double_and_strand_nothing():
    hosts = 1 if chaos_net.preflight() else 3
    result = subprocess.run(
        [sys.executable, "bench/chaos.py", "--minutes", str(MINUTES), "--hosts", str(hosts),
         "--seed", str(SEED)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=MINUTES * 60 + 900,
    )  # fmt: skip
    output = result.stdout + result.stderr
    last = result.stdout.rstrip().splitlines()[-1] if result.stdout.strip() else ""
    match = SUMMARY.match(last)
    assert match, output
    faults, tasks, lost, doubled, stuck = map(int, match.groups())
    assert (lost, doubled, stuck) == (0, 0, 0), output
    assert result.returncode == 0, output  # and no contradiction either
    assert faults >= 5 and tasks >= 100, output

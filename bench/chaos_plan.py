"""What the chaos soak does and when, from its seed alone: the workload and the fault schedule.

Both come from their own random streams of the seed, so a run can be repeated: the same jobs (shapes,
sleeps, failures, due times, cancels) and the same faults (kinds, targets, durations, gaps) in the
same order. How far down the fault list a run gets depends on how long each fault takes on the
machine, and which transaction a "frozen in a transaction" fault catches depends on timing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

PROCESS = "chaos.work"
GROUP_ALL = "CHAOS_ALL"  # served by every batch server
GROUP_SOME = "CHAOS_SOME"  # served by all servers but the first
DESCRIPTION_PREFIX = "chaos"

# Job shapes and how often each comes (weights).
JOB_KINDS = {
    "chain": 30,
    "fanout": 15,
    "branches": 20,
    "long": 10,
    "recurring": 8,
    "cancel": 10,
}
MEAN_JOB_GAP_SECONDS = 6.0

# Fault kinds and how often each comes (weights). NETWORK_FAULTS need --hosts 2 or more.
FAULTS = {
    "worker-kill": 10,  # SIGKILL of a worker and its pool, restarted after a while
    "worker-stop": 8,  # SIGSTOP of a worker, SIGCONT after a while (sometimes past the lease)
    "worker-term": 6,  # warm shutdown (SIGTERM to the main process), then started again
    "worker-freeze-in-tx": 7,  # SIGSTOP while one of its sessions is inside a transaction
    "beat-kill": 5,  # SIGKILL of beat, started again after a while
    "beat-twice": 4,  # a second beat for a while
    "redis-restart": 5,  # Redis stopped (its queues are gone: no persistence) and started
    "redis-drop": 5,  # CLIENT KILL of every client
    "redis-full": 4,  # maxmemory at what it uses, noeviction: every write is refused
    "redis-slow": 4,  # Redis frozen (SIGSTOP) for a few seconds
    "pg-restart": 5,  # PostgreSQL fast shutdown and start
    "pg-outage": 4,  # PostgreSQL down for longer than the lease
    "host-cut": 5,  # the host's link down for longer than the lease
    "host-cut-in-tx": 3,  # the same, while its worker is inside a transaction
    "host-slow": 4,  # delay (netem) or a slow link (tbf) on the host
    "host-lossy": 4,  # packet loss (netem or nftables) on the host
    "host-no-broker": 4,  # the host loses its route to Redis only
    "host-no-db": 4,  # the host loses its route to PostgreSQL only
}
NETWORK_FAULTS = frozenset(k for k in FAULTS if k.startswith("host-"))


@dataclass(frozen=True)
class PlannedTask:
    key: str
    seconds: float
    group: str
    fail_attempts: int = 0
    max_retries: int = 0
    poll_cancel: bool = True
    ignore_failure: bool = False
    condition_type: str = "all"
    conditions: tuple[tuple[str, str], ...] = ()  # (parent key, expected status)

    def to_import(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "description": self.key,
            "process": PROCESS,
            "parameters": {
                "seconds": self.seconds,
                "fail_attempts": self.fail_attempts,
                "poll_cancel": self.poll_cancel,
            },
            "group": self.group,
            "max_retries": self.max_retries,
            "ignore_failure": self.ignore_failure,
            "condition_type": self.condition_type,
            "conditions": [{"task": k, "status": s} for k, s in self.conditions],
        }


@dataclass(frozen=True)
class PlannedJob:
    index: int
    kind: str
    due: float  # seconds after the soak's start
    tasks: tuple[PlannedTask, ...]
    runs: int = 1  # a recurring job's runs (every minute)
    cancel_after: float | None = None  # seconds after ``due``

    def description(self, seed: int) -> str:
        return f"{DESCRIPTION_PREFIX} {seed}#{self.index} {self.kind}"

    def to_import(self, seed: int, start: dt.datetime) -> dict[str, Any]:
        due = start + dt.timedelta(seconds=self.due)
        job: dict[str, Any] = {
            "description": self.description(seed),
            "scheduled_start": due.isoformat(),
            "tasks": [t.to_import() for t in self.tasks],
        }
        if self.runs > 1:
            job["recurrence"] = {
                "start": due.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds"),
                "timezone": "UTC",
                "pattern": {"unit": "minutes", "every": 1},
                "end": {"after": self.runs},
            }
        return job


@dataclass(frozen=True)
class PlannedFault:
    number: int
    kind: str
    target: int  # which worker or host (an index, taken modulo their number)
    seconds: float  # how long it lasts (down, frozen, cut...)
    gap: float  # quiet seconds before it


@dataclass
class Plan:
    seed: int
    minutes: float
    hosts: int
    lease: float
    jobs: list[PlannedJob] = field(default_factory=list)

    def faults(self, kinds: dict[str, int] | None = None) -> Iterator[PlannedFault]:
        """The endless fault schedule of this seed, over ``kinds`` (default: all that apply)."""
        if kinds is None:
            kinds = {k: w for k, w in FAULTS.items() if self.hosts > 1 or k not in NETWORK_FAULTS}
        rng = random.Random(f"{self.seed}:faults")
        names, weights = list(kinds), list(kinds.values())
        for number in itertools.count(1):
            kind = rng.choices(names, weights)[0]
            yield PlannedFault(
                number=number,
                kind=kind,
                target=rng.randrange(1000),
                seconds=round(_fault_seconds(rng, kind, self.lease), 1),
                gap=round(rng.uniform(1, 4), 1),
            )


def _fault_seconds(rng: random.Random, kind: str, lease: float) -> float:
    if kind in ("worker-kill", "beat-kill"):
        return rng.uniform(1, 6)  # down before it is started again
    if kind == "worker-stop":
        return rng.uniform(1, lease + 6)
    if kind == "worker-freeze-in-tx":
        return rng.uniform(lease + 1, lease + 6)
    if kind == "beat-twice":
        return rng.uniform(8, 20)
    if kind == "redis-restart":
        return rng.uniform(0, 3)
    if kind == "redis-full":
        return rng.uniform(3, 10)
    if kind == "redis-slow":
        return rng.uniform(1, 5)
    if kind == "pg-restart":
        return rng.uniform(0, 2)
    if kind == "pg-outage":
        return rng.uniform(lease + 2, lease + 8)
    if kind in ("host-cut", "host-cut-in-tx"):
        return rng.uniform(lease + 2, lease + 10)
    if kind in ("host-slow", "host-lossy"):
        return rng.uniform(6, 15)
    if kind in ("host-no-broker", "host-no-db"):
        return rng.uniform(3, lease + 8)
    return 0.0  # instant: worker-term (waits for the worker), redis-drop


def make_plan(*, seed: int, minutes: float, hosts: int, lease: float) -> Plan:
    """The workload: jobs due from 5 s after the start until 15 s before the faults stop."""
    plan = Plan(seed=seed, minutes=minutes, hosts=hosts, lease=lease)
    rng = random.Random(f"{seed}:work")
    kinds, weights = list(JOB_KINDS), list(JOB_KINDS.values())
    due, last = 5.0, max(10.0, minutes * 60 - 15)
    index = 0
    while due < last:
        index += 1
        kind = rng.choices(kinds, weights)[0]
        plan.jobs.append(_job(rng, index, kind, round(due, 1)))
        due += rng.expovariate(1 / MEAN_JOB_GAP_SECONDS)
    return plan


def _group(rng: random.Random) -> str:
    return GROUP_ALL if rng.random() < 0.7 else GROUP_SOME


def _flaky(rng: random.Random, task: PlannedTask) -> PlannedTask:
    """Sometimes a task that fails its first attempt(s) and has retries enough to end Ended."""
    if rng.random() < 0.2:
        fails = rng.randint(1, 2)
        return dataclasses.replace(task, fail_attempts=fails, max_retries=fails + rng.randint(0, 1))
    return task


def _job(rng: random.Random, index: int, kind: str, due: float) -> PlannedJob:
    tasks: list[PlannedTask] = []
    runs, cancel_after = 1, None
    if kind == "chain":
        for i in range(rng.randint(3, 8)):
            task = PlannedTask(
                f"c{i}",
                round(rng.uniform(0.2, 2), 2),
                _group(rng),
                conditions=((f"c{i - 1}", "ended"),) if i else (),
            )
            tasks.append(_flaky(rng, task))
    elif kind == "fanout":
        width = rng.randint(20, 50)
        tasks.append(PlannedTask("root", 0.3, _group(rng)))
        for i in range(width):
            task = PlannedTask(
                f"f{i}",
                round(rng.uniform(0.1, 0.6), 2),
                _group(rng),
                conditions=(("root", "ended"),),
            )
            tasks.append(_flaky(rng, task))
        children = tuple((f"f{i}", "ended") for i in range(width))
        tasks.append(PlannedTask("join-all", 0.2, _group(rng), conditions=children))
        tasks.append(
            PlannedTask("join-any", 0.2, _group(rng), condition_type="any", conditions=children)
        )
    elif kind == "branches":
        # A fails for good half the time: its Error branch runs and its Ended branch does not.
        fails = rng.random() < 0.5
        retries = rng.randint(0, 1)
        tasks += [
            PlannedTask(
                "a",
                round(rng.uniform(0.2, 1.5), 2),
                _group(rng),
                fail_attempts=9 if fails else 0,
                max_retries=retries,
                ignore_failure=rng.random() < 0.5,
            ),
            PlannedTask("on-ended", 0.3, _group(rng), conditions=(("a", "ended"),)),
            PlannedTask("on-error", 0.3, _group(rng), conditions=(("a", "error"),)),
            PlannedTask("on-either", 0.3, _group(rng), conditions=(("a", "ended_or_error"),)),
            PlannedTask(
                "any",
                0.3,
                _group(rng),
                condition_type="any",
                conditions=(("on-ended", "ended"), ("on-error", "ended")),
            ),
            PlannedTask(
                "all", 0.3, _group(rng), conditions=(("on-either", "ended"), ("any", "ended"))
            ),
        ]
    elif kind == "long":
        n = rng.randint(1, 3)
        for i in range(n):
            tasks.append(
                PlannedTask(
                    f"l{i}",
                    round(rng.uniform(5, 15), 1),
                    _group(rng),
                    poll_cancel=rng.random() < 0.5,
                    max_retries=rng.randint(0, 2),
                )
            )
        parents = tuple((f"l{i}", "ended_or_error") for i in range(n))
        tasks.append(PlannedTask("after", 0.3, _group(rng), conditions=parents))
    elif kind == "recurring":
        runs = rng.randint(2, 3)
        for i in range(rng.randint(1, 3)):
            task = PlannedTask(
                f"r{i}",
                round(rng.uniform(0.2, 2), 2),
                _group(rng),
                conditions=((f"r{i - 1}", "ended"),) if i else (),
            )
            tasks.append(_flaky(rng, task))
    elif kind == "cancel":
        # Canceled while its long tasks run; one of them ignores the cancel half the time, so
        # it is aborted (killed) after the grace period.
        tasks += [
            PlannedTask("slow-1", round(rng.uniform(8, 20), 1), _group(rng)),
            PlannedTask(
                "slow-2", round(rng.uniform(8, 20), 1), _group(rng), poll_cancel=rng.random() < 0.5
            ),
            PlannedTask("then", 0.3, _group(rng), conditions=(("slow-1", "ended"),)),
        ]
        cancel_after = round(rng.uniform(2, 6), 1)
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    return PlannedJob(index, kind, due, tuple(tasks), runs, cancel_after)

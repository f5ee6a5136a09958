"""The engine at scale next to plain Celery: one job of 10,000 tasks, 1,000 small jobs at once.

    .venv/bin/python bench/scale.py [--tasks 10000] [--jobs 1000] [--job-tasks 3]

The same machinery as bench/engine_vs_celery.py (a private database, a dedicated Redis
database, two batch servers x prefork 2, a real beat; everything stopped and dropped at the end),
with two shapes, each measured against plain Celery doing the same number of no-op tasks on the
same broker, queue and workers in the same run:

(a) one job of ``--tasks`` independent ``demo.noop`` tasks, against a Celery ``group`` of as
    many ``bench.noop`` tasks; tasks/s over the job run (started_at -> ended_at) and over the
    group (sending -> last completion).
(b) ``--jobs`` jobs of ``--job-tasks`` tasks each, every task after the one before (a small
    chain), imported for tomorrow and then made due in one UPDATE (released at once); against
    as many Celery ``chain``s of ``bench.noop``, sent at once. tasks/s = all tasks / (the
    release -> the last job run's end); for Celery, sending -> the last completion.

See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import engine_vs_celery as evc
from bench.common import load_average
from bench.engine_vs_celery import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    QUEUE,
    RESULTS_DIR,
    noop_task,
    step,
    table,
    ts,
)


class ScaleBench(evc.Bench):
    def engine_many_jobs(self) -> dict[str, Any]:
        from django.db.models.functions import Now

        from batchadmin.jobs.models import BatchJob

        jobs, k = self.args.jobs, self.args.job_tasks
        # Imported for tomorrow, then all made due in one UPDATE: the import takes seconds and
        # the tick would otherwise start the first jobs while the last are still being written.
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).isoformat()
        data = {
            "jobs": [
                {
                    "description": f"bench: small job {j}",
                    "scheduled_start": tomorrow,
                    "tasks": [noop_task(f"s{i}", f"s{i - 1}" if i else None) for i in range(k)],
                }
                for j in range(jobs)
            ]
        }
        ids, import_started, import_ended = self.import_jobs(data)
        cpu = self.cpu()
        released = time.time()
        BatchJob.objects.filter(pk__in=ids).update(scheduled_start=Now())
        runs = self.wait_runs(ids, f"{jobs} jobs of {k} tasks")
        cpu_ms = self.cpu_ms_per_task(cpu, jobs * k)
        first_start = min(ts(r.started_at) for r in runs)
        last_start = max(ts(r.started_at) for r in runs)
        last_end = max(ts(r.ended_at) for r in runs)
        durations = [(r.ended_at - r.started_at).total_seconds() for r in runs]
        return {
            "jobs": jobs,
            "tasks": jobs * k,
            "tasks_per_s": jobs * k / (last_end - released),
            "run_s": last_end - released,
            "import_s": import_ended - import_started,
            "tasks_per_s_from_first_start": jobs * k / (last_end - first_start),
            "first_start_after_release_s": first_start - released,
            "starts_spread_s": last_start - first_start,
            "job_run_s": evc.summary(durations),
            "cpu_ms_per_task": cpu_ms,
        }

    def celery_many_chains(self) -> dict[str, Any]:
        from celery import chain

        from bench.celery_tasks import noop

        jobs, k = self.args.jobs, self.args.job_tasks
        n = jobs * k
        key = f"bench:chains:{uuid.uuid4().hex}"
        cpu = self.cpu()
        sent_at = time.time()
        for _ in range(jobs):
            chain(*[noop.si(key, n) for _ in range(k)]).apply_async(queue=QUEUE)
        published = time.time()
        done = float(
            self.wait_until(
                f"{jobs} Celery chains of {k}",
                self.args.timeout,
                lambda: self.redis.get(key + ":done"),
            )
        )
        cpu_ms = self.cpu_ms_per_task(cpu, n)
        return {
            "jobs": jobs,
            "tasks": n,
            "tasks_per_s": n / (done - sent_at),
            "run_s": done - sent_at,
            "publish_s": published - sent_at,
            "cpu_ms_per_task": cpu_ms,
        }

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.git = evc.git_state()
        load_before = load_average()
        self.setup()
        self.start_processes()
        phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            (f"engine: one job of {self.args.tasks} tasks", self.engine_throughput),
            (f"celery: group of {self.args.tasks}", self.celery_group),
            (
                f"engine: {self.args.jobs} jobs of {self.args.job_tasks} chained tasks",
                self.engine_many_jobs,
            ),
            (
                f"celery: {self.args.jobs} chains of {self.args.job_tasks}",
                self.celery_many_chains,
            ),
        ]
        step("warm-up")
        self.warm_up()
        figures: dict[str, dict[str, Any]] = {}
        for label, phase in phases:
            self.wait_queue_empty()
            self.note_foreign_processes()
            step(label)
            figures[phase.__name__] = phase()
        self.note_foreign_processes()
        if self.foreign:
            self.anomalies.append(
                f"{len(self.foreign)} other Celery/pytest/manage.py process(es) ran on this "
                "machine during the bench and shared its cores: "
                + "; ".join(f"{pid}: {cmd}" for pid, cmd in sorted(self.foreign.items())[:6])
            )
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "elapsed_s": time.time() - started,
            "settings": {
                "tasks": self.args.tasks,
                "jobs": self.args.jobs,
                "job_tasks": self.args.job_tasks,
                "workers": self.args.workers,
                "concurrency": self.args.concurrency,
            },
            "load": {"before": load_before, "after": load_average()},
            "git": self.git,
            "figures": figures,
            "anomalies": self.anomalies,
        }


# Issue 16's targets: one big job as engine_vs_celery.py's; small jobs released at once.
TARGET_ONE_JOB = evc.TARGET_RATIO
TARGET_MANY_JOBS = 0.40


def report(r: dict[str, Any]) -> str:
    s, f = r["settings"], r["figures"]
    a, cg = f["engine_throughput"], f["celery_group"]
    m, cm = f["engine_many_jobs"], f["celery_many_chains"]
    kinds = ["workers", "postgres", "beat", "redis", "bench", "other", "total"]

    def target(ratio: float, wanted: float) -> str:
        return f"{'PASS' if ratio >= wanted else 'FAIL'} (>= {wanted:.0%})"

    one, many = a["tasks_per_s"] / cg["tasks_per_s"], m["tasks_per_s"] / cm["tasks_per_s"]
    rows = [
        (
            "",
            "engine tasks/s",
            "celery tasks/s",
            "engine / celery",
            "engine s",
            "celery s",
            "target",
        ),
        (
            f"one job of {s['tasks']:,} tasks",
            f"{a['tasks_per_s']:.0f}",
            f"{cg['tasks_per_s']:.0f}",
            f"{one:.0%}",
            f"{a['run_s']:.1f}",
            f"{cg['run_s']:.1f}",
            target(one, TARGET_ONE_JOB),
        ),
        (
            f"{s['jobs']:,} jobs x {s['job_tasks']} chained tasks",
            f"{m['tasks_per_s']:.0f}",
            f"{cm['tasks_per_s']:.0f}",
            f"{many:.0%}",
            f"{m['run_s']:.1f}",
            f"{cm['run_s']:.1f}",
            target(many, TARGET_MANY_JOBS),
        ),
    ]
    cpu = [
        ("CPU ms per task", *kinds),
        *(
            (label, *(f"{x['cpu_ms_per_task'][k]:.2f}" for k in kinds))
            for label, x in (
                (f"engine, one job of {s['tasks']:,}", a),
                (f"celery, group of {s['tasks']:,}", cg),
                (f"engine, {s['jobs']:,} jobs", m),
                (f"celery, {s['jobs']:,} chains", cm),
            )
        ),
    ]
    lines = [
        f"batchadmin engine vs plain Celery at scale: {s['workers']} workers x prefork "
        f"{s['concurrency']}, same broker, queue and workers; engine at commit {r['git']['commit']}",
        f"{r['load']['before']} before, {r['load']['after']} after",
        "",
        *table(rows),
        "",
        f"one job: import {a['import_s']:.1f}s; from the import to the run's end "
        f"{a['tasks_per_s_from_import']:.0f} tasks/s; per server {a['per_server']}; "
        f"task claim->finish median {a['task_ms']['median']:.1f} ms",
        f"{s['jobs']:,} jobs: import {m['import_s']:.1f}s (not measured: imported for "
        f"tomorrow, then released in one UPDATE); first job started "
        f"{m['first_start_after_release_s']:.2f}s after the release, the last "
        f"{m['starts_spread_s']:.2f}s after the first; "
        f"{m['tasks_per_s_from_first_start']:.0f} tasks/s from the first start; job run median "
        f"{m['job_run_s']['median']:.1f}s, max {m['job_run_s']['max']:.1f}s",
        f"celery: publishing the group took {cg['publish_s']:.1f}s, the chains "
        f"{cm['publish_s']:.1f}s (inside the measured window, as the engine's import is)",
        "",
        *table(cpu),
        "(postgres and redis: all their processes; other: everything else on the machine)",
        f"elapsed {r['elapsed_s']:.0f}s",
    ]
    if r["anomalies"]:
        lines += ["", "anomalies:", *(f"  - {x}" for x in r["anomalies"])]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="The engine at scale against plain Celery on the same workers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--tasks", type=int, default=10_000, help="Tasks of the one big job (a).")
    p.add_argument("--jobs", type=int, default=1000, help="Small jobs released at once (b).")
    p.add_argument("--job-tasks", type=int, default=3, help="Chained tasks of each small job.")
    p.add_argument("--workers", type=int, default=2, help="Batch servers (Celery workers).")
    p.add_argument("--concurrency", type=int, default=2, help="Prefork processes per worker.")
    p.add_argument("--timeout", type=float, default=600.0, help="Seconds allowed per phase.")
    p.add_argument("--redis-db", type=int, default=13, help="Redis database (flushed!).")
    p.add_argument("--keep-db", action="store_true", help="Do not drop the bench database.")
    p.add_argument("--db-name", default="", help="Database name (default batchadmin_bench_<pid>).")
    p.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "scale.json", help="Where the JSON goes."
    )
    ours = p.parse_args(argv)
    if ours.tasks < 1 or ours.jobs < 1 or ours.job_tasks < 1:
        p.error("--tasks, --jobs and --job-tasks >= 1")
    # The engine bench's own options (its defaults), with ours on top.
    args = evc.parse_args(
        [
            "--tasks",
            str(ours.tasks),
            "--workers",
            str(ours.workers),
            "--concurrency",
            str(ours.concurrency),
            "--timeout",
            str(ours.timeout),
            "--redis-db",
            str(ours.redis_db),
        ]
        + (["--keep-db"] if ours.keep_db else [])
    )
    args.jobs, args.job_tasks, args.output = ours.jobs, ours.job_tasks, ours.output
    args.db_name = ours.db_name
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    bench = ScaleBench(args)
    if args.db_name:
        bench.db_name = args.db_name
        bench.env["DATABASE_URL"] = f"postgres://{PG_USER}@{PG_HOST}:{PG_PORT}/{args.db_name}"
    results = evc.run_to_end(bench)
    evc.write_figures(args.output, results, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

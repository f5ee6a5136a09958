"""The engine in the shape other job queues publish their figures: 1, 2 and 4 workers.

    .venv/bin/python bench/peers.py [--workers 1,2,4] [--tasks 2000] [--rounds 3]

procrastinate, River, Oban and graphile-worker publish completions per second at a few worker
counts, and a latency. For each count W this runs one batch server (one Celery worker,
prefork W) and a beat on a private database and Redis database, with engine_vs_celery.py's
machinery (everything stopped and dropped at the end), and measures in the same run:

- throughput: ``--rounds`` jobs of ``--tasks`` independent no-op tasks, completions/s over
  each run (start -> end), the median round; beside it a Celery group of as many no-op
  tasks on the same worker and broker;
- latency: a chain of 100 no-op tasks, parent end -> child start per hop (median, p99), the
  latency of a task made ready on an idle queue; beside it a Celery chain.

Each worker count runs in a process of its own (Django is set up once per process). The
machine and versions are printed with the table: peers' published figures come from other
machines, so compare the shape, and the Celery column, which ran here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import engine_vs_celery as evc
from bench.engine_vs_celery import RESULTS_DIR, median_run, step, table


class PeerBench(evc.Bench):
    def run(self) -> dict[str, Any]:
        self.git = evc.git_state()
        self.setup()
        self.start_processes()
        step(f"warm-up, 1 worker x prefork {self.args.concurrency}")
        self.warm_up()
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "celery": []}
        for i in range(self.args.repeat):
            for name, phase in (("engine", self.engine_throughput), ("celery", self.celery_group)):
                self.wait_queue_empty()
                step(f"{name}: {self.args.tasks} tasks (round {i + 1} of {self.args.repeat})")
                runs[name].append(phase())
        self.wait_queue_empty()
        step("engine: chain")
        chain = self.engine_chain()
        step("celery: chain")
        celery_chain = self.celery_chain()
        return {
            "workers": self.args.concurrency,
            "engine": median_run(runs["engine"]),
            "engine_rounds": [r["tasks_per_s"] for r in runs["engine"]],
            "celery": median_run(runs["celery"]),
            "celery_rounds": [r["tasks_per_s"] for r in runs["celery"]],
            "engine_hop_ms": chain["hop_ms"],
            "celery_hop_ms": celery_chain["hop_ms"],
            "machine": self.machine(),
            "git": self.git,
            "anomalies": self.anomalies,
        }


def one(workers: int, args: argparse.Namespace, output: Path) -> int:
    """One worker count, in this process; its figures go to ``output`` as JSON."""
    bench_args = evc.parse_args(
        [
            "--tasks",
            str(args.tasks),
            "--repeat",
            str(args.rounds),
            "--workers",
            "1",
            "--concurrency",
            str(workers),
            "--redis-db",
            str(args.redis_db),
            "--timeout",
            str(args.timeout),
        ]
    )
    results = evc.run_to_end(PeerBench(bench_args))
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def report(results: list[dict[str, Any]]) -> str:
    rows: list[Sequence[str]] = [
        (
            "workers",
            "engine tasks/s",
            "rounds",
            "celery tasks/s",
            "engine / celery",
            "hop median / p99 ms",
            "celery hop ms",
        )
    ]
    for r in results:
        e, c = r["engine"]["tasks_per_s"], r["celery"]["tasks_per_s"]
        rows.append(
            (
                str(r["workers"]),
                f"{e:.0f}",
                " ".join(f"{x:.0f}" for x in r["engine_rounds"]),
                f"{c:.0f}",
                f"{e / c:.0%}",
                f"{r['engine_hop_ms']['median']:.1f} / {r['engine_hop_ms']['p99']:.1f}",
                f"{r['celery_hop_ms']['median']:.1f} / {r['celery_hop_ms']['p99']:.1f}",
            )
        )
    m = results[0]["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    tasks = int(results[0]["engine"]["tasks"])
    lines = [
        f"batchadmin at commit {results[0]['git'].get('commit', '?')}: one batch server "
        f"(Celery worker, prefork W), one job of {tasks:,} no-op tasks per round; "
        "the median round",
        "",
        *table(rows),
        "",
        f"machine: {m['cores']} cores ({m['cpu']}), {m['platform']}",
        f"versions: Python {m['python']}, {packages}, PostgreSQL {m['postgresql']}, "
        f"Redis {m['redis']}",
        "workers and PostgreSQL share the machine's cores; latency: a chain of 100 tasks, "
        "parent end -> child start",
    ]
    anomalies = [a for r in results for a in r["anomalies"]]
    if anomalies:
        lines += ["", "anomalies:", *(f"  - {a}" for a in anomalies)]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--workers", default="1,2,4", help="Worker counts (prefork processes).")
    p.add_argument("--tasks", type=int, default=2000, help="Tasks of each round's job.")
    p.add_argument("--rounds", type=int, default=3, help="Rounds per worker count.")
    p.add_argument("--timeout", type=float, default=300.0, help="Seconds allowed per phase.")
    p.add_argument("--redis-db", type=int, default=13, help="Redis database (flushed!).")
    p.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "peers.json", help="Where the JSON goes."
    )
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # a child's count
    p.add_argument("--one-output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        p.error(f"--workers: whole numbers separated by commas, got {args.workers!r}")
    if not args.counts or any(w < 1 or w > 64 for w in args.counts):
        p.error("--workers: each count from 1 to 64")
    if args.tasks < 1 or args.rounds < 1:
        p.error("--tasks and --rounds >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.one:
        return one(args.one, args, args.one_output)
    results = []
    with tempfile.TemporaryDirectory(prefix="batchadmin-peers-") as tmp:
        for workers in args.counts:
            out = Path(tmp) / f"{workers}.json"
            child = [
                __file__,
                *(["--tasks", str(args.tasks), "--rounds", str(args.rounds)]),
                *(["--timeout", str(args.timeout), "--redis-db", str(args.redis_db)]),
                *(["--one", str(workers), "--one-output", str(out)]),
            ]
            code = subprocess.call([sys.executable, *child])
            if code != 0:
                print(f"\nthe run with {workers} worker(s) failed (exit {code})", file=sys.stderr)
                return code
            results.append(json.loads(out.read_text()))
    evc.write_figures(args.output, results, report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

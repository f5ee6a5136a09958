"""How long `manage.py batch import` takes for one job of 100,000 tasks (issue 13: it took 332 s
when the duplicate-key check counted every key for every key).

    .venv/bin/python bench/import_big.py [--tasks 100000] [--chain 10]

Creates a private database, writes the file (``--tasks`` ``demo.noop`` tasks, every
``--chain``-th task with a condition on the one before it, so the condition and cycle checks
have work too), and times the import command from start to exit in a subprocess, as a person
runs it; then the same for a tenth of the tasks, to show that the time grows linearly. Prints
the times; asserts nothing (the bench rule). Needs PostgreSQL at 127.0.0.1:5432 (user postgres);
Redis only as Django's settings name it (``--redis-url``), the import sends no message.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import PrivateDatabase
from bench.engine_vs_celery import ROOT, step


def job_file(tasks: int, chain: int) -> dict[str, object]:
    items: list[dict[str, object]] = []
    for i in range(1, tasks + 1):
        item: dict[str, object] = {"key": f"T{i}", "process": "demo.noop"}
        if chain and i > 1 and i % chain == 0:
            item["conditions"] = [{"task": f"T{i - 1}", "status": "ended"}]
        items.append(item)
    return {"description": f"Import bench, {tasks:,} tasks", "status": "withhold", "tasks": items}


def time_import(env: dict[str, str], tasks: int, chain: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job_file(tasks, chain), f)
        path = f.name
    try:
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "manage.py", "batch", "import", path],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
    finally:
        os.unlink(path)
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr.strip()}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--chain", type=int, default=10, help="every Nth task has a condition")
    parser.add_argument("--db-name", default=f"batchadmin_bench_import_{os.getpid()}")
    parser.add_argument("--redis-url", default=os.environ.get("E2E_REDIS_URL", ""))
    parser.add_argument("--keep-db", action="store_true")
    args = parser.parse_args()
    db = PrivateDatabase(args.db_name, 13, keep=args.keep_db)
    if args.redis_url:
        db.env["CELERY_BROKER_URL"] = args.redis_url
    try:
        step(f"database {db.name}")
        db.create()
        results = []
        for tasks in (args.tasks // 10, args.tasks):
            step(f"importing one job of {tasks:,} tasks")
            seconds = time_import(db.env, tasks, args.chain)
            results.append((tasks, seconds))
        print()
        for tasks, seconds in results:
            print(f"{tasks:>9,} tasks: {seconds:7.1f} s  ({tasks / seconds:,.0f} tasks/s)")
        (small, t_small), (big, t_big) = results
        print(f"time ratio {t_big / t_small:.1f} for {big / small:.0f}x the tasks")
    finally:
        db.drop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

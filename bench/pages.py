"""Page response times with a full table: 100,000 jobs, and a job form with 1,000 tasks.

    .venv/bin/python bench/pages.py [--jobs 100000] [--attempts 1000000] [--big-tasks 1000]
        [-n 200] [-c 4] [--only inquiries]

Creates a private database and fills it in SQL (bench/common.py): ``--jobs`` jobs, most of them
finished (3 tasks each, one run, an attempt and a log line per task; one in twenty ended in
Error), 5% not yet run (Withhold, or Waiting for tomorrow), plus one Withhold job of
``--big-tasks`` tasks whose conditions form a tree (each task after the one a third of the way
back: a fan-out chain). The finished jobs get earlier runs (a day apart, an attempt per task on
one of three servers, one in twenty failed with an error text) until the task attempts number
at least ``--attempts``: the Batch job history and Batch tasks inquiries read those. Starts gunicorn on loopback with DEBUG=0 (``--workers`` 4 sync
workers, as deploy/systemd/batchadmin-web.service; ``--workers 2 --threads 4`` is the e2e
tests' server), logs in as a Batch job manager through the login form, and measures each
page with ApacheBench (``ab``, package apache2-utils): ``-n`` requests at concurrency ``-c``
after ``--warmup`` requests. Prints p50/p95/p99 against the 300 ms (p95) target, and for each
page the queries one request issues and their total database time (in-process, Django's test
client with the same database), to tell SQL from template time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PrivateDatabase,
    analyze,
    fill_finished_jobs,
    fill_open_jobs,
    fill_past_runs,
    load_average,
    percentile,
    scalar,
    sql,
)
from bench.engine_vs_celery import RESULTS_DIR, ROOT, BenchError, step, table

TARGET_P95_MS = 300.0
USERNAME = "bench-manager"
PASSWORD = "bench-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_manager() -> int:
    from django.contrib.auth.models import Group, Permission, User
    from django.db.models import Q

    from batchadmin.accounts.models import MANAGER

    user = User.objects.create_user(USERNAME, "bench@example.org", PASSWORD)
    user.groups.add(Group.objects.get_or_create(name=MANAGER)[0])
    user.user_permissions.set(
        Permission.objects.filter(Q(content_type__app_label__in=["jobs", "servers"]))
    )
    return user.pk


# The Batch job history and Batch tasks inquiries (jobs/inquiries.py), as operators use them.
INQUIRY_PAGES = [
    ("job history inquiry", "/jobs/history/"),
    ("job history, failed, error search", "/jobs/history/?status=error&error=ledger"),
    ("job history, page 200", "/jobs/history/?page=200"),
    ("job history, by duration", "/jobs/history/?o=-duration"),
    ("tasks inquiry", "/jobs/tasks/"),
    ("tasks inquiry, error search", "/jobs/tasks/?error=ledger+locked"),
    ("tasks inquiry, last night", "/jobs/tasks/?started_after=2026-01-01+00:00&o=started_at"),
    ("tasks inquiry, page 200", "/jobs/tasks/?page=200"),
]


def fill_history(attempts: int, finished: int) -> None:
    """Earlier runs of the finished jobs until the attempts number at least ``attempts``."""
    from batchadmin.servers.models import BatchServer

    servers = [BatchServer.objects.get_or_create(name=f"aos{i}")[0].pk for i in (1, 2, 3)]
    have = int(scalar("SELECT count(*) FROM jobs_batchtaskrun"))
    per_run = 3  # the fill's tasks per finished job
    if attempts <= have or finished <= 0:
        return
    runs_per_job = -(-(attempts - have) // (finished * per_run))
    step(f"filling {runs_per_job} earlier runs per finished job (to {attempts:,} attempts)")
    first, last = sql("SELECT min(id), max(id) FROM jobs_batchjob")[0]
    added = 0
    for start in range(int(first), int(last) + 1, HISTORY_BATCH):
        added += fill_past_runs(
            runs_per_job, first_job=start, last_job=start + HISTORY_BATCH - 1, server_ids=servers
        )
    step(f"  {added:,} attempts added")


HISTORY_BATCH = 5_000  # jobs per statement of the history fill


def make_big_job(tasks: int, user_id: int) -> int:
    from django.utils.timezone import now

    from batchadmin.jobs.models import BatchJob, BatchStatus, BatchTask, BatchTaskCondition
    from batchadmin.servers.models import BatchGroup

    group = BatchGroup.objects.default()
    job = BatchJob.objects.create(
        description=f"bench: {tasks} tasks",
        status=BatchStatus.WITHHOLD,
        scheduled_start=now(),
        created_by_id=user_id,
        run_as_id=user_id,
    )
    rows = BatchTask.objects.bulk_create(
        BatchTask(
            job=job,
            key=f"t{i:04d}",
            description=f"step {i}",
            process="demo.noop",
            group=group,
            position=i,
        )
        for i in range(tasks)
    )
    BatchTaskCondition.objects.bulk_create(
        BatchTaskCondition(task=rows[i], depends_on=rows[(i - 1) // 3]) for i in range(1, tasks)
    )
    return job.pk


class Web:
    """gunicorn on loopback, in its own process group."""

    def __init__(self, env: dict[str, str], log: Path, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = env

    def start(self) -> None:
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    gunicorn,
                    "batchadmin.wsgi",
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    "--workers",
                    str(self.workers),
                    "--threads",
                    str(self.threads),
                    # Not gunicorn's one control socket per user, shared with other gunicorns.
                    "--no-control-socket",
                ],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"gunicorn exited with {self.proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError):
                if self.get("/login/")[0] == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"gunicorn did not answer in 60s; see {self.log}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None

    def request(
        self, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], list[str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            cookies = resp.headers.get_all("Set-Cookie") or []
            return resp.status, dict(resp.headers.items()), cookies, text
        finally:
            conn.close()

    def get(self, path: str, cookie: str = "") -> tuple[int, str]:
        status, _, _, text = self.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        return status, text

    def login(self) -> str:
        """A session cookie, from the real login form (CSRF token and all)."""
        _, _, cookies, text = self.request("GET", "/login/")
        csrf = _cookie(cookies, "csrftoken")
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', text)
        if not csrf or not match:
            raise BenchError("the login page gave no CSRF token")
        body = urllib.parse.urlencode(
            {"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": match.group(1)}
        )
        status, _, cookies, _ = self.request(
            "POST",
            "/login/",
            body,
            {
                "Content-Type": "application/x-www-form-urlencoded",
                "Cookie": f"csrftoken={csrf}",
                "Referer": self.url + "/login/",
            },
        )
        session = _cookie(cookies, "sessionid")
        if status != 302 or not session:
            raise BenchError(f"logging in failed (HTTP {status})")
        return f"sessionid={session}; csrftoken={csrf}"


def _cookie(set_cookies: list[str], name: str) -> str:
    for header in set_cookies:
        key, _, rest = header.partition("=")
        if key.strip() == name:
            return rest.split(";", 1)[0]
    return ""


def ab(url: str, cookie: str, n: int, c: int, out_dir: Path) -> dict[str, Any]:
    """ApacheBench; percentiles from every request's total time (its -g file: ab's own CSV
    percentiles get the 99th wrong)."""
    times_path = out_dir / "ab-times.tsv"
    proc = subprocess.run(
        # -l: pages that show times (the workspace's "ago", a live duration) differ in length
        # from one request to the next; that is not a failure.
        ["ab", "-q", "-l", "-n", str(n), "-c", str(c), "-C", cookie, "-g", str(times_path), url],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise BenchError(f"ab {url} failed: {proc.stderr or proc.stdout}")
    out = proc.stdout
    for label in ("Failed requests", "Non-2xx responses"):
        m = re.search(rf"{label}:\s+(\d+)", out)
        if m and int(m.group(1)):
            raise BenchError(f"ab {url}: {label} {m.group(1)}\n{out}")
    with times_path.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ms = [float(r["ttime"]) for r in rows]
    if len(ms) != n:
        raise BenchError(f"ab {url}: {len(ms)} request times for {n} requests")
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    return {
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "rps": float(rps.group(1)) if rps else 0.0,
    }


def profile_page(path: str) -> tuple[int, float, float, str]:
    """One request in-process: queries, their total ms, the whole request's ms, slowest SQL."""
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    # WhiteNoise warns about the missing collectstatic output; the pages do not need it here.
    warnings.filterwarnings("ignore", message="No directory at")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(User.objects.get(username=USERNAME))
    client.get(path)  # warm
    with CaptureQueriesContext(connection) as cq:
        t0 = time.perf_counter()
        response = client.get(path)
        total_ms = (time.perf_counter() - t0) * 1000
    if response.status_code != 200:
        raise BenchError(f"{path}: HTTP {response.status_code} in the test client")
    times = [(float(q["time"]) * 1000, q["sql"]) for q in cq.captured_queries]
    slowest = max(times, default=(0.0, ""))
    return len(times), sum(t for t, _ in times), total_ms, f"{slowest[0]:.1f} ms: {slowest[1]}"


def run(args: argparse.Namespace) -> int:
    db = PrivateDatabase(args.db_name, args.redis_db, keep=args.keep_db)
    web: Web | None = None
    if shutil.which("ab") is None:
        print("ab not found: apt-get install -y apache2-utils", file=sys.stderr)
        return 2
    try:
        step(f"database {db.name}")
        db.create()
        user_id = make_manager()
        finished = args.jobs - args.jobs // 20
        step(f"filling {finished:,} finished jobs and {args.jobs - finished:,} not yet run")
        t0 = time.monotonic()
        batch = 10_000
        for offset in range(0, finished, batch):
            fill_finished_jobs(min(batch, finished - offset), 3, user_id=user_id)
        fill_open_jobs(args.jobs - finished, 3, user_id=user_id)
        big = make_big_job(args.big_tasks, user_id)
        fill_history(args.attempts, finished)
        analyze()
        jobs = int(scalar("SELECT count(*) FROM jobs_batchjob"))
        tasks = int(scalar("SELECT count(*) FROM jobs_batchtask"))
        attempts = int(scalar("SELECT count(*) FROM jobs_batchtaskrun"))
        runs = int(scalar("SELECT count(*) FROM jobs_batchjobrun"))
        step(
            f"  {jobs:,} jobs, {tasks:,} tasks, {runs:,} runs, {attempts:,} attempts "
            f"in {time.monotonic() - t0:.0f}s"
        )
        log_dir = RESULTS_DIR / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        web = Web(db.env, log_dir / "pages-gunicorn.log", args.workers, args.threads)
        web.start()
        cookie = web.login()
        server = int(scalar("SELECT id FROM servers_batchserver WHERE name = 'aos2'"))
        recurring = int(scalar("SELECT min(id) FROM jobs_batchjob WHERE status = 'ended'"))
        pages = [
            ("job list", "/jobs/"),
            ("job list, filtered + sorted", "/jobs/?status=ended&status=error&o=-scheduled_start"),
            ("job list, description search", "/jobs/?description=finished+job+99&o=description"),
            ("job list, page 500", "/jobs/?page=500"),
            (f"job form, {args.big_tasks} tasks", f"/jobs/{big}/"),
            ("workspace", "/"),
            *INQUIRY_PAGES,
            ("tasks inquiry, errors on aos2", f"/jobs/tasks/?status=error&server={server}"),
            ("job page's runs grid + Gantt", f"/jobs/{recurring}/runs/"),
        ]
        if args.only == "inquiries":
            pages = pages[6:]
        results: list[tuple[str, str, dict[str, Any], tuple[int, float, float, str]]] = []
        for label, path in pages:
            status, _ = web.get(path, cookie)
            if status != 200:
                raise BenchError(f"{path}: HTTP {status} (expected 200)")
            step(f"{label}: {path}")
            if args.warmup:
                ab(web.url + path, cookie, args.warmup, args.concurrency, log_dir)
            figures = ab(web.url + path, cookie, args.requests, args.concurrency, log_dir)
            results.append((label, path, figures, profile_page(path)))
        print()
        print(report(args, jobs, tasks, results))
        return 0 if all(r[2]["p95"] < TARGET_P95_MS for r in results) or not args.check else 3
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if web is not None:
            web.stop()
        db.drop()


def report(
    args: argparse.Namespace,
    jobs: int,
    tasks: int,
    results: list[tuple[str, str, dict[str, Any], tuple[int, float, float, str]]],
) -> str:
    rows: list[Sequence[str]] = [
        (
            "page",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "req/s",
            "target",
            "queries",
            "SQL ms",
            "1 req ms",
        ),
    ]
    for label, _, f, (queries, sql_ms, total_ms, _) in results:
        ok = "PASS" if f["p95"] < TARGET_P95_MS else "FAIL"
        rows.append(
            (
                label,
                f"{f['p50']:.0f}",
                f"{f['p95']:.0f}",
                f"{f['p99']:.0f}",
                f"{f['max']:.0f}",
                f"{f['rps']:.1f}",
                f"{ok} (p95 < {TARGET_P95_MS:g})",
                str(queries),
                f"{sql_ms:.0f}",
                f"{total_ms:.0f}",
            )
        )
    lines = [
        f"page response times: {jobs:,} jobs, {tasks:,} tasks; gunicorn {args.workers} workers "
        f"x {args.threads} thread{'s' if args.threads > 1 else ''}, "
        f"DEBUG=0, loopback; ab -n {args.requests} -c {args.concurrency} after "
        f"{args.warmup} warm-up requests; {load_average()}",
        "",
        *table(rows),
        "",
        "queries / SQL ms / 1 req ms: one request in the bench process (Django test client, "
        "same database, no load): how much of a page is SQL.",
        "",
        "slowest query per page:",
    ]
    for label, path, _, (_, _, _, slowest) in results:
        lines.append(f"  {label} ({path}): {slowest[:400]}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Measure page response times with 100,000 jobs in the table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--jobs", type=int, default=100_000, help="Jobs in the table.")
    p.add_argument("--big-tasks", type=int, default=1000, help="Tasks of the big job's form.")
    p.add_argument(
        "--attempts",
        type=int,
        default=1_000_000,
        help="Task attempts in the history, at least (earlier runs of the finished jobs).",
    )
    p.add_argument(
        "--only",
        choices=["all", "inquiries"],
        default="all",
        help="inquiries: measure only the history inquiries and the runs grid.",
    )
    p.add_argument("-n", "--requests", type=int, default=200, help="Measured requests per page.")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="Concurrent requests.")
    p.add_argument(
        "--workers", type=int, default=4, help="gunicorn workers (the systemd unit's: 4)."
    )
    p.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker.")
    p.add_argument("--warmup", type=int, default=20, help="Requests per page before measuring.")
    p.add_argument("--db-name", default=f"batchadmin_bench_pages_{os.getpid()}")
    p.add_argument("--redis-db", type=int, default=13, help="Redis database of the broker.")
    p.add_argument("--keep-db", action="store_true", help="Do not drop the database.")
    p.add_argument("--check", action="store_true", help="Exit 3 when a page misses the target.")
    args = p.parse_args(argv)
    if args.jobs < 20 or args.big_tasks < 2 or args.requests < 1 or args.concurrency < 1:
        p.error("--jobs >= 20, --big-tasks >= 2, -n >= 1, -c >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

"""The chaos soak: a random workload under a random fault every few seconds, then a verdict.

    .venv/bin/python bench/chaos.py [--minutes 4] [--hosts 3] [--seed N] [--faults KIND,...] [--keep]

It starts a Redis and a PostgreSQL of its own (never the machine's shared ones), batch servers
(``celery -A batchadmin worker``, prefork, concurrency 2) and beat, and drives them as an operator
would: processes, signals, the CLI (``manage.py batch import`` / ``batch status``) and SQL reads.
With ``--hosts N`` (N >= 2) each batch server runs on its own host, a Linux network namespace
joined to the soak's own by a veth pair and a bridge (bench/chaos_net.py); with one host, two
servers share the loopback.

For ``--minutes`` the workload (bench/chaos_plan.py: chains, fan-outs of 20-50, All/Any/Error
conditions, retries, flaky tasks, sleeps, recurring jobs, cancels) comes due while one fault after
another hits: workers killed, frozen (also inside a transaction), shut down warm; beat killed or
doubled; Redis restarted, emptied of clients, full or frozen; PostgreSQL restarted or away for
longer than the lease; with hosts, a host cut off, slowed, lossy, or without the broker or the
database. Every task body (bench/chaos_processes.py) marks its executions in a file outside the
engine. Then everything is healed, the work drains (bounded), and bench/chaos_check.py compares
the marks with the engine's records.

It prints the fault log, the findings and, as its last line,
``faults F tasks T lost L doubled D stuck S``; it exits 0 only when L, D and S are 0 and no
contradiction was found. A run is repeatable from its seed (printed at the start). Every process
it started, its namespaces and its data folders are removed at the end, also on Ctrl-C; the run's
folder (logs, marks) is kept when the verdict is not clean, or with --keep.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
import redis

from bench import chaos_check, chaos_net, chaos_plan
from bench.chaos_plan import GROUP_ALL, GROUP_SOME, PlannedFault, PlannedJob
from tests.e2e.private import PrivatePostgres, PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
CELERY = str(Path(sys.executable).with_name("celery"))
LEASE_SECONDS = 5.0
CONCURRENCY = 2
ENGINE_ENV = {
    "BATCH_LEASE_SECONDS": str(LEASE_SECONDS),
    "BATCH_HEARTBEAT_SECONDS": "2",
    "BATCH_RETRY_BACKOFF_SECONDS": "0.5",
    "BATCH_RETRY_BACKOFF_MAX_SECONDS": "5",
    "BATCH_REDISPATCH_AFTER_SECONDS": "5",
    "BATCH_CANCEL_GRACE_SECONDS": "3",
    "BATCH_PROCESS_MODULES": "bench.chaos_processes",
    "DEBUG": "0",
    # DEBUG off refuses to start without a key (batchadmin/settings.py).
    "SECRET_KEY": os.environ.get("SECRET_KEY") or "bench-only-secret-key-0123456789-abcdefghij",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}
DB_NAME = "batchadmin"
IMPORT_AHEAD_SECONDS = 40  # jobs are imported this long before they fall due
IMPORT_EVERY_SECONDS = 20
CANCEL_PATIENCE_SECONDS = 30  # a cancel refused (the job not started yet) is tried this long
WARM_STOP_SECONDS = 60  # a warm shutdown that takes longer is a finding, and killed
DRAIN_SECONDS = 300
LOCK_WAIT_NOTED_SECONDS = 3.0
# After the drain: long enough for a late duplicate (a reconnected host) to show in the marks.
QUIET_SECONDS = LEASE_SECONDS + 5
WATCHER_SCRIPT = """
from django.contrib.auth.models import User
from batchadmin.alerts.models import AlertRule
user, _ = User.objects.get_or_create(username="watcher", defaults={"email": "watcher@example.com"})
AlertRule.objects.get_or_create(user=user, defaults={"ended": True, "error": True, "canceled": True})
"""


class SoakError(RuntimeError):
    """The soak itself could not go on (a server that does not start, a CLI that keeps failing)."""


@dataclass
class Proc:
    """A long-running process of the soak, leader of its own process group."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        if self.popen is None:
            return True
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the whole group (a stopped group too) and reap it."""
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.wait(30)
        self.popen = None


@dataclass
class FaultRecord:
    number: int
    kind: str
    target: str
    at: float  # seconds after the start
    lasted: float = 0.0
    note: str = ""


@dataclass
class LockWait:
    waiter: str
    blocker: str
    seconds: float
    fault: str


@dataclass
class Soak:
    seed: int
    minutes: float
    hosts: int
    only: list[str] = field(default_factory=list)  # fault kinds to use; empty: all
    run_id: str = field(default_factory=lambda: secrets.token_hex(3))

    def __post_init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"chaos-{self.run_id}-"))
        self.net = chaos_net.Network(self.run_id, self.hosts) if self.hosts > 1 else None
        self.pg: PrivatePostgres | None = None
        self.redis: PrivateRedis | None = None
        self.workers: list[Proc] = []
        self.beats: dict[str, Proc] = {}
        self.plan = chaos_plan.make_plan(
            seed=self.seed, minutes=self.minutes, hosts=self.hosts, lease=LEASE_SECONDS
        )
        self.faults: list[FaultRecord] = []
        self.findings: list[str] = []
        self.lock_waits: dict[tuple[str, str, str], LockWait] = {}
        self.job_ids: dict[int, int] = {}  # plan index -> job id
        self.pending = sorted(self.plan.jobs, key=lambda j: j.due)  # not imported yet
        self.cancel_requested: set[int] = set()  # job ids the soak canceled
        self.current_fault = "-"
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.start_wall = dt.datetime.now(dt.UTC)
        self.threads: list[threading.Thread] = []

    # --- output ---------------------------------------------------------------------------

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        print(f"[{minutes:02d}:{seconds:02d}] {message}", flush=True)

    # --- setting up -----------------------------------------------------------------------

    def setup(self) -> None:
        if self.net is not None:
            why_not = chaos_net.preflight()
            if why_not:
                raise SoakError(why_not)
            self.net.create()
            self.net.enter_hub()
            self.say(f"network: {len(self.net.hosts)} hosts; {self.net.capabilities()}")
            self.redis = PrivateRedis(self.dir, bind=f"127.0.0.1 {chaos_net.BROKER_IP}", port=6379)
            self.pg = PrivatePostgres(
                listen=f"127.0.0.1,{chaos_net.DB_IP}", port=5432, prefix=f"chaos-{self.run_id}-pg-"
            )
        else:
            self.redis = PrivateRedis(self.dir)
            self.pg = PrivatePostgres(prefix=f"chaos-{self.run_id}-pg-")
        self.redis.start()
        self.pg.init()
        if self.net is not None:
            with (self.pg.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {chaos_net.SUBNET}.0/24 trust\n")
        self.pg.start()
        self.pg.create_database(DB_NAME)
        self.say(f"redis-server on port {self.redis.port}, PostgreSQL on port {self.pg.port}")
        self.manage("migrate", "--noinput", "-v0", timeout=300)
        self.manage("shell", "-c", WATCHER_SCRIPT)
        servers = self.server_names()
        self.import_data(
            {
                "groups": [
                    {"code": GROUP_ALL, "servers": servers},
                    {"code": GROUP_SOME, "servers": servers[1:]},
                ]
            }
        )
        for n, server in enumerate(servers):
            self.workers.append(self._worker_proc(server, self.host_of(n)))
        for w in self.workers:
            w.start()
        self.start_beat("beat")
        wait_until(
            lambda: self.registered() >= len(self.workers),
            timeout=120,
            what="every batch server to register",
        )
        self.say(
            f"{len(self.workers)} batch servers (concurrency {CONCURRENCY}) on {self.hosts} "
            f"host(s), one beat; {len(self.plan.jobs)} jobs planned"
        )

    def server_names(self) -> list[str]:
        return [f"c{n + 1}" for n in range(max(2, self.hosts))]

    def host_of(self, server_index: int) -> int:
        return server_index if self.hosts > 1 else 0

    def base_env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CELERY_"))}
        return {
            **keep,
            **ENGINE_ENV,
            "DJANGO_SETTINGS_MODULE": "batchadmin.settings",
            "PYTHONPATH": str(ROOT),
        }

    def control_env(self, app: str) -> dict[str, str]:
        """Beat, the CLI: on the soak's own host, over loopback."""
        assert self.pg is not None and self.redis is not None
        return {
            **self.base_env(),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{self.pg.port}/{DB_NAME}"
            f"?application_name={app}",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.redis.port}/0",
        }

    def _worker_proc(self, server: str, host: int) -> Proc:
        assert self.pg is not None and self.redis is not None
        node = f"{server}@h{host + 1}"
        db_host, broker_host = "127.0.0.1", "127.0.0.1"
        prefix: list[str] = []
        if self.net is not None:
            db_host, broker_host = chaos_net.DB_IP, chaos_net.BROKER_IP
            prefix = self.net.exec_prefix(host)
        env = {
            **self.base_env(),
            "DATABASE_URL": f"postgres://postgres@{db_host}:{self.pg.port}/{DB_NAME}"
            f"?application_name={app_name(node)}",
            "CELERY_BROKER_URL": f"redis://{broker_host}:{self.redis.port}/0",
            "CHAOS_MARK_FILE": str(self.dir / f"marks-h{host + 1}.txt"),
        }
        argv = [
            *prefix, CELERY, "-A", "batchadmin", "worker", "-n", node, "-c", str(CONCURRENCY),
            "--pool", "prefork", "-l", "info", "--without-mingle", "--without-gossip",
        ]  # fmt: skip
        return Proc(node, argv, env, self.dir / f"{node}.log")

    def start_beat(self, name: str) -> None:
        proc = self.beats.get(name) or Proc(
            name,
            [CELERY, "-A", "batchadmin", "beat", "-l", "info", "-s", str(self.dir / f"{name}.db")],
            self.control_env(name),
            self.dir / f"{name}.log",
        )
        self.beats[name] = proc
        proc.start()

    # --- the operator's tools: CLI and SQL ------------------------------------------------

    def manage(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.control_env("cli"),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            # The command's own message (a CommandError, or a traceback's last line) first.
            said = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
            raise SoakError(
                f"manage.py {' '.join(args)[:80]}: {said[-1]}\n{result.stdout[-2000:]}"
                f"{result.stderr[-2000:]}"
            )
        return result

    def import_data(self, data: dict[str, Any]) -> list[int]:
        path = self.dir / f"import-{secrets.token_hex(4)}.json"
        path.write_text(json.dumps(data))
        return [int(line) for line in self.manage("batch", "import", str(path)).stdout.split()]

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        assert self.pg is not None
        return psycopg.connect(
            self.pg.url(DB_NAME) + "?application_name=soak",
            autocommit=True,
            connect_timeout=3,
        )

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            conn.execute("SET statement_timeout = '10s'")
            return conn.execute(sql, params).fetchall()

    def try_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]] | None:
        try:
            return self.rows(sql, *params)
        except psycopg.Error:
            return None

    def registered(self) -> int:
        rows = self.try_rows(
            "SELECT count(*) FROM servers_batchserverreplica WHERE hostname = ANY(%s)",
            [w.name for w in self.workers],
        )
        return int(rows[0][0]) if rows else 0

    def redis_client(self) -> redis.Redis:
        assert self.redis is not None
        return redis.Redis(port=self.redis.port, socket_timeout=5)

    # --- the workload ---------------------------------------------------------------------

    def workload(self) -> None:
        """Import jobs ahead of their due time, in batches; cancel those planned to be."""
        cancels: list[tuple[float, PlannedJob]] = []
        next_import = 0.0
        while not self.stop.is_set():
            now = self.elapsed()
            if self.pending and now >= next_import:
                batch = [j for j in self.pending if j.due < now + IMPORT_AHEAD_SECONDS]
                try:
                    cancels += self.import_jobs(batch)
                except (SoakError, subprocess.TimeoutExpired) as exc:
                    self.say(f"import of {len(batch)} jobs failed, again in 3 s: {first_line(exc)}")
                    next_import = now + 3
                    continue
                next_import = now + IMPORT_EVERY_SECONDS
            for cancel in [c for c in cancels if c[0] <= now]:
                if self.cancel(cancel[1], planned_at=cancel[0]):
                    cancels.remove(cancel)
            self.stop.wait(1)

    def import_jobs(self, batch: list[PlannedJob]) -> list[tuple[float, PlannedJob]]:
        """Import planned jobs with the CLI; returns the cancels they bring (when, which)."""
        if not batch:
            return []
        ids = self.import_data({"jobs": [j.to_import(self.seed, self.start_wall) for j in batch]})
        cancels = []
        for job, job_id in zip(batch, ids, strict=True):
            self.job_ids[job.index] = job_id
            if job.cancel_after is not None:
                cancels.append((job.due + job.cancel_after, job))
        self.pending = [j for j in self.pending if j.index not in self.job_ids]
        return cancels

    def cancel(self, job: PlannedJob, *, planned_at: float) -> bool:
        """Cancel the job with the CLI; True when done with it (canceled, or too late)."""
        job_id = self.job_ids[job.index]
        try:
            result = self.manage("batch", "status", str(job_id), "cancel", timeout=60)
        except (SoakError, subprocess.TimeoutExpired) as exc:
            if self.elapsed() - planned_at < CANCEL_PATIENCE_SECONDS:
                return False  # not started yet (beat stalled?), or the database is away
            self.say(f"cancel of job {job_id} gave up: {first_line(exc)}")
            return True
        self.cancel_requested.add(job_id)
        self.say(f"canceled job {job_id} ({job.kind}): {result.stdout.strip()}")
        return True

    # --- watching -------------------------------------------------------------------------

    def monitor(self) -> None:
        """Every second: lock waits (who waits on whom, how long); every 15 s, progress."""
        next_progress = 0.0
        while not self.stop.wait(1):
            rows = self.try_rows(
                """
                SELECT w.application_name, extract(epoch FROM now() - w.state_change)::float8,
                    b.application_name
                FROM pg_stat_activity w
                CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS bp(pid)
                JOIN pg_stat_activity b ON b.pid = bp.pid
                WHERE w.wait_event_type = 'Lock'
                """
            )
            for waiter, seconds, blocker in rows or []:
                if seconds < LOCK_WAIT_NOTED_SECONDS:
                    continue
                key = (waiter or "?", blocker or "?", self.fault_at(self.elapsed() - seconds))
                seen = self.lock_waits.get(key)
                if seen is None or seconds > seen.seconds:
                    self.lock_waits[key] = LockWait(key[0], key[1], seconds, key[2])
            if self.elapsed() >= next_progress:
                next_progress = self.elapsed() + 15
                self.say(self.progress())

    def fault_at(self, t: float) -> str:
        """The fault going on at ``t`` (seconds after the start), or the last one before it."""
        for f in reversed(list(self.faults)):
            if f.at <= t:
                over = f.lasted and t > f.at + f.lasted + 1
                return f"#{f.number} {f.kind} {f.target}" + (", after it" if over else "")
        return "before any fault"

    def progress(self) -> str:
        counts = self.try_rows(
            "SELECT status, count(*) FROM jobs_batchjob WHERE description LIKE %s GROUP BY status",
            self.like(),
        )
        attempts = self.try_rows("SELECT count(*) FROM jobs_batchtaskrun WHERE attempt > 0")
        if counts is None or attempts is None:
            return f"progress: database unreachable; fault {self.current_fault}"
        jobs = ", ".join(f"{s} {n}" for s, n in sorted(counts))
        return f"jobs: {jobs or 'none yet'}; task attempts {attempts[0][0]}; fault {self.current_fault}"

    def like(self) -> str:
        return f"{chaos_plan.DESCRIPTION_PREFIX} {self.seed}#%"

    # --- the fault loop -------------------------------------------------------------------

    def run(self) -> None:
        kinds = {k: w for k, w in chaos_plan.FAULTS.items() if not self.only or k in self.only}
        if self.net is None:
            kinds = {k: w for k, w in kinds.items() if k not in chaos_plan.NETWORK_FAULTS}
        elif not (self.net.netem or self.net.nft):
            kinds.pop("host-lossy", None)
        if not kinds:
            raise SoakError("no fault kind left to inflict here (host-lossy needs netem or nft)")
        self.t0 = time.monotonic()
        self.start_wall = dt.datetime.now(dt.UTC)
        for target in (self.workload, self.monitor):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self.threads.append(thread)
        end = self.minutes * 60
        for fault in self.plan.faults(kinds):
            if self.elapsed() + fault.gap >= end:
                break
            time.sleep(fault.gap)
            self.revive()
            self.inflict(fault)
        time.sleep(max(0.0, end - self.elapsed()))
        self.say(f"{len(self.faults)} faults; healing and draining")
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=130)

    def revive(self) -> None:
        """A process that died outside a fault is a finding; start it again (between faults
        and while draining, as a supervisor such as systemd would)."""
        for proc in [*self.workers, self.beats["beat"]]:
            if not proc.alive():
                code = proc.popen.returncode if proc.popen else None
                self.findings.append(
                    f"{proc.name} exited by itself (status {code}) at {self.clock()}"
                )
                self.say(f"{proc.name} exited by itself (status {code}); starting it again")
                proc.start()

    def host_worker(self, host: int) -> Proc:
        return next(w for n, w in enumerate(self.workers) if self.host_of(n) == host)

    def clock(self) -> str:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        return f"{minutes:02d}:{seconds:02d}"

    def inflict(self, fault: PlannedFault) -> None:
        worker = self.workers[fault.target % len(self.workers)]
        host = fault.target % self.hosts
        target = worker.name if fault.kind.startswith("worker") else ""
        if fault.kind.startswith("host"):
            target = self.host_worker(host).name
        record = FaultRecord(fault.number, fault.kind, target or "-", self.elapsed())
        self.faults.append(record)
        self.current_fault = f"#{fault.number} {fault.kind}"
        self.say(f"fault #{fault.number} {fault.kind} {target} ({fault.seconds} s)")
        started = time.monotonic()
        try:
            record.note = self.apply(fault, worker, host)
        except Exception as exc:  # one broken fault must not end the soak; heal() follows
            record.note = f"FAILED: {first_line(exc)}"
            self.findings.append(f"fault #{fault.number} {fault.kind} failed: {first_line(exc)}")
            self.say(record.note)
        record.lasted = time.monotonic() - started
        self.current_fault = "-"

    def apply(self, fault: PlannedFault, worker: Proc, host: int) -> str:
        """Inflict one fault and undo it; returns a note for the fault log."""
        assert self.pg is not None and self.redis is not None
        kind, seconds = fault.kind, fault.seconds
        if kind == "worker-kill":
            worker.kill()
            time.sleep(seconds)
            worker.start()
            return f"killed, started again after {seconds} s"
        if kind == "worker-stop":
            with stopped(worker):
                time.sleep(seconds)
            return f"stopped for {seconds} s"
        if kind == "worker-term":
            return self.warm_restart(worker)
        if kind == "worker-freeze-in-tx":
            return self.freeze_in_transaction(worker, seconds)
        if kind == "beat-kill":
            beat = self.beats["beat"]
            beat.kill()
            time.sleep(seconds)
            beat.start()
            return f"killed, started again after {seconds} s"
        if kind == "beat-twice":
            self.start_beat("beat2")
            try:
                time.sleep(seconds)
            finally:
                second = self.beats.pop("beat2")
                second.signal_group(signal.SIGTERM)
                if not second.wait(20):
                    second.kill()
            return f"a second beat for {seconds} s"
        if kind == "redis-restart":
            self.redis.restart(down_for=seconds)
            return f"down {seconds} s, queues lost"
        if kind == "redis-drop":
            return f"{self.redis.drop_clients()} clients dropped"
        if kind == "redis-full":
            client = self.redis_client()
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory-policy", "noeviction")
            client.config_set("maxmemory", used)
            try:
                time.sleep(seconds)
            finally:
                client.config_set("maxmemory", 0)
            return f"full at {used // 1024} KiB for {seconds} s"
        if kind == "redis-slow":
            assert self.redis.proc is not None
            os.kill(self.redis.proc.pid, signal.SIGSTOP)
            try:
                time.sleep(seconds)
            finally:
                os.kill(self.redis.proc.pid, signal.SIGCONT)
            return f"frozen {seconds} s"
        if kind == "pg-restart":
            self.pg.restart(down_for=seconds)
            return f"fast shutdown, down {seconds} s"
        if kind == "pg-outage":
            self.pg.stop()
            try:
                time.sleep(seconds)
            finally:
                self.pg.start()
            return f"down {seconds} s (lease {LEASE_SECONDS:g} s)"
        assert self.net is not None, kind
        try:
            if kind == "host-cut-in-tx":
                return self.cut_in_transaction(self.host_worker(host), host, seconds)
            if kind == "host-cut":
                self.net.cut(host)
                time.sleep(seconds)
                return f"link down {seconds} s (lease {LEASE_SECONDS:g} s)"
            if kind == "host-slow":
                spec = self.net.slow(host)
                time.sleep(seconds)
                return f"{spec} for {seconds} s"
            if kind == "host-lossy":
                spec = self.net.lossy(host)
                time.sleep(seconds)
                return f"{spec} for {seconds} s"
            if kind in ("host-no-broker", "host-no-db"):
                address = chaos_net.BROKER_IP if kind == "host-no-broker" else chaos_net.DB_IP
                self.net.block(host, address)
                time.sleep(seconds)
                return f"no route to {address} for {seconds} s"
        finally:
            self.net.heal(host)
        raise ValueError(f"unknown fault {kind!r}")

    def warm_restart(self, worker: Proc) -> str:
        """SIGTERM to the main process only, as systemd or docker stop do; then start it again."""
        t = time.monotonic()
        if worker.alive():
            os.kill(worker.pid, signal.SIGTERM)
        if worker.wait(WARM_STOP_SECONDS):
            note = f"stopped warm in {time.monotonic() - t:.1f} s"
        else:
            note = f"still running {WARM_STOP_SECONDS} s after SIGTERM: killed"
            self.findings.append(f"{worker.name}: {note} at {self.clock()}")
        worker.kill()  # what is left of the group (nothing, after a warm stop)
        worker.start()
        return note + ", started again"

    def freeze_in_transaction(self, worker: Proc, seconds: float) -> str:
        """SIGSTOP the worker while one of its sessions is inside a transaction."""
        return self.break_in_transaction(
            worker,
            seconds,
            cut=lambda: worker.signal_group(signal.SIGSTOP),
            mend=lambda: worker.signal_group(signal.SIGCONT),
            what="frozen",
        )

    def cut_in_transaction(self, worker: Proc, host: int, seconds: float) -> str:
        """Cut the host's link while its worker is inside a transaction."""
        assert self.net is not None
        net = self.net
        return self.break_in_transaction(
            worker,
            seconds,
            cut=lambda: net.cut(host),
            mend=lambda: net.reconnect(host),
            what="cut off",
        )

    def break_in_transaction(
        self,
        worker: Proc,
        seconds: float,
        *,
        cut: Callable[[], None],
        mend: Callable[[], None],
        what: str,
    ) -> str:
        """Break a worker off (``cut``) while one of its sessions is inside a transaction.

        1. Poll pg_stat_activity for a session of the worker (its application_name) that is
           idle in a transaction, the first 10 s only one that locked a job row (a finish).
        2. Cut, then check that the session is still in the same transaction (it may have
           committed in between); if not, ``mend`` and try again.
        3. For ``seconds``, note who waits on the session's locks and for how long; then mend.
        Not caught within 15 s: cut anyway, and the note says so.
        """
        app = app_name(worker.name)
        deadline = time.monotonic() + 15
        caught, backend = "", 0
        with self.connect() as conn:
            while time.monotonic() < deadline and not caught:
                any_transaction = time.monotonic() > deadline - 5
                row = conn.execute(FIND_TRANSACTION_SQL, [app, any_transaction]).fetchone()
                if row is None:
                    time.sleep(0.002)
                    continue
                pid, xact_start, holds_job = row
                cut()
                still = conn.execute(SAME_TRANSACTION_SQL, [pid, xact_start]).fetchone()
                if still is not None:
                    backend = pid
                    caught = f"backend {pid}, {'holding a job row' if holds_job else 'no job row'}"
                else:
                    mend()
        if not caught:
            cut()
        waited: dict[str, float] = {}
        try:
            until = time.monotonic() + seconds
            while (left := until - time.monotonic()) > 0:
                for waiter, secs in self.try_rows(WAITING_ON_SQL, backend) or []:
                    waited[waiter] = max(waited.get(waiter, 0.0), secs)
                time.sleep(min(left, 0.5))
        finally:
            mend()
        if not caught:
            return f"no transaction caught in 15 s; {what} {seconds} s anyway"
        blocked = ", ".join(f"{w} waited {s:.1f} s" for w, s in sorted(waited.items()))
        return f"{what} {seconds} s inside a transaction ({caught}); {blocked or 'nobody waited'}"

    # --- healing, draining, judging -------------------------------------------------------

    def heal(self) -> None:
        """Undo whatever is still broken, so every remaining job can finish."""
        assert self.pg is not None and self.redis is not None
        for proc in [*self.workers, *self.beats.values()]:
            proc.signal_group(signal.SIGCONT)
        if self.redis.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis.proc.pid, signal.SIGCONT)
        if self.net is not None:
            self.net.heal_all()
        if not self.redis.answers():
            self.redis.stop()
            self.redis.start()
        self.redis_client().config_set("maxmemory", 0)
        if not self.pg.running:
            self.pg.start()
        if "beat2" in self.beats:
            self.beats.pop("beat2").kill()
        self.revive()
        if self.pending:
            # An import the last faults kept from going through: now, late (no cancels then).
            self.say(f"importing the last {len(self.pending)} planned jobs, late")
            self.import_jobs(self.pending)

    def drain(self) -> dt.datetime:
        """Wait (bounded) until no job runs and none is due; withhold recurring jobs between runs."""
        drained_at = dt.datetime.now(dt.UTC)
        deadline = time.monotonic() + DRAIN_SECONDS
        next_note = 0.0
        while time.monotonic() < deadline:
            # As systemd's Restart=always would: a worker that exited after the heal (a broker
            # error it could not recover from, on its way out for a while) is started again.
            self.revive()
            for (job_id,) in self.try_rows(WAITING_RECURRING_SQL, self.like()) or []:
                with contextlib.suppress(SoakError, subprocess.TimeoutExpired):
                    self.manage("batch", "status", str(job_id), "withhold", timeout=60)
            rows = self.try_rows(BUSY_SQL, self.like())
            if rows is not None and rows[0][0] == 0:
                self.say("drained")
                return drained_at
            if time.monotonic() >= next_note:
                next_note = time.monotonic() + 15
                self.say(f"draining: {rows[0][0] if rows else '?'} jobs still running or due")
            time.sleep(2)
        self.say(f"not drained after {DRAIN_SECONDS} s")
        return drained_at

    def judge(self, drained_at: dt.datetime) -> chaos_check.Verdict:
        time.sleep(QUIET_SECONDS)
        tables = self.read_tables()
        lines: list[str] = []
        for path in sorted(self.dir.glob("marks-*.txt")):
            lines += path.read_text().splitlines()
        marks, torn = chaos_check.parse_marks(lines)
        if torn:
            self.findings.append(f"{torn} mark lines could not be read")
        return chaos_check.check(tables, marks, drained_at=drained_at)

    def read_tables(self) -> chaos_check.Tables:
        like = self.like()
        jobs = [
            chaos_check.Job(*row)
            for row in self.rows(
                """
                SELECT j.id, j.description, j.status, j.scheduled_start, j.current_run_id,
                    EXISTS (SELECT 1 FROM jobs_batchrecurrence r WHERE r.job_id = j.id)
                FROM jobs_batchjob j WHERE j.description LIKE %s
                """,
                like,
            )
        ]
        ids = [j.id for j in jobs]
        tasks = [
            chaos_check.Task(*row)
            for row in self.rows(
                "SELECT id, job_id, key, status, condition_type, ignore_failure"
                " FROM jobs_batchtask WHERE job_id = ANY(%s)",
                ids,
            )
        ]
        conditions = [
            chaos_check.Condition(*row)
            for row in self.rows(
                "SELECT c.task_id, c.depends_on_id, c.expected_status"
                " FROM jobs_batchtaskcondition c JOIN jobs_batchtask t ON t.id = c.task_id"
                " WHERE t.job_id = ANY(%s)",
                ids,
            )
        ]
        job_runs = [
            chaos_check.JobRun(*row)
            for row in self.rows(
                "SELECT id, job_id, status, scheduled_start FROM jobs_batchjobrun"
                " WHERE job_id = ANY(%s)",
                ids,
            )
        ]
        task_runs = [
            chaos_check.TaskRun(*row)
            for row in self.rows(
                "SELECT r.id, r.job_run_id, r.task_id, r.attempt, r.status, r.error_message,"
                " r.hostname FROM jobs_batchtaskrun r JOIN jobs_batchtask t ON t.id = r.task_id"
                " WHERE t.job_id = ANY(%s)",
                ids,
            )
        ]
        starts = dict(
            self.rows(
                "SELECT job_id, count(*) FROM jobs_statuschange WHERE job_id = ANY(%s)"
                " AND old_status = 'waiting' AND new_status = 'executing' GROUP BY job_id",
                ids,
            )
        )
        events = [
            (run_id, kind)
            for run_id, kind in self.rows(
                "SELECT job_run_id, kind FROM alerts_alertevent WHERE job_id = ANY(%s)", ids
            )
        ]
        duplicates = [
            (event_id, user_id)
            for event_id, user_id in self.rows(
                "SELECT n.event_id, n.user_id FROM alerts_notification n"
                " JOIN alerts_alertevent e ON e.id = n.event_id WHERE e.job_id = ANY(%s)"
                " GROUP BY n.event_id, n.user_id HAVING count(*) > 1",
                ids,
            )
        ]
        return chaos_check.Tables(
            jobs,
            tasks,
            conditions,
            job_runs,
            task_runs,
            starts=starts,
            alert_events=events,
            duplicate_notifications=duplicates,
            cancel_requested=set(self.cancel_requested),
        )

    def report(self, verdict: chaos_check.Verdict) -> None:
        print("\nfault log:")
        print(f"  {'#':>4}  {'at':>5}  {'fault':<20} {'target':<8} {'took':>6}  note")
        for f in self.faults:
            minutes, seconds = divmod(int(f.at), 60)
            print(
                f"  {f.number:>4}  {minutes:02d}:{seconds:02d}  {f.kind:<20} {f.target:<8}"
                f" {f.lasted:>5.1f}s  {f.note}"
            )
        mix = Counter(f.kind for f in self.faults)
        print("\nfault mix: " + ", ".join(f"{k} {n}" for k, n in sorted(mix.items())))
        if self.lock_waits:
            print(
                f"\nlock waits of {LOCK_WAIT_NOTED_SECONDS:g} s or more, by the fault they began in:"
            )
            by_fault: dict[str, list[LockWait]] = {}
            for w in self.lock_waits.values():
                by_fault.setdefault(w.fault, []).append(w)
            for fault, waits in sorted(by_fault.items(), key=lambda i: fault_number(i[0])):
                longest: dict[str, float] = {}
                for w in waits:
                    longest[w.waiter] = max(longest.get(w.waiter, 0.0), w.seconds)
                waiters = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(longest.items()))
                holders = ", ".join(sorted({w.blocker for w in waits}))
                print(f"  {fault}: {waiters} (behind {holders})")
        if self.findings:
            print("\nfindings:")
            for finding in self.findings:
                print(f"  {finding}")
        for title, items in (
            ("lost", verdict.lost),
            ("doubled", verdict.doubled),
            ("stuck", verdict.stuck),
            ("contradictions", verdict.contradictions),
        ):
            if items:
                print(f"\n{title} ({len(items)}):")
                for item in items[:50]:
                    print(f"  {item}")
                if len(items) > 50:
                    print(f"  ... and {len(items) - 50} more")
        print(
            f"\nseed {self.seed}, {self.minutes:g} minutes, {self.hosts} host(s):"
            f" {len(self.job_ids)} jobs, {verdict.bodies_completed} bodies completed,"
            f" {verdict.reran_after_lost} ran again after an attempt recorded as lost,"
            f" {len(self.cancel_requested)} canceled, contradictions {len(verdict.contradictions)}"
        )

    def summary(self, verdict: chaos_check.Verdict) -> str:
        return (
            f"faults {len(self.faults)} tasks {verdict.checked} lost {len(verdict.lost)}"
            f" doubled {len(verdict.doubled)} stuck {len(verdict.stuck)}"
        )

    # --- cleaning up ----------------------------------------------------------------------

    def cleanup(self, *, keep_dir: bool) -> None:
        self.stop.set()
        procs = [p for p in [*self.workers, *self.beats.values()] if p.popen is not None]
        for p in procs:  # a stopped group must be woken to act on SIGTERM
            p.signal_group(signal.SIGCONT)
            p.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in procs:
            if not p.wait(max(0.1, deadline - time.monotonic())):
                p.kill()
        if self.redis is not None:
            if self.redis.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.redis.proc.pid, signal.SIGCONT)
            self.redis.stop()
        if self.pg is not None:
            self.pg.destroy()
        if self.net is not None:
            self.net.destroy()
        if keep_dir:
            print(f"logs and marks kept in {self.dir}")
        else:
            subprocess.run(["rm", "-rf", str(self.dir)], check=False)


FIND_TRANSACTION_SQL = """
    SELECT a.pid, a.xact_start, EXISTS (
        SELECT 1 FROM pg_locks l
        WHERE l.pid = a.pid AND l.relation = 'jobs_batchjob'::regclass AND l.mode = 'RowShareLock'
    ) AS holds_job
    FROM pg_stat_activity a
    WHERE a.application_name = %s AND a.state = 'idle in transaction'
    ORDER BY holds_job DESC
    LIMIT 1
"""
FIND_TRANSACTION_SQL = f"SELECT * FROM ({FIND_TRANSACTION_SQL}) t WHERE holds_job OR %s"
WAITING_ON_SQL = """
    SELECT application_name, extract(epoch FROM now() - state_change)::float8
    FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND %s = ANY(pg_blocking_pids(pid))
"""
SAME_TRANSACTION_SQL = """
    SELECT 1 FROM pg_stat_activity
    WHERE pid = %s AND xact_start = %s AND state = 'idle in transaction'
"""
WAITING_RECURRING_SQL = """
    SELECT j.id FROM jobs_batchjob j JOIN jobs_batchrecurrence r ON r.job_id = j.id
    WHERE j.description LIKE %s AND j.status = 'waiting'
"""
BUSY_SQL = """
    SELECT count(*) FROM jobs_batchjob j
    WHERE j.description LIKE %s AND (j.status IN ('executing', 'canceling')
        OR (j.status = 'waiting' AND j.scheduled_start <= now()))
"""


def fault_number(label: str) -> int:
    return int(label[1:].split()[0]) if label.startswith("#") else 0


def app_name(node: str) -> str:
    """The PostgreSQL application_name of a worker's sessions: how the soak finds them."""
    return "w-" + node.replace("@", "-")


@contextlib.contextmanager
def stopped(proc: Proc) -> Iterator[None]:
    proc.signal_group(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.signal_group(signal.SIGCONT)


def wait_until(predicate: Callable[[], Any], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SoakError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.5)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=4, help="how long faults go on (4)")
    parser.add_argument("--seed", type=int, default=None, help="repeat a run (default: random)")
    parser.add_argument(
        "--hosts",
        type=int,
        default=1,
        help="batch server hosts; 2 or more run each in a network namespace (needs root)",
    )
    parser.add_argument(
        "--faults",
        default="",
        help="only these fault kinds, comma-separated (to reproduce one); default: all of "
        + ", ".join(chaos_plan.FAULTS),
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's logs and marks")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.hosts < 1 or args.hosts > 9:
        parser.error("--minutes must be positive and --hosts 1 to 9")
    args.faults = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(args.faults) - set(chaos_plan.FAULTS))
    if unknown:
        parser.error(f"--faults: unknown kind(s) {', '.join(unknown)}")
    if args.hosts == 1 and set(args.faults) & chaos_plan.NETWORK_FAULTS:
        parser.error("--faults: the host-* faults need --hosts 2 or more")
    if args.seed is None:
        args.seed = secrets.randbelow(1_000_000)
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Also SIGINT: a shell that starts the soak in the background ignores it by default.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    soak = Soak(seed=args.seed, minutes=args.minutes, hosts=args.hosts, only=args.faults)
    print(
        f"chaos soak {soak.run_id}: seed {args.seed} (repeat with --seed {args.seed}"
        f" --minutes {args.minutes:g} --hosts {args.hosts}"
        + (f" --faults {','.join(args.faults)}" if args.faults else "")
        + f"); folder {soak.dir}",
        flush=True,
    )
    verdict: chaos_check.Verdict | None = None
    interrupted = False
    try:
        soak.setup()
        soak.run()
        soak.heal()
        verdict = soak.judge(soak.drain())
        soak.report(verdict)
    except KeyboardInterrupt:
        print("interrupted: cleaning up", flush=True)
        interrupted = True
        return 130
    except SoakError as exc:
        print(f"chaos soak failed: {exc}", flush=True)
        return 2
    finally:
        clean = interrupted or (verdict is not None and verdict.ok() and not verdict.contradictions)
        soak.cleanup(keep_dir=args.keep or not clean)
    assert verdict is not None
    print(soak.summary(verdict), flush=True)  # the last line, after the clean-up's own
    return 0 if verdict.ok() and not verdict.contradictions else 1


if __name__ == "__main__":
    sys.exit(main())

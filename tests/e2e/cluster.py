"""Real processes for end-to-end tests: a private database, Celery workers, beat, the CLI.

Everything runs as the operator would run it (`celery -A batchadmin worker -n NAME@%h`,
`celery -A batchadmin beat`, `manage.py batch ...`), against a database of its own so the
workers never see pytest-django's test database being flushed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests import isolation

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("E2E_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# The run's own Redis database and names (tests/isolation.py).
REDIS_URL = isolation.E2E_REDIS_URL
CELERY = str(Path(sys.executable).with_name("celery"))

# Short lease and heartbeat so lost servers are noticed in seconds, not half a minute.
ENGINE_ENV = {
    "BATCH_LEASE_SECONDS": "3",
    "BATCH_HEARTBEAT_SECONDS": "1",
    "BATCH_RETRY_BACKOFF_SECONDS": "0.2",
    "BATCH_REDISPATCH_AFTER_SECONDS": "5",
    # A process that ignores a cancel or its time limit is aborted 2 s after being asked to stop.
    "BATCH_CANCEL_GRACE_SECONDS": "2",
    # The development settings (the web serves static files from the finders); with DEBUG=0
    # a server needs a key (batchadmin/settings.py).
    "DEBUG": "1",
    "SECRET_KEY": "e2e-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz",
    "LOG_LEVEL": "INFO",
}


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


class Cluster:
    """A database URL plus the processes started against it; stop() ends them all."""

    def __init__(self, database_url: str, log_dir: Path, *, pg_dbname: str | None = None) -> None:
        self.database_url = database_url
        self.pg_dbname = pg_dbname
        self.log_dir = log_dir
        self.env = {
            **os.environ,
            **ENGINE_ENV,
            "DJANGO_SETTINGS_MODULE": "batchadmin.settings",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": REDIS_URL,
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- processes ----------------------------------------------------------------------

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs[name] = proc
        return proc

    def start_worker(
        self,
        server: str,
        *,
        concurrency: int = 1,
        wait: bool = True,
        host: str = "e2e",
        env: dict[str, str] | None = None,
    ) -> str:
        """Start replica ``server@host`` of batch server ``server``; return its node name.

        ``env``: extra environment variables (settings) for this worker only.
        """
        hostname = f"{server}@{host}"
        self._spawn(
            hostname,
            [CELERY, "-A", "batchadmin", "worker", "-n", hostname, "-c", str(concurrency),
             "--pool", "prefork", "-l", "info", "--without-mingle", "--without-gossip"],
            env,
        )  # fmt: skip
        if wait:
            wait_for(
                lambda: self.scalar(
                    "SELECT count(*) FROM servers_batchserverreplica WHERE hostname = %s", hostname
                ),
                timeout=60,
                what=f"worker {hostname} to register",
            )
        return hostname

    def start_beat(self, name: str = "beat") -> None:
        self._spawn(
            name,
            [CELERY, "-A", "batchadmin", "beat", "-l", "info",
             "-s", str(self.log_dir / f"{name}-schedule")],
        )  # fmt: skip

    def start_web(self, port: int, *, name: str = "web", env: dict[str, str] | None = None) -> str:
        """gunicorn on loopback, as in production; static files from the finders (DEBUG).

        ``env``: settings of this server only (DEBUG=0 for the error pages).
        """
        self._spawn(
            name,
            [str(Path(sys.executable).with_name("gunicorn")), "batchadmin.wsgi",
             "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
             # Not gunicorn's one control socket per user: two test runs would share it.
             "--no-control-socket"],
            env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(url + "/login/"), timeout=30, what="the web server")
        return url

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return result.stdout

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        _terminate(proc)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def logs(self) -> str:
        return "\n".join(
            f"==> {p.name} <==\n" + p.read_text(errors="replace")[-4000:]
            for p in sorted(self.log_dir.glob("*.log"))
        )

    # --- the CLI contract ---------------------------------------------------------------

    def cli(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "manage.py", "batch", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"batch {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def import_jobs(self, data: dict[str, Any]) -> list[int]:
        path = self.log_dir / f"import-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(data))
        return [int(line) for line in self.cli("import", str(path)).stdout.split()]

    def show(self, job_id: int) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cli("show", str(job_id), "--json").stdout)
        return data

    def wait(self, job_id: int, timeout: float = 60) -> str:
        result = self.cli("wait", str(job_id), "--timeout", str(timeout), check=False)
        if result.returncode != 0:
            raise AssertionError(f"job {job_id} did not end: {result.stderr}\n{self.logs()}")
        return result.stdout.strip()

    # --- direct reads (PostgreSQL only) -------------------------------------------------

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        assert self.pg_dbname, "direct SQL reads are for the PostgreSQL cluster"
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + self.pg_dbname
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def scalar(self, sql: str, *params: Any) -> Any:
        return self.rows(sql, *params)[0][0]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def create_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"], cwd=ROOT, env=env, check=True
    )


def flush_redis() -> None:
    """Empty the run's e2e Redis database (only ever one the run found empty)."""
    isolation.reset(REDIS_URL)

"""Private Redis and PostgreSQL servers for fault tests, which stop and start them at will.

The session's ``cluster`` shares the machine's PostgreSQL and Redis with every other test; a
test that stops a server must own it. These start a ``redis-server`` and an ``initdb`` cluster on
spare loopback ports in temporary folders, stop and start them again keeping their data (Redis
keeps none: it runs without persistence, like a cache restarted by an operator), and remove
everything when the fixture ends. Every wait is bounded.

PostgreSQL refuses to run as root, so its commands run as the ``postgres`` user (``runuser``)
in a folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import redis

from tests.e2e.cluster import Cluster, free_port, wait_for

PG_USER = "postgres"


def pg_bin() -> Path:
    """The newest installed PostgreSQL's bin folder (E2E_PG_BIN overrides)."""
    if os.environ.get("E2E_PG_BIN"):
        return Path(os.environ["E2E_PG_BIN"])
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if not versions:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql (set E2E_PG_BIN)")
    return versions[-1].parent


class PrivateRedis:
    """A redis-server of our own on a spare port, without persistence."""

    def __init__(self, workdir: Path, *, bind: str = "127.0.0.1", port: int | None = None) -> None:
        """``bind``: the addresses to listen on (space-separated); loopback is always first."""
        self.workdir = workdir
        self.bind = bind
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, "redis-server is running already"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", self.bind,
                 # Protected mode refuses every address but loopback when there is no password.
                 "--protected-mode", "no" if self.bind != "127.0.0.1" else "yes",
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        wait_for(self.answers, timeout=15, what=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Shut down (SIGTERM, then SIGKILL after 10 s); the data is gone, as with a restart."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self, *, down_for: float = 0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def drop_clients(self) -> int:
        """Close every client connection (a network blip); the server and its data stay."""
        client = redis.Redis(port=self.port, socket_timeout=5)
        return sum(
            client.client_kill_filter(_type=kind, skipme=True) for kind in ("normal", "pubsub")
        )


class PrivatePostgres:
    """An initdb cluster of our own in a temporary folder, on a spare port."""

    def __init__(
        self, *, listen: str = "127.0.0.1", port: int | None = None, prefix: str = "ba-faults-pg-"
    ) -> None:
        """``listen``: PostgreSQL's listen_addresses (comma-separated), loopback first."""
        self.bin = pg_bin()
        self.listen = listen
        self.port = port or free_port()
        # Not under pytest's tmp_path: that is root's and closed to the postgres user.
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        user = pwd.getpwnam(PG_USER)
        os.chown(self.root, user.pw_uid, user.pw_gid)
        self.running = False

    def _as_postgres(self, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            ["runuser", "-u", PG_USER, "--", *args],
            cwd=self.root,
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def init(self) -> None:
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", PG_USER,
            "--no-sync", "--encoding", "UTF8", "--locale", "C",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.listen}"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data; ``fast`` ends every session (a restart)."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"
        )
        self.running = False

    def restart(self, *, down_for: float = 0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def destroy(self) -> None:
        try:
            if self.running or (self.data / "postmaster.pid").exists():
                self.stop(mode="immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


class FaultCluster(Cluster):
    """A Cluster on a private PostgreSQL database and a private Redis."""

    def __init__(
        self, log_dir: Path, *, pg: PrivatePostgres, broker: PrivateRedis, dbname: str
    ) -> None:
        super().__init__(pg.url(dbname), log_dir, pg_dbname=dbname)
        self.pg = pg
        self.broker = broker
        self.env["CELERY_BROKER_URL"] = broker.url

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()

    def try_rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]] | None:
        """rows(), or None while the database is away (for polling across a restart)."""
        try:
            return self.rows(sql, *params)
        except psycopg.OperationalError:
            return None

    def warm_stop(self, name: str) -> subprocess.Popen[bytes]:
        """SIGTERM to the worker's main process only, as ``docker stop`` or systemd would.

        Celery's pool children restore SIGTERM's default action, so a signal to the whole
        process group would kill the running tasks instead of letting them finish.
        """
        proc = self.procs.pop(name)
        os.kill(proc.pid, signal.SIGTERM)
        return proc

    def stop_all(self) -> None:
        """Stop every process at once (SIGTERM, SIGKILL after 20 s), not one after another."""
        procs, self.procs = list(self.procs.values()), {}
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{proc.args!r} ignored SIGTERM for 20 s; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        extra = [p for p in (self.broker.log, self.pg.log) if p.exists()]
        return super().logs() + "".join(
            f"\n==> {p.name} <==\n" + p.read_text(errors="replace")[-4000:] for p in extra
        )

"""What one test run owns on a shared machine: a run id, Redis databases, and names from both.

Two runs of the suite on one machine (two clones, a developer beside CI) must not touch each
other's data, nor anyone else's. So:

1. Every run has an id, ``BATCHADMIN_RUN_ID`` (made here when unset, then put in the
   environment so the processes the tests start inherit it). The test database and the
   end-to-end databases are named after it (``db_name``).
2. Redis: unless ``TEST_BROKER_URL`` or ``E2E_REDIS_URL`` name a database, the run starts its
   own ``redis-server`` on a free loopback port, without persistence, in a temporary folder,
   and stops it by pid when the run ends (and the kernel stops it if the run dies: see
   ``_die_with_parent``). A Redis database named explicitly is used only if it is empty when
   the run starts; the run then marks it as its own (``OWNER_KEY``), and empties it again when
   it ends. A database that is not empty, or another run's, is refused with a message naming
   it. Nothing here ever flushes a database it did not find empty.

tests/settings.py imports this module, so it runs once per pytest process, before pytest-django
reads the settings and before any test module reads the URLs below. See docs/testing.md.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import redis

RUN_ID = os.environ.setdefault("BATCHADMIN_RUN_ID", uuid.uuid4().hex[:8])

# The Redis variables this run filled from a private server of its own (not named by the user).
PRIVATE_REDIS_VARS = "BATCHADMIN_RUN_PRIVATE_REDIS"

# pytest-xdist (bin/test runs the suite in two processes): each worker is a run of its own
# inside the run, with an id of its own (``<run id>_gw1``), so its own databases, its own
# private redis-server and its own clusters. The worker inherits the environment the main
# process set up; it drops that process's private Redis URLs and makes its own. Marked once
# (BATCHADMIN_RUN_WORKER), so what the worker starts, a nested pytest too, keeps its id.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if WORKER and os.environ.get("BATCHADMIN_RUN_WORKER") != WORKER:
    RUN_ID = f"{RUN_ID}_{WORKER}"
    os.environ["BATCHADMIN_RUN_ID"] = RUN_ID
    os.environ["BATCHADMIN_RUN_WORKER"] = WORKER
    for _var in os.environ.pop(PRIVATE_REDIS_VARS, "").split():
        os.environ.pop(_var, None)

# A short lowercase id: it ends PostgreSQL names, which may not pass 63 characters. Checked
# with the worker's suffix: cut, two workers' ids could become one.
if not re.fullmatch(r"[a-z0-9_]{1,20}", RUN_ID):
    raise SystemExit(
        f"BATCHADMIN_RUN_ID={RUN_ID!r}: use 1 to 20 lowercase letters, digits or underscores"
        + (f" (this test process adds _{WORKER}: leave room for it)." if WORKER else ".")
    )

# The key a run writes into each Redis database it took, with its run id as the value.
OWNER_KEY = "batchadmin:test-run"

# The Redis databases the suite uses, by the variable that can name each, with the database
# number they get on the run's private server.
REDIS_DBS = {"TEST_BROKER_URL": 7, "E2E_REDIS_URL": 15, "E2E_CLOCK_REDIS_URL": 14}


class IsolationError(SystemExit):
    """A resource the run may not use; the message says which and why (no traceback)."""


def db_name(prefix: str) -> str:
    """A PostgreSQL database name of this run's own: ``prefix`` plus the run id."""
    return f"{prefix}_{RUN_ID}"


def _die_with_parent() -> None:
    """In the child before exec: Linux sends it SIGTERM when the test process dies.

    Strictly, when the thread that started it ends: here the main thread, as settings are
    imported there. (Not for servers a test starts from a helper thread.)
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SessionRedis:
    """A redis-server of this run's own: loopback, a free port, no persistence."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"batchadmin-test-{RUN_ID}-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        if shutil.which("redis-server") is None:
            raise IsolationError(
                "The tests start their own Redis but redis-server is not installed "
                "(apt-get install redis-server, or bin/test), or set TEST_BROKER_URL and "
                "E2E_REDIS_URL to empty Redis databases."
            )
        # Another process may take the free port before redis-server binds it: try again.
        for _ in range(5):
            if self._start(_free_port()):
                atexit.register(self.stop)
                return
        self.stop()
        raise IsolationError(f"redis-server did not start; see {self.dir}/redis.log")

    def _start(self, port: int) -> bool:
        with open(os.path.join(self.dir, "redis.log"), "ab") as log:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", self.dir, "--databases", "16"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C stops pytest, which then stops this
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        client = redis.Redis(port=port, socket_timeout=1)
        deadline = time.monotonic() + 15
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    self.port = port
                    return True
            time.sleep(0.05)
        self._stop_proc()
        return False

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _stop_proc(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # by pid: this process's own child
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def stop(self) -> None:
        self._stop_proc()
        shutil.rmtree(self.dir, ignore_errors=True)


def _show(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _same_db(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port or 6379, pa.path.strip("/") or "0") == (
        pb.hostname,
        pb.port or 6379,
        pb.path.strip("/") or "0",
    )


def _owner(client: redis.Redis) -> str | None:
    """The run id in the database's OWNER_KEY, if any."""
    value = client.get(OWNER_KEY)
    return value.decode() if isinstance(value, bytes) else value


def claim(url: str, variable: str) -> bool:
    """Take the Redis database ``url`` for this run; True if this process took it.

    Empty: mark it as this run's. Already marked with this run id (a process of the same run,
    e.g. a pytest started by the run): use it. Anything else: refuse, touching nothing.
    """
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        owner = _owner(client)
        if owner == RUN_ID:
            return False
        if owner is None and client.dbsize() == 0 and client.set(OWNER_KEY, RUN_ID, nx=True):
            return True
        size = client.dbsize()
    except redis.RedisError as error:
        raise IsolationError(f"{variable}={_show(url)}: cannot reach Redis ({error}).") from None
    whose = f"test run {owner!r}" if owner is not None else "someone"
    raise IsolationError(
        f"{variable}={_show(url)} is not empty ({size} keys, used by {whose}). The tests only "
        f"use a Redis database they find empty. Name an empty one, or unset {variable} and the "
        "tests start a private redis-server. If a run of yours was killed and left it behind, "
        f"empty it yourself: redis-cli -u {_show(url)} flushdb"
    )


def reset(url: str) -> None:
    """Empty a database this run claimed (a fresh start for a cluster), keeping the claim."""
    client = redis.Redis.from_url(url)
    if _owner(client) != RUN_ID:
        raise IsolationError(f"{_show(url)} is not this test run's; not flushing it.")
    client.flushdb()
    client.set(OWNER_KEY, RUN_ID)


def _release(url: str) -> None:
    """At the end of the run: empty a database this process claimed, if it is still ours."""
    with contextlib.suppress(redis.RedisError):
        client = redis.Redis.from_url(url, socket_timeout=5)
        if _owner(client) == RUN_ID:
            client.flushdb()


def _setup() -> dict[str, str]:
    if "mypy" in sys.modules:
        # django-stubs' mypy plugin reads these settings for their types only (and leaves
        # with os._exit, skipping atexit): no server, no claims, URLs that point nowhere.
        return {var: f"redis://127.0.0.1:1/{db}" for var, db in REDIS_DBS.items()}
    given = {var: os.environ[var] for var in REDIS_DBS if os.environ.get(var)}
    # The clock cluster's database defaulted to db 14 of E2E_REDIS_URL's server: keep that.
    if "E2E_REDIS_URL" in given and "E2E_CLOCK_REDIS_URL" not in given:
        given["E2E_CLOCK_REDIS_URL"] = given["E2E_REDIS_URL"].rsplit("/", 1)[0] + "/14"
    inherited = set(os.environ.get(PRIVATE_REDIS_VARS, "").split())  # a parent run's own
    named = [var for var in given if var not in inherited]
    if named and WORKER:
        raise IsolationError(
            f"{', '.join(named)} name Redis databases, and this run has several test processes "
            "(pytest-xdist): each needs databases of its own. Unset them, and each process "
            "starts a private redis-server, or run in one process (bin/test -n 0)."
        )
    urls = dict(given)
    if len(urls) < len(REDIS_DBS):
        server = SessionRedis()
        private = {var: server.url(db) for var, db in REDIS_DBS.items() if var not in urls}
        urls |= private
        os.environ[PRIVATE_REDIS_VARS] = " ".join(private)
    names = list(urls)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if _same_db(urls[a], urls[b]):
                raise IsolationError(
                    f"{a} and {b} name the same Redis database ({_show(urls[a])}); "
                    "the tests need one database for each."
                )
    for var, url in urls.items():
        if claim(url, var):
            atexit.register(_release, url)
    # Processes the tests start (and a nested pytest) see the same URLs and run id.
    os.environ.update(urls)
    return urls


URLS = _setup()
BROKER_URL = URLS["TEST_BROKER_URL"]
E2E_REDIS_URL = URLS["E2E_REDIS_URL"]
E2E_CLOCK_REDIS_URL = URLS["E2E_CLOCK_REDIS_URL"]

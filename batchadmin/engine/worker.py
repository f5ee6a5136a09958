"""A Celery worker as a batch server.

``celery -A batchadmin worker -n NAME@%h`` is a replica of batch server NAME. On start it
registers (a new server gets the default group), consumes the queues of the groups assigned to
NAME, and from then on a heartbeat thread records that it is alive and follows changes of the
server's groups with remote-control add_consumer / cancel_consumer, without a restart.

The heartbeat also applies the server's schedule (schedule.py) to the running pool: it grows or
shrinks the prefork pool and the prefetch count to the threads of the window in force (the
worker's -c is the ceiling), and outside every window it stops consuming the batch group queues,
so running tasks finish and no new ones start. The alerts queue is always consumed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery.worker import state as worker_state
from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils.timezone import now

from batchadmin.engine import counters
from batchadmin.jobs.models import BatchTask
from batchadmin.lib import db
from batchadmin.servers import schedule
from batchadmin.servers.models import (
    QUEUE_PREFIX,
    BatchGroup,
    BatchServer,
    BatchServerReplica,
    normalise_node_name,
    normalise_server_name,
)

log = logging.getLogger(__name__)

_server_ids: dict[str, int] = {}
# The -c each worker of this process was started with: the ceiling of its schedule windows.
_ceilings: dict[str, int] = {}


def server_name(hostname: str) -> str:
    """The batch server of a node name: the part before "@", as a valid server name."""
    return normalise_server_name(hostname.split("@", 1)[0])


def node_name(hostname: str) -> str:
    """The node name as replicas and attempts store it (Celery's own is kept for remote
    control: add_consumer and friends address the real one)."""
    return normalise_node_name(hostname)


def register_server(name: str) -> BatchServer:
    with transaction.atomic():
        server, created = BatchServer.objects.get_or_create(name=name)
        if created:
            # D365: every batch server serves the default group until told otherwise.
            server.groups.add(BatchGroup.objects.default())
    _server_ids[name] = server.pk
    return server


def server_id(hostname: str) -> int | None:
    """The BatchServer id of a node name, cached per process."""
    if not hostname:
        return None
    name = server_name(hostname)
    if name not in _server_ids:
        _server_ids[name] = register_server(name).pk
    return _server_ids[name]


def forget_server(hostname: str) -> None:
    """Drop a cached server id (its row was deleted and registered again)."""
    _server_ids.pop(server_name(hostname), None)


def wanted_queues(server: BatchServer, threads: int | None = None) -> list[str]:
    """The queues of the server's groups, then the service queues (the alerts').

    Every replica consumes the service queues, also a disabled server, one without groups or
    one outside every schedule window (``threads`` 0), so alerts go out with the workers ops
    already run. Being always wanted, the heartbeat never cancels them.
    """
    service = list(settings.BATCH_SERVICE_QUEUES)
    if not server.enabled or threads == 0:
        return service
    codes = server.groups.values_list("code", flat=True)
    return [*sorted(QUEUE_PREFIX + code for code in codes), *service]


@signals.celeryd_init.connect
def on_worker_init(sender: str, instance: Any, **kwargs: Any) -> None:
    """Choose the queues before the worker sets them up (an explicit -Q still wins).

    With the database away the server's groups are unknown: the worker starts with the
    service queues only, not Celery's default queue (batch.default, which may be a group this
    server does not serve), and its first heartbeat after the database is back adds the rest.
    """
    try:
        server = register_server(server_name(sender))
        # Outside every window the worker starts without its group queues (the ceiling does
        # not matter for 0); otherwise it would take tasks before its first heartbeat.
        threads = schedule.plan(list(server.schedule.all()), server.time_zone, now(), 1).threads
        queues = wanted_queues(server, threads)
        log.info("Batch server %s consumes %s", server.name, ", ".join(queues))
    except db.BLIPS:
        queues = list(settings.BATCH_SERVICE_QUEUES)
        log.warning(
            "Batch server %s: the database is unavailable, so its batch groups are unknown; "
            "consuming %s until a heartbeat reaches the database",
            server_name(sender),
            ", ".join(queues),
        )
    for queue in queues:
        instance.app.amqp.queues.select_add(queue)
    instance.app.amqp.queues.select(queues)
    # Do not hand an open connection to the forked pool children.
    connections.close_all()


@signals.worker_init.connect
def on_worker_setup(sender: Any, **kwargs: Any) -> None:
    """Start the pool at the size of the window in force; remember -c as the ceiling.

    Runs after the worker read its options and before it creates the pool, so a replica
    started in a 2-thread window with -c 8 forks 2 processes and never runs 8 tasks at once.
    """
    controller = sender
    if getattr(controller, "autoscale", None) or not isinstance(controller.concurrency, int):
        return  # --autoscale owns the pool size (see schedule.py)
    ceiling = controller.concurrency
    _ceilings[controller.hostname] = ceiling
    try:
        server = register_server(server_name(controller.hostname))
        plan = schedule.plan(list(server.schedule.all()), server.time_zone, now(), ceiling)
    finally:
        connections.close_all()  # before the pool forks
    if plan.pool_size != ceiling:
        log.info(
            "%s: %s applies: starting %d of %d processes",
            controller.hostname,
            plan.window,
            plan.pool_size,
            ceiling,
        )
        controller.concurrency = plan.pool_size


@signals.worker_ready.connect
def on_worker_ready(sender: Any, **kwargs: Any) -> None:
    consumer = sender
    hostname = consumer.hostname
    size = consumer.pool.num_processes if consumer.pool else 0
    pool = LivePool(consumer) if consumer.pool and not consumer.controller.autoscaler else None
    thread = threading.Thread(
        target=_heartbeat_loop,
        args=(consumer.app, hostname, _ceilings.get(hostname, size), pool),
        name="batch-heartbeat",
        daemon=True,
    )
    thread.start()


@signals.worker_shutdown.connect
def on_worker_shutdown(sender: Any, **kwargs: Any) -> None:
    hostname = getattr(sender, "hostname", "")
    try:
        close_old_connections()
        BatchServerReplica.objects.filter(hostname=node_name(hostname)).delete()
    except Exception:
        log.exception("Could not unregister replica %s", hostname)


@signals.worker_process_shutdown.connect
def on_worker_process_shutdown(**kwargs: Any) -> None:
    # A pool process ends with os._exit (no atexit): write its metrics tally now.
    counters.TALLY.flush()


@dataclass
class Beat:
    """What one heartbeat hands to the next."""

    queues: set[str] | None = None
    """The queues consumed after the beat; None before the first beat of the process."""
    threads: int | None = None
    """The threads the schedule allowed at the beat."""


class LivePool:
    """The running worker's prefork pool and prefetch count, resized from the heartbeat thread.

    Both belong to the worker's event loop, so the change runs there (consumer.call_soon, as
    the pool_grow / pool_shrink remote-control commands do) instead of in this thread.
    """

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer

    @property
    def size(self) -> int:
        return int(self.consumer.pool.num_processes)

    def _prefetch_for(self, size: int) -> int:
        return size * int(self.consumer.prefetch_multiplier)

    def apply(self, size: int) -> None:
        """Ask the event loop for ``size`` processes unless the pool has them already."""
        consumer = self.consumer
        prefetch_off = not consumer.initial_prefetch_count
        if self.size == size and (prefetch_off or consumer.qos.value == self._prefetch_for(size)):
            return
        consumer.call_soon(self.resize, size)

    def resize(self, size: int) -> None:
        """In the event loop: grow, or shrink by the idle processes, and follow with prefetch.

        Billiard's shrink only stops processes without a job (it raises when all are busy), so
        a running task is never killed: the excess processes go on later beats, once their
        tasks finish. The prefetch count drops at once, so meanwhile no more than ``size``
        tasks are reserved (acks_late: a running task holds its message until it ends).
        """
        consumer = self.consumer
        pool = consumer.pool
        current = pool.num_processes
        if size > current:
            pool.grow(size - current)
        elif size < current:
            idle = current - len(worker_state.reserved_requests)
            if idle > 0:
                try:
                    pool.shrink(min(current - size, idle))
                except ValueError:
                    log.debug("%s: no idle process to stop yet", consumer.hostname)
        pool.maintain_pool()  # fork the new processes now, reap the stopped ones
        if consumer.initial_prefetch_count:  # 0: prefetch disabled (-O / multiplier 0)
            prefetch = self._prefetch_for(size)
            # Also the value a reconnect starts from.
            consumer.initial_prefetch_count = prefetch
            qos = consumer.qos
            if prefetch > qos.value:
                qos.increment_eventually(prefetch - qos.value)
            elif prefetch < qos.value:
                qos.decrement_eventually(qos.value - prefetch)
            qos.update()


def _heartbeat_loop(app: Any, hostname: str, ceiling: int, pool: LivePool | None) -> None:
    name = server_name(hostname)
    last = Beat()
    while True:
        try:
            close_old_connections()
            last = heartbeat(app, hostname, ceiling, last, pool)
        except Exception:
            log.exception("Heartbeat of %s failed; retrying", name)
            db.reset()
        time.sleep(settings.BATCH_HEARTBEAT_SECONDS)


def heartbeat(
    app: Any, hostname: str, ceiling: int, last: Beat, pool: LivePool | None = None
) -> Beat:
    """Record that this replica is alive; follow its server's groups and schedule.

    1. The schedule row in force gives the threads (the worker's -c is the ceiling).
    2. Outside every window (0 threads) the group queues are cancelled: running tasks finish,
       no new ones arrive. Group changes add or cancel queues the same way.
    3. The pool and prefetch follow the threads (``pool``: None in tests and with autoscale).
    """
    at = now()
    server = register_server(server_name(hostname))
    node = node_name(hostname)
    busy = BatchTask.objects.running().filter(hostname=node).count()
    plan = schedule.plan(list(server.schedule.all()), server.time_zone, at, ceiling)
    if last.threads is None:
        if plan.window != "no schedule":
            log.info("%s: %s applies: %d threads", hostname, plan.window, plan.threads)
    elif plan.threads != last.threads:
        log.info(
            "%s: %s now applies: %d -> %d threads",
            hostname,
            plan.window,
            last.threads,
            plan.threads,
        )
    wanted = set(wanted_queues(server, plan.threads))
    current = set(app.amqp.queues.consume_from) if last.queues is None else last.queues
    for queue in sorted(wanted - current):
        app.control.add_consumer(queue, destination=[hostname])
        log.info("%s now consumes %s", hostname, queue)
    for queue in sorted(current - wanted):
        app.control.cancel_consumer(queue, destination=[hostname])
        log.info("%s no longer consumes %s", hostname, queue)
    if pool is not None:
        pool.apply(plan.pool_size)
    fields: dict[str, Any] = {
        "server": server,
        "pid": os.getpid(),
        "concurrency": plan.threads,
        "busy": busy,
        "queues": sorted(wanted),
        "last_heartbeat": at,
    }
    if last.queues is None:  # first beat of this process: a (re)start
        fields["started_at"] = at
    BatchServerReplica.objects.update_or_create(hostname=node, defaults=fields)
    return Beat(queues=wanted, threads=plan.threads)

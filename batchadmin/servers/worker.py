"""A Celery worker as a batch server.

``celery -A batchadmin worker -n NAME@%h`` is a replica of batch server NAME. On start it
registers (a new server gets the default group), consumes the queues of the groups assigned to
NAME, and from then on a heartbeat thread records that it is alive and follows changes of the
server's groups with remote-control add_consumer / cancel_consumer, without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import signals
from django.conf import settings
from django.db import close_old_connections, connections, transaction
from django.utils.timezone import now

from batchadmin.alerts.outbox import ALERT_QUEUE
from batchadmin.servers.models import (
    QUEUE_PREFIX,
    BatchGroup,
    BatchServer,
    BatchServerReplica,
)

log = logging.getLogger(__name__)

_server_ids: dict[str, int] = {}


def server_name(hostname: str) -> str:
    return hostname.split("@", 1)[0]


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


def wanted_queues(server: BatchServer) -> list[str]:
    """The queues of the server's groups, then the alerts queue.

    Every replica delivers alerts, also a disabled server or one without groups, so alerts go
    out with the workers ops already run. Being always wanted, the heartbeat never cancels it.
    """
    if not server.enabled:
        return [ALERT_QUEUE]
    codes = server.groups.values_list("code", flat=True)
    return [*sorted(QUEUE_PREFIX + code for code in codes), ALERT_QUEUE]


@signals.celeryd_init.connect
def on_worker_init(sender: str, instance: Any, **kwargs: Any) -> None:
    """Choose the queues before the worker sets them up (an explicit -Q still wins)."""
    server = register_server(server_name(sender))
    queues = wanted_queues(server)
    for queue in queues:
        instance.app.amqp.queues.select_add(queue)
    instance.app.amqp.queues.select(queues)
    log.info("Batch server %s consumes %s", server.name, ", ".join(queues))
    # Do not hand an open connection to the forked pool children.
    connections.close_all()


@signals.worker_ready.connect
def on_worker_ready(sender: Any, **kwargs: Any) -> None:
    consumer = sender
    hostname = consumer.hostname
    concurrency = consumer.pool.num_processes if consumer.pool else 0
    thread = threading.Thread(
        target=_heartbeat_loop,
        args=(consumer.app, hostname, concurrency),
        name="batch-heartbeat",
        daemon=True,
    )
    thread.start()


@signals.worker_shutdown.connect
def on_worker_shutdown(sender: Any, **kwargs: Any) -> None:
    hostname = getattr(sender, "hostname", "")
    try:
        close_old_connections()
        BatchServerReplica.objects.filter(hostname=hostname).delete()
    except Exception:
        log.exception("Could not unregister replica %s", hostname)


def _heartbeat_loop(app: Any, hostname: str, concurrency: int) -> None:
    name = server_name(hostname)
    consumed: set[str] | None = None
    while True:
        try:
            close_old_connections()
            consumed = heartbeat(app, hostname, concurrency, consumed)
        except Exception:
            log.exception("Heartbeat of %s failed; retrying", name)
            connections.close_all()
        time.sleep(settings.BATCH_HEARTBEAT_SECONDS)


def heartbeat(app: Any, hostname: str, concurrency: int, consumed: set[str] | None) -> set[str]:
    """Record that this replica is alive; follow changes of its server's groups.

    Returns the queues the replica consumes after this beat.
    """
    from batchadmin.jobs.models import BatchStatus, BatchTask

    server = register_server(server_name(hostname))
    busy = BatchTask.objects.filter(
        hostname=hostname, status__in=[BatchStatus.EXECUTING, BatchStatus.CANCELING]
    ).count()
    wanted = set(wanted_queues(server))
    current = set(app.amqp.queues.consume_from) if consumed is None else consumed
    for queue in sorted(wanted - current):
        app.control.add_consumer(queue, destination=[hostname])
        log.info("%s now consumes %s", hostname, queue)
    for queue in sorted(current - wanted):
        app.control.cancel_consumer(queue, destination=[hostname])
        log.info("%s no longer consumes %s", hostname, queue)
    at = now()
    fields: dict[str, Any] = {
        "server": server,
        "pid": os.getpid(),
        "concurrency": concurrency,
        "busy": busy,
        "queues": sorted(wanted),
        "last_heartbeat": at,
    }
    if consumed is None:  # first beat of this process: a (re)start
        fields["started_at"] = at
    BatchServerReplica.objects.update_or_create(hostname=hostname, defaults=fields)
    return wanted

"""`manage.py batch ...`: the command-line contract that scripts and tests use."""

from __future__ import annotations

import json
import sys
import time
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Prefetch
from django.utils.timezone import now

from batchadmin.engine import transitions
from batchadmin.jobs import io
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchStatus,
    BatchTaskRun,
    StatusChange,
)
from batchadmin.lib import recurrence
from batchadmin.servers.models import BatchServer, BatchServerReplica

STATUS_ARGS = {
    "waiting": BatchStatus.WAITING,
    "withhold": BatchStatus.WITHHOLD,
    "cancel": BatchStatus.CANCELING,
}
WAIT_POLL_SECONDS = 0.2
NEXT_DEFAULT, NEXT_MAX = 5, 1000


class Command(BaseCommand):
    help = "Import, export, inspect and control batch jobs and servers."

    def add_arguments(self, parser: ArgumentParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        p = sub.add_parser(
            "import",
            help="Create the jobs (and groups) a JSON file describes; print each job id.",
        )
        p.add_argument("file", help="Path to the JSON file, or - for standard input.")
        p.add_argument("--user", help="Username recorded as the jobs' creator.")
        p = sub.add_parser("export", help="Print a job as JSON that import accepts.")
        p.add_argument("job_id", type=int)
        p = sub.add_parser("show", help="Show a job and its tasks.")
        p.add_argument("job_id", type=int)
        p.add_argument("--json", action="store_true", help="Machine-readable output.")
        p = sub.add_parser("wait", help="Wait until the job's run is over; print its final status.")
        p.add_argument("job_id", type=int)
        p.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="Give up (exit 1) after this many seconds.",
        )
        p = sub.add_parser("status", help="Change status: waiting, withhold or cancel.")
        p.add_argument("job_id", type=int)
        p.add_argument("status", choices=sorted(STATUS_ARGS))
        p.add_argument("--user", help="Username recorded as the one who changed it.")
        p = sub.add_parser(
            "next",
            help="Print the job's next start times, ISO 8601 with the offset of its recurrence's "
            "zone, one per line.",
        )
        p.add_argument("job_id", type=int)
        p.add_argument(
            "--count", type=int, default=NEXT_DEFAULT, help=f"How many (default {NEXT_DEFAULT})."
        )
        sub.add_parser(
            "servers",
            help="List batch servers, their groups, threads and replicas online.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, "do_" + options["action"])(**options)

    # --- actions ----------------------------------------------------------------------------

    def do_import(self, *, file: str, user: str | None, **_: Any) -> None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text()
        except OSError as exc:
            raise CommandError(f"Can't read {file}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{file} is not valid JSON: {exc}") from None
        try:
            jobs = io.import_data(data, user=_user(user))
        except io.ImportFailure as exc:
            raise CommandError(f"Nothing was imported. {exc}") from None
        for job in jobs:
            self.stdout.write(str(job.pk))

    def do_export(self, *, job_id: int, **_: Any) -> None:
        self.stdout.write(json.dumps(io.export_file(_job(job_id)), indent=2))

    def do_show(self, *, job_id: int, json: bool, **_: Any) -> None:
        job = _job(job_id)
        data = show_job(job)
        if json:
            self.stdout.write(_json_dumps(data))
            return
        self.stdout.write(f"Job {job.pk}: {job.description} [{job.get_status_display()}]")
        for t in data["tasks"]:
            self.stdout.write(
                f"  {t['key']:<12} {t['status']:<10} retries={t['retries']} server={t['server'] or '-'}  {t['description']}"
            )

    def do_wait(self, *, job_id: int, timeout: float | None, **_: Any) -> None:
        # The end of the run is read from the job's status changes, not from its runs: a job
        # that does not save its history (Save job to history) drops the run as it ends.
        changes = StatusChange.objects.filter(job_id=job_id)
        seen = changes.order_by("-pk").values_list("pk", flat=True).first() or 0
        # Read after ``seen``: a run that ends from here on writes a change past it.
        job = _job(job_id)
        if job.status not in (*RUNNING_STATUSES, BatchStatus.WAITING):
            self.stdout.write(job.status)  # Withhold, or over already: nothing to wait for
            return
        ends = changes.filter(pk__gt=seen, new_status__in=transitions.TERMINAL_JOB_STATUSES)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            final = ends.order_by("pk").values_list("new_status", flat=True).first()
            if final is not None:
                self.stdout.write(final)
                return
            if deadline is not None and time.monotonic() >= deadline:
                self.stderr.write(
                    f"Timed out after {timeout:g}s; job {job_id} is {BatchJob.objects.get(pk=job_id).status}."
                )
                sys.exit(1)
            time.sleep(WAIT_POLL_SECONDS)

    def do_status(self, *, job_id: int, status: str, user: str | None, **_: Any) -> None:
        _job(job_id)
        by = _user(user)
        try:
            done = transitions.change_status(
                job_id=job_id, to=STATUS_ARGS[status], by_id=by.pk if by else None
            )
        except transitions.IllegalMove as exc:
            raise CommandError(str(exc)) from None
        if not done:
            raise CommandError(f"Job {job_id} changed status meanwhile; try again.")
        self.stdout.write(BatchJob.objects.get(pk=job_id).status)

    def do_next(self, *, job_id: int, count: int, **_: Any) -> None:
        """Exactly one ISO 8601 time per line (a contract: scripts read it); nothing for a job
        that starts no more by itself, with the reason on standard error."""
        if not 1 <= count <= NEXT_MAX:
            raise CommandError(f"--count must be from 1 to {NEXT_MAX}, got {count}.")
        job = _job(job_id)
        recurring = job.get_recurrence()
        try:
            starts = job.next_starts(count)
        except recurrence.RuleError as exc:
            raise CommandError(f"Job {job_id} has an invalid recurrence: {exc}") from None
        for t in starts:
            self.stdout.write(t.isoformat())
        if not starts:
            why = (
                f"it is {job.get_status_display()}"
                if job.status != BatchStatus.WAITING and not job.is_running()
                else "its recurrence is over"
                if recurring is not None
                else "it runs once, now"
            )
            self.stderr.write(f"Job {job_id} has no next start: {why}.")

    def do_servers(self, **_: Any) -> None:
        at = now()
        replicas = Prefetch(
            "replicas", queryset=BatchServerReplica.objects.online(at), to_attr="online"
        )
        servers = BatchServer.objects.prefetch_related("groups", "schedule", replicas)
        if not servers:
            self.stdout.write(
                "No batch servers yet. Start one: celery -A batchadmin worker -n aos1@%h"
            )
            return
        for server in servers:
            groups = ", ".join(g.code for g in server.groups.all()) or "(none)"
            scheduled = server.max_threads_at(at)
            online: list[BatchServerReplica] = server.online
            threads = sum(r.concurrency for r in online)
            busy = sum(r.busy for r in online)
            limit = "" if scheduled is None else f", schedule allows {scheduled}"
            state = "" if server.enabled else " (disabled)"
            self.stdout.write(
                f"{server.name}{state}: groups {groups}; threads {busy}/{threads} busy{limit}; {len(online)} replica(s) online"
            )
            for r in online:
                self.stdout.write(
                    f"  {r.hostname} pid {r.pid}, {r.busy}/{r.concurrency} busy, heartbeat {r.last_heartbeat:%H:%M:%S}"
                )


def show_job(job: BatchJob) -> dict[str, Any]:
    runs = BatchTaskRun.objects.filter(job_run_id=job.current_run_id, attempt__gt=0).select_related(
        "server"
    )
    last_server = {r.task_id: r.server.name if r.server else None for r in runs.order_by("attempt")}
    return {
        "id": job.pk,
        "description": job.description,
        "status": job.status,
        "tasks": [
            {
                "key": t.key,
                "description": t.description,
                "status": t.status,
                "server": last_server.get(t.pk),
                "retries": t.retries,
                "started_at": t.started_at,
                "ended_at": t.ended_at,
            }
            for t in job.tasks.order_by("position", "pk")
        ],
    }


def _json_dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=lambda v: v.isoformat())


def _job(job_id: int) -> BatchJob:
    try:
        return BatchJob.objects.get(pk=job_id)
    except BatchJob.DoesNotExist:
        raise CommandError(f"There is no batch job {job_id}.") from None


def _user(username: str | None) -> Any:
    if not username:
        return None
    try:
        return get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"Unknown user {username!r}.") from None

"""`manage.py batch ...`: the command-line contract that scripts and tests use."""

from __future__ import annotations

import datetime as dt
import json
import math
import sys
import time
from argparse import ArgumentParser, ArgumentTypeError
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Prefetch
from django.utils.timezone import now

from batchadmin.accounts import tokens
from batchadmin.audit import trail
from batchadmin.audit.models import AuditEntry
from batchadmin.engine import transitions
from batchadmin.jobs import access, io
from batchadmin.jobs.models import (
    RUNNING_STATUSES,
    BatchJob,
    BatchStatus,
    BatchTask,
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
CLI = trail.Via.CLI
USER_HELP = "The user who acts: checked against their role as the pages are, and recorded."


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
            type=_seconds,
            default=None,
            help="Give up (exit 1) after this many seconds.",
        )
        p.add_argument(
            "--check",
            action="store_true",
            help="Exit 2 when the final status is not Ended (scripts: fail on Error, Canceled).",
        )
        p = sub.add_parser("status", help="Change status: waiting, withhold or cancel.")
        p.add_argument("job_id", type=int)
        p.add_argument("status", choices=sorted(STATUS_ARGS))
        p.add_argument(
            "--user",
            help="Username recorded as the one who changed it; checked against its role.",
        )
        p = sub.add_parser(
            "next",
            help="Print the job's next start times, ISO 8601 with the offset of its recurrence's "
            "zone, one per line.",
        )
        p.add_argument("job_id", type=int)
        p.add_argument(
            "--count", type=int, default=NEXT_DEFAULT, help=f"How many (default {NEXT_DEFAULT})."
        )
        p = sub.add_parser(
            "skip",
            help="Skip a task with a reason: it counts as Ended; a finished job resumes.",
        )
        p.add_argument("job_id", type=int)
        p.add_argument("task_key", help="The task ID (key) within the job, e.g. T2.")
        p.add_argument("--reason", required=True, help="Why: kept in the audit trail.")
        p.add_argument("--user", required=True, help=USER_HELP)
        p = sub.add_parser(
            "rerun", help="Run the job's last run again now: from a task, or its failed tasks."
        )
        p.add_argument("job_id", type=int)
        what = p.add_mutually_exclusive_group(required=True)
        what.add_argument(
            "--from", dest="from_task", metavar="TASK_KEY", help="That task and all after it."
        )
        what.add_argument(
            "--failed", action="store_true", help="The tasks that failed or did not run."
        )
        p.add_argument("--user", required=True, help=USER_HELP)
        p = sub.add_parser("run", help="Run the job now, optionally with parameter overrides.")
        p.add_argument("job_id", type=int)
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="TASK_KEY.NAME=VALUE",
            help="A parameter for this run only; VALUE is read as JSON when it is (7, true, "
            '["a","b"]), else as text. Repeat for more.',
        )
        p.add_argument("--user", required=True, help=USER_HELP)
        p = sub.add_parser(
            "pause", help="Pause the job's recurrence with a note: no run starts until resumed."
        )
        p.add_argument("job_id", type=int)
        p.add_argument("--reason", required=True, help="Why: shown with the job and audited.")
        p.add_argument(
            "--until",
            metavar="DATE",
            help="Resume by itself then: YYYY-MM-DD or YYYY-MM-DDTHH:MM[+offset], read in the "
            "recurrence's zone without an offset. Left out: until someone resumes it.",
        )
        p.add_argument("--user", required=True, help=USER_HELP)
        p = sub.add_parser("resume", help="Resume the job's paused recurrence.")
        p.add_argument("job_id", type=int)
        p.add_argument("--user", required=True, help=USER_HELP)
        p = sub.add_parser(
            "backfill",
            help="Run a recurring job once for each occurrence missed in a date range, one "
            "after the other; print those occurrences (managers only).",
        )
        p.add_argument("job_id", type=int)
        p.add_argument(
            "--from", dest="first_day", required=True, metavar="DATE", help="YYYY-MM-DD, included."
        )
        p.add_argument(
            "--to", dest="last_day", required=True, metavar="DATE", help="YYYY-MM-DD, included."
        )
        p.add_argument("--last", action="store_true", help="Only the last missed occurrence.")
        p.add_argument(
            "--dry-run", action="store_true", help="Print the occurrences; start nothing."
        )
        p.add_argument("--user", required=True, help=USER_HELP)
        p = sub.add_parser("audit", help="The job's audit trail, oldest first.")
        p.add_argument("job_id", type=int)
        p.add_argument("--json", action="store_true", help="Machine-readable output.")
        p.add_argument("--user", help="Show it only if this user may see the job.")
        sub.add_parser(
            "servers",
            help="List batch servers, their groups, threads and replicas online.",
        )
        p = sub.add_parser(
            "token", help="Make a personal API token for a user and print it (shown only once)."
        )
        p.add_argument("username")
        p.add_argument("--name", default="command line", help="What the token is for.")

    def handle(self, *args: Any, **options: Any) -> None:
        getattr(self, "do_" + options["action"])(**options)

    # --- actions ----------------------------------------------------------------------------

    def do_import(self, *, file: str, user: str | None, **_: Any) -> None:
        try:
            text = sys.stdin.read() if file == "-" else Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"Can't read {file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise CommandError(f"Nothing was imported. {file} is not UTF-8 text: {exc}") from None
        try:
            data = io.parse_json(text)
        except json.JSONDecodeError as exc:
            raise CommandError(f"{file} is not valid JSON: {exc}") from None
        except io.ImportFailure as exc:
            raise CommandError(f"Nothing was imported. {exc}") from None
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
        data = io.show_job(job)
        if json:
            self.stdout.write(_json_dumps(data))
            return
        self.stdout.write(f"Job {job.pk}: {job.description} [{job.get_status_display()}]")
        for t in data["tasks"]:
            self.stdout.write(
                f"  {t['key']:<12} {t['status']:<10} retries={t['retries']} server={t['server'] or '-'}  {t['description']}"
            )

    def do_wait(self, *, job_id: int, timeout: float | None, check: bool, **_: Any) -> None:
        final = self._wait(job_id, timeout)
        self.stdout.write(final)
        if check and final != BatchStatus.ENDED:
            self.stdout.flush()
            sys.exit(2)

    def _wait(self, job_id: int, timeout: float | None) -> str:
        # The end of the run is read from the job's status changes, not from its runs: a job
        # that does not save its history (Save job to history) drops the run as it ends.
        changes = StatusChange.objects.filter(job_id=job_id)
        seen = changes.order_by("-pk").values_list("pk", flat=True).first() or 0
        # Read after ``seen``: a run that ends from here on writes a change past it.
        job = _job(job_id)
        if job.status not in (*RUNNING_STATUSES, BatchStatus.WAITING):
            return job.status  # Withhold, or over already: nothing to wait for
        ends = changes.filter(pk__gt=seen, new_status__in=transitions.TERMINAL_JOB_STATUSES)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            final = ends.order_by("pk").values_list("new_status", flat=True).first()
            if final is not None:
                return final
            if deadline is not None and time.monotonic() >= deadline:
                self.stderr.write(
                    f"Timed out after {timeout:g}s; job {job_id} is {BatchJob.objects.get(pk=job_id).status}."
                )
                sys.exit(1)
            time.sleep(WAIT_POLL_SECONDS)

    def do_status(self, *, job_id: int, status: str, user: str | None, **_: Any) -> None:
        _job(job_id)
        by = _operator(user, job_id) if user else None
        try:
            done = transitions.change_status(
                job_id=job_id, to=STATUS_ARGS[status], by_id=by.pk if by else None, via=CLI
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

    def do_skip(self, *, job_id: int, task_key: str, reason: str, user: str, **_: Any) -> None:
        by = _operator(user, job_id)
        task = _task(job_id, task_key)
        self._act(
            job_id,
            lambda: transitions.skip_task(task_id=task.pk, reason=reason, by_id=by.pk, via=CLI),
        )

    def do_rerun(
        self, *, job_id: int, from_task: str | None, failed: bool, user: str, **_: Any
    ) -> None:
        by = _operator(user, job_id)
        start = _task(job_id, from_task).pk if from_task else None
        self._act(
            job_id,
            lambda: transitions.rerun_job(
                job_id=job_id, by_id=by.pk, only_failed=failed, from_task_id=start, via=CLI
            ),
        )

    def do_run(self, *, job_id: int, param: list[str], user: str, **_: Any) -> None:
        by = _operator(user, job_id)
        overrides = _overrides(param)
        self._act(
            job_id,
            lambda: transitions.run_job_now(
                job_id=job_id, by_id=by.pk, overrides=overrides, via=CLI
            ),
        )

    def do_pause(self, *, job_id: int, reason: str, until: str | None, user: str, **_: Any) -> None:
        """Prints "paused" (a contract: scripts read it); the note goes with the job."""
        by = _operator(user, job_id)
        job = _job(job_id)
        recurring = job.get_recurrence()
        if recurring is None:
            raise CommandError(f"Nothing was changed. Job {job_id} has no recurrence to pause.")
        resume_at = None
        if until:
            try:
                resume_at = recurring.aware(dt.datetime.fromisoformat(until))
            except (ValueError, recurrence.RuleError):
                raise CommandError(
                    f"--until {until!r}: write a date as YYYY-MM-DD or a time as "
                    "YYYY-MM-DDTHH:MM (with an offset, or in the recurrence's zone)."
                ) from None
        try:
            done = transitions.pause_recurrence(
                job_id=job_id, by_id=by.pk, reason=reason, until=resume_at, via=CLI
            )
        except transitions.Refused as exc:
            raise CommandError(f"Nothing was changed. {exc}") from None
        if not done:
            raise CommandError(f"Job {job_id} changed meanwhile; nothing was changed. Try again.")
        self.stdout.write("paused")

    def do_resume(self, *, job_id: int, user: str, **_: Any) -> None:
        """Prints "resumed" (a contract, as pause)."""
        by = _operator(user, job_id)
        try:
            done = transitions.resume_recurrence(job_id=job_id, by_id=by.pk, via=CLI)
        except transitions.Refused as exc:
            raise CommandError(f"Nothing was changed. {exc}") from None
        if not done:
            raise CommandError(f"Job {job_id} changed meanwhile; nothing was changed. Try again.")
        self.stdout.write("resumed")

    def do_backfill(
        self,
        *,
        job_id: int,
        first_day: str,
        last_day: str,
        last: bool,
        dry_run: bool,
        user: str,
        **_: Any,
    ) -> None:
        """One ISO 8601 occurrence per line, oldest first (scripts read it); the count on
        standard error."""
        by = _viewer(user, job_id)
        if not access.is_manager(by):
            raise CommandError(f"Only a Batch job manager can backfill job {job_id}{_role(by)}.")
        try:
            times = transitions.backfill_job(
                job_id=job_id,
                first_day=_date(first_day, "--from"),
                last_day=_date(last_day, "--to"),
                only_last=last,
                dry_run=dry_run,
                by_id=by.pk,
                via=CLI,
            )
        except transitions.Refused as exc:
            raise CommandError(f"Nothing was started. {exc}") from None
        tz = _job(job_id).recurrence.rule().tz
        for t in times:
            self.stdout.write(t.astimezone(tz).isoformat())
        if not times:
            self.stderr.write(f"Job {job_id} missed no occurrence from {first_day} to {last_day}.")
        elif dry_run:
            self.stderr.write(f"Dry run: the backfill would start {len(times)} run(s).")
        else:
            self.stderr.write(f"Started a backfill of {len(times)} run(s), one after the other.")

    def _act(self, job_id: int, action: Callable[[], bool]) -> None:
        """Run an operator action; print the job's status after it, or say why not."""
        try:
            done = action()
        except transitions.Refused as exc:
            raise CommandError(f"Nothing was changed. {exc}") from None
        if not done:
            raise CommandError(f"Job {job_id} changed meanwhile; nothing was changed. Try again.")
        self.stdout.write(BatchJob.objects.get(pk=job_id).status)

    def do_audit(self, *, job_id: int, json: bool, user: str | None, **_: Any) -> None:
        if user:
            _viewer(user, job_id)
        elif not BatchJob.objects.filter(pk=job_id).exists() and not (
            AuditEntry.objects.of_job(job_id).exists()
        ):
            raise CommandError(f"There is no batch job {job_id}.")
        entries = [
            {
                "at": e.at,
                "user": e.username,
                "action": e.action,
                "reason": e.reason,
                "target": e.target,
                "changes": e.changes,
                "via": e.via,
            }
            for e in AuditEntry.objects.of_job(job_id).order_by("at", "pk")
        ]
        if json:
            self.stdout.write(_json_dumps(entries))
            return
        labels = dict(trail.Action.choices)
        for e in entries:
            reason = f": {e['reason']}" if e["reason"] else ""
            self.stdout.write(
                f"{e['at']:%Y-%m-%d %H:%M:%S} {e['user'] or 'system':<12} "
                f"{labels.get(str(e['action']), e['action'])} {e['target']}{reason}"
            )

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

    def do_token(self, *, username: str, name: str, **_: Any) -> None:
        user = _user(username)
        if not user.is_active:
            raise CommandError(f"User {username!r} is deactivated; a token would not work.")
        self.stdout.write(tokens.issue(user, name=name)[1])  # the plain token, shown this once


def _seconds(text: str) -> float:
    """--timeout: a number of seconds, 0 or more; nan and inf are no time (argparse says which
    option got what)."""
    try:
        value = float(text)
    except ValueError:
        raise ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise ArgumentTypeError(f"{text!r} is not a number of seconds, 0 or more")
    return value


def _json_dumps(data: Any) -> str:
    return json.dumps(data, indent=2, default=lambda v: v.isoformat())


def _job(job_id: int) -> BatchJob:
    try:
        return BatchJob.objects.get(pk=job_id)
    except BatchJob.DoesNotExist:
        raise CommandError(f"There is no batch job {job_id}.") from None


def _task(job_id: int, key: str) -> BatchTask:
    task = BatchTask.objects.filter(job_id=job_id, key=key).first()
    if task is None:
        keys = list(
            BatchTask.objects.filter(job_id=job_id)
            .order_by("position", "pk")
            .values_list("key", flat=True)[:20]
        )
        known = f"; its tasks: {', '.join(keys)}" if keys else "; it has no tasks"
        raise CommandError(f"Job {job_id} has no task {key!r}{known}.")
    return task


def _viewer(username: str, job_id: int) -> Any:
    """The user, if they may see the job, as the pages decide."""
    user = _user(username)
    if not access.visible_jobs(user).filter(pk=job_id).exists():
        if not BatchJob.objects.filter(pk=job_id).exists():
            raise CommandError(f"There is no batch job {job_id}.")
        raise CommandError(f"User {username} may not see batch job {job_id}{_role(user)}.")
    return user


def _operator(username: str, job_id: int) -> Any:
    """The user, if they may act on the job, as the pages decide (a viewer changes nothing; a
    batch user only the jobs they created or run as)."""
    user = _viewer(username, job_id)
    if not access.can_change(user, BatchJob.objects.get(pk=job_id)):
        raise CommandError(
            f"User {username} may see batch job {job_id} but not act on it{_role(user)}."
        )
    return user


def _role(user: Any) -> str:
    if user.is_superuser:
        return ""
    names = sorted(access.roles(user))
    return f" (role: {', '.join(names)})" if names else " (no batch role)"


def _overrides(params: list[str]) -> dict[str, dict[str, Any]]:
    """--param TASK_KEY.NAME=VALUE ...: {task key: {name: value}}; VALUE is JSON when it parses."""
    out: dict[str, dict[str, Any]] = {}
    for raw in params:
        target, sep, text = raw.partition("=")
        key, dot, name = target.partition(".")
        if not sep or not dot or not key or not name:
            raise CommandError(
                f"--param {raw!r}: write it as TASK_KEY.NAME=VALUE, e.g. T2.lines=5."
            )
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out.setdefault(key, {})[name] = value
    return out


def _date(value: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} {value!r} is not a date: write it as YYYY-MM-DD.") from None


def _user(username: str | None) -> Any:
    if not username:
        return None
    try:
        return get_user_model().objects.get(username=username)
    except get_user_model().DoesNotExist:
        raise CommandError(f"Unknown user {username!r}.") from None

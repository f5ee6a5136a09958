"""`manage.py demo_data`: a company, groups, servers, users and jobs that look like a real night.

Idempotent: run it again and it only adds what is missing.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils.timezone import now

from batchadmin.accounts.models import BATCH_USER, MANAGER, VIEWER
from batchadmin.alerts.models import AlertRule, BatchJobAlert
from batchadmin.jobs import history, io
from batchadmin.jobs.models import BatchJob, Company
from batchadmin.servers.models import BatchGroup, BatchServer, BatchServerSchedule

DEMO_USERS = [
    # username, password, superuser, role
    ("admin", "admin", True, None),
    ("manager", "manager", False, MANAGER),
    ("user", "user", False, BATCH_USER),
    ("viewer", "viewer", False, VIEWER),
]


def demo_jobs(start: dt.datetime) -> list[dict[str, Any]]:
    def at(minutes: int) -> str:
        return (start + dt.timedelta(minutes=minutes)).isoformat()

    return [
        {
            "description": "Nightly invoicing USMF",
            "scheduled_start": at(1),
            "priority": "high",
            "tasks": [
                {"key": "post", "description": "Post open invoices", "process": "demo.log",
                 "parameters": {"lines": 25}, "company": "USMF", "max_retries": 2},
                {"key": "settle", "description": "Settle payments", "process": "demo.sleep",
                 "parameters": {"seconds": 3}, "company": "USMF",
                 "conditions": [{"task": "post", "status": "ended"}]},
                {"key": "report", "description": "Invoice journal report", "process": "reports.task_history_csv",
                 "parameters": {"days": 1}, "group": "Reporting",
                 "conditions": [{"task": "settle", "status": "ended"}]},
                {"key": "mail", "description": "Mail the report to finance", "process": "mail.send_document",
                 "parameters": {"to": "manager@example.com", "subject": "Invoice journal", "document": "latest"},
                 "conditions": [{"task": "report", "status": "ended"}]},
                {"key": "alert", "description": "Log a warning when posting failed", "process": "demo.log",
                 "parameters": {"lines": 1}, "conditions": [{"task": "post", "status": "error"}]},
            ],
        },
        {
            "description": "Bank statement import (flaky integration)",
            "scheduled_start": at(2),
            "tasks": [
                {"key": "fetch", "description": "Fetch statements from the bank", "process": "demo.flaky",
                 "parameters": {"failures": 2}, "group": "Integration", "max_retries": 3},
                {"key": "match", "description": "Match statement lines", "process": "demo.log",
                 "parameters": {"lines": 10}, "conditions": [{"task": "fetch", "status": "ended"}]},
            ],
        },
        {
            "description": "Warehouse clean-up (fails)",
            "scheduled_start": at(3),
            "priority": "low",
            # Critical: its Error alerts every batch job manager (popup and e-mail).
            "critical": True,
            "tasks": [
                {"key": "purge", "description": "Purge old pick lists", "process": "demo.fail",
                 "parameters": {"message": "Warehouse WH-12 is locked by another process"}},
                {"key": "notify", "description": "Tell the warehouse team", "process": "demo.log",
                 "parameters": {"lines": 2}, "conditions": [{"task": "purge", "status": "error"}]},
            ],
        },
        {
            "description": "Month-end close (held)",
            "status": "withhold",
            "scheduled_start": at(60),
            "priority": "critical",
            "tasks": [
                {"key": f"close{i}", "description": f"Close ledger {i}", "process": "demo.sleep",
                 "parameters": {"seconds": 2}, "company": "USMF"}
                for i in range(1, 5)
            ],
        },
    ]  # fmt: skip


class Command(BaseCommand):
    help = "Create demo users, company USMF, batch groups, servers and a night of batch jobs."

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        for username, password, superuser, role in DEMO_USERS:
            if not User.objects.filter(username=username).exists():
                if superuser:
                    User.objects.create_superuser(username, f"{username}@example.com", password)
                else:
                    user = User.objects.create_user(username, f"{username}@example.com", password)
                    if role:
                        user.groups.add(Group.objects.get_or_create(name=role)[0])
        Company.objects.get_or_create(
            code="USMF", defaults={"name": "Contoso Entertainment System USA"}
        )
        default = BatchGroup.objects.default()
        reporting, _ = BatchGroup.objects.get_or_create(
            code="Reporting", defaults={"description": "Reports and documents"}
        )
        integration, _ = BatchGroup.objects.get_or_create(
            code="Integration", defaults={"description": "Bank and EDI integrations"}
        )
        for name, groups in (("aos1", [default, integration]), ("aos2", [default, reporting])):
            server, created = BatchServer.objects.get_or_create(name=name)
            if created or not server.groups.exists():
                server.groups.set(groups)
            if not server.schedule.exists():
                # The AX 2012 example: few threads by day, more at night.
                BatchServerSchedule.objects.create(
                    server=server, start_time=dt.time(8), end_time=dt.time(18), max_threads=2
                )
                BatchServerSchedule.objects.create(
                    server=server, start_time=dt.time(18), end_time=dt.time(8), max_threads=8
                )
        # The history clean-up job comes with the database (jobs migration 0005): not a demo job.
        if BatchJob.objects.exclude(tasks__process=history.CLEANUP_PROCESS).exists():
            self.stdout.write("Demo data: jobs exist already, none added.")
            return
        admin = User.objects.get(username="admin")
        jobs = io.import_data({"jobs": demo_jobs(now())}, user=admin)
        # So the bell has something to say: the manager hears how the invoicing ends, and
        # about anything stuck in any group.
        manager = User.objects.get(username="manager")
        BatchJobAlert.objects.create(
            job=jobs[0], user=manager, ended=True, error=True, canceled=True, popup=True, email=True
        )
        AlertRule.objects.create(user=manager, error=False, stuck=True, popup=True)
        self.stdout.write(
            f"Demo data: created jobs {', '.join(str(j.pk) for j in jobs)}; sign in as admin / admin."
        )

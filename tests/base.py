from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

from django.contrib.auth.models import Group, Permission, User
from django.db.models import Q
from django.test import TestCase
from django.utils.timezone import now

from batchadmin.accounts.models import BATCH_USER, MANAGER, VIEWER
from batchadmin.engine import runner, transitions, worker
from batchadmin.jobs.models import (
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
    Company,
)
from batchadmin.servers.models import BatchGroup, BatchServer

ROOT_DIR = Path(__file__).resolve().parents[1]  # the repository
HOSTNAME = "aos1@test"
SERVER_NAME = "aos1"


class BaseTestCase(TestCase):
    """Fixed users and a company, helpers that build jobs, and a worker that runs in-process.

    No broker: ``dispatch.send`` is a mock (``self.send``) for every test, so code that commits
    (``captureOnCommitCallbacks(execute=True)``) or a tick handler records its messages there.
    """

    alice: ClassVar[User]  # operator: role Batch job manager
    bob: ClassVar[User]  # role Viewer: may look at every job
    charlie: ClassVar[User]  # outsider: no batch role
    dave: ClassVar[User]  # role Batch user: sees and changes only their own jobs
    usmf: ClassVar[Company]
    server: ClassVar[BatchServer]

    @classmethod
    def setUpTestData(cls) -> None:
        cls.alice = User.objects.create_user("alice", "alice@example.org", "password")
        cls.bob = User.objects.create_user("bob", "bob@example.org", "password")
        cls.charlie = User.objects.create_user("charlie", "charlie@example.org", "password")
        cls.dave = User.objects.create_user("dave", "dave@example.org", "password")
        for user, role in ((cls.alice, MANAGER), (cls.bob, VIEWER), (cls.dave, BATCH_USER)):
            user.groups.add(Group.objects.get_or_create(name=role)[0])
        batch_models = Q(content_type__app_label__in=["jobs", "servers"])
        cls.alice.user_permissions.set(Permission.objects.filter(batch_models))
        cls.bob.user_permissions.set(
            Permission.objects.filter(batch_models, codename__startswith="view_")
        )
        cls.usmf = Company.objects.create(code="USMF", name="Contoso Entertainment System USA")
        # The batch server the in-process worker below claims tasks for, registered the way a
        # starting worker registers itself (with the default group).
        cls.server = worker.register_server(SERVER_NAME)

    def setUp(self) -> None:
        super().setUp()
        self.send = self.enterContext(
            mock.patch("batchadmin.engine.dispatch.send", side_effect=lambda tasks: len(tasks))
        )
        # Queuing an alert's delivery (Celery task "batchadmin.deliver_alerts") after commit.
        self.send_alert = self.enterContext(mock.patch("batchadmin.alerts.outbox.send"))

    # --- data ---------------------------------------------------------------------------------

    def make_job(self, **overrides: Any) -> BatchJob:
        defaults: dict[str, Any] = {
            "description": "Nightly settlement",
            "status": BatchStatus.WAITING,
            "scheduled_start": now(),
            "company": self.usmf,
            "created_by": self.alice,
        }
        return BatchJob.objects.create(**dict(defaults, **overrides))

    def make_task(self, job: BatchJob, key: str, **overrides: Any) -> BatchTask:
        defaults: dict[str, Any] = {
            "job": job,
            "key": key,
            "description": f"Task {key}",
            "process": "demo.noop",
            "group": BatchGroup.objects.default(),
        }
        return BatchTask.objects.create(**dict(defaults, **overrides))

    def add_condition(
        self, task: BatchTask, parent: BatchTask, expected: str = "ended"
    ) -> BatchTaskCondition:
        return BatchTaskCondition.objects.create(
            task=task, depends_on=parent, expected_status=expected
        )


# --- the engine, in-process -------------------------------------------------------------------
# Module functions, not methods: unittest's TestCase.run() must stay what it is.


def start(job: BatchJob) -> None:
    """What the tick does when ``job`` is due: Waiting -> Executing, root tasks Ready."""
    assert transitions.start_job(job_id=job.pk)
    job.refresh_from_db()


def run(task: BatchTask) -> bool:
    """Claim, run and settle ``task`` as worker aos1 would; False when the claim was lost."""
    # The lease keeper renews leases from a thread with its own database connection: the test
    # transaction is invisible to it, and a thread left connected would keep the test database
    # from being dropped. Lease expiry is tested through the tick instead.
    # worker.server_id() without its per-process cache, which would outlive the test's rollback.
    server_id = worker.register_server(worker.server_name(HOSTNAME)).pk
    with mock.patch.object(runner, "LEASES"):
        return runner.run_task(task_id=task.pk, server_id=server_id, hostname=HOSTNAME)


def drain(job: BatchJob, *, limit: int = 100) -> None:
    """Run the ready tasks of ``job`` (those past their retry backoff) until none is left."""
    with mock.patch("batchadmin.engine.dispatch.send", side_effect=lambda tasks: len(tasks)):
        for _ in range(limit):
            task = (
                BatchTask.objects.filter(job=job, status=BatchStatus.READY)
                .filter(Q(ready_at=None) | Q(ready_at__lte=now()))
                .order_by("position", "pk")
                .first()
            )
            if task is None:
                job.refresh_from_db()
                return
            assert run(task)
    raise AssertionError(f"job {job.pk} still has ready tasks after {limit} runs")


def statuses(job: BatchJob) -> dict[str, str]:
    """Task key -> status, to compare a whole job in one assert."""
    return dict(job.tasks.values_list("key", "status"))

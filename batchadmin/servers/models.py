from __future__ import annotations

import datetime as dt
import hashlib
import re
from zoneinfo import ZoneInfo

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils.timezone import now

from batchadmin.accounts.models import validate_time_zone

# Group codes and server names become Celery queue and node names: keep them to characters
# that are safe in both (no "@", no dots, no spaces).
CODE_VALIDATOR = RegexValidator(
    r"^[A-Za-z0-9_-]{1,50}$", "Use 1-50 letters, digits, hyphens or underscores."
)
SERVER_NAME_MAX = 50
NODE_NAME_MAX = 200  # BatchServerReplica.hostname and the attempts' hostname
QUEUE_PREFIX = "batch."
DEFAULT_GROUP_CODE = "default"
MAX_THREADS_LIMIT = 512
# D365 Max concurrency on the batch group: 0 = no limit, N = per job, -1 = paused.
NO_LIMIT = 0
PAUSED = -1
# Maximum running tasks of a whole group (0 = no limit): far above any real thread count.
MAX_GROUP_TASKS = 10000


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters; a cut one ends in a hash of the whole, so two long
    names that share their first characters stay apart."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{text[: limit - 9]}-{digest}"


def normalise_server_name(name: str) -> str:
    """A worker's name (the node name before "@") as a BatchServer name that CODE_VALIDATOR
    accepts: other characters become "-", a long name is cut (issue 13: a 51-character node
    name failed every heartbeat). The same name always gives the same server."""
    cleaned = _fit(re.sub(r"[^A-Za-z0-9_-]", "-", name) or "worker", SERVER_NAME_MAX)
    CODE_VALIDATOR(cleaned)
    return cleaned


def normalise_node_name(hostname: str) -> str:
    """A node name (name@host) as it is stored: at most NODE_NAME_MAX characters."""
    return _fit(hostname, NODE_NAME_MAX)


class Priority(models.IntegerChoices):
    # Integers so the scheduler can ORDER BY them; import/export use the lower-case names.
    # Defined here because a batch group has a default priority; jobs.models re-exports it.
    LOW = 10, "Low"
    NORMAL = 20, "Normal"
    HIGH = 30, "High"
    CRITICAL = 40, "Critical"
    RESERVED = 50, "Reserved capacity"


class ReservedCapacity(models.IntegerChoices):
    """D365 "Reserved capacity level": share of the group's threads kept for Reserved jobs."""

    NONE = 0, "No"
    LOW = 10, "Low (10%)"
    MEDIUM = 15, "Medium (15%)"
    HIGH = 25, "High (25%)"


class BatchGroupQuerySet(models.QuerySet["BatchGroup"]):
    def default(self) -> BatchGroup:
        # The migration creates it; get_or_create keeps a flushed test database working too.
        group, _ = self.get_or_create(
            code=DEFAULT_GROUP_CODE,
            defaults={"description": "Default batch group (D365's empty group)"},
        )
        return group


class BatchGroup(models.Model):
    code = models.CharField(
        "group",
        max_length=50,
        unique=True,
        validators=[CODE_VALIDATOR],
        help_text="Identifier of the batch group; its Celery queue is batch.<group>.",
    )
    description = models.CharField("description", max_length=200, blank=True)
    max_concurrency = models.SmallIntegerField(
        "max concurrency",
        default=NO_LIMIT,
        validators=[
            MinValueValidator(PAUSED, "Use -1 (pause), 0 (no limit) or 1-512."),
            MaxValueValidator(MAX_THREADS_LIMIT, "Use -1 (pause), 0 (no limit) or 1-512."),
        ],
        help_text=(
            "0 = no limit; N (1-512) = at most N tasks of each job run at once in this group; "
            "-1 = pause the group: running tasks finish, no new ones start."
        ),
    )
    default_priority = models.PositiveSmallIntegerField(
        "scheduling priority",
        choices=Priority.choices,
        default=Priority.NORMAL,
        help_text=(
            "The priority of this group's tasks, unless their job overrides it. When more "
            "tasks are ready than threads are free, higher priorities start first."
        ),
    )
    reserved_capacity = models.PositiveSmallIntegerField(
        "reserved capacity level",
        choices=ReservedCapacity.choices,
        default=ReservedCapacity.NONE,
        help_text=(
            "Share of the threads of this group's servers kept for tasks of priority Reserved "
            "capacity: other tasks start only while more than that share is free."
        ),
    )
    max_tasks = models.PositiveSmallIntegerField(
        "maximum running tasks",
        default=NO_LIMIT,
        validators=[MaxValueValidator(MAX_GROUP_TASKS, "Use 0 (no limit) or 1-10000.")],
        help_text=(
            "0 = no limit; N = at most N tasks of this group run at once, across all jobs and "
            "batch servers (D365 batch concurrency control). Waiting tasks of different jobs "
            "take turns."
        ),
    )
    created = models.DateTimeField(default=now)

    objects = BatchGroupQuerySet.as_manager()

    class Meta:
        ordering = ["code"]
        verbose_name = "batch group"
        constraints = [
            models.CheckConstraint(
                condition=Q(max_concurrency__gte=PAUSED, max_concurrency__lte=MAX_THREADS_LIMIT),
                name="group_max_concurrency_range",
            ),
            models.CheckConstraint(
                condition=Q(max_tasks__lte=MAX_GROUP_TASKS), name="group_max_tasks_range"
            ),
        ]

    def __str__(self) -> str:
        return self.code

    @property
    def queue_name(self) -> str:
        return QUEUE_PREFIX + self.code

    def is_default(self) -> bool:
        return self.code == DEFAULT_GROUP_CODE

    def is_paused(self) -> bool:
        return self.max_concurrency == PAUSED

    def job_limit(self) -> int | None:
        """At most this many tasks of one job run at once; None: no limit (or paused)."""
        return self.max_concurrency if self.max_concurrency > 0 else None

    def task_cap(self) -> int | None:
        """At most this many tasks of the group run at once, all jobs together; None: no cap."""
        return self.max_tasks or None


class BatchServer(models.Model):
    """A logical batch server: the Celery node name before the "@".

    Every replica started as ``celery -A batchadmin worker -n NAME@host`` shares these settings.
    """

    name = models.CharField(
        "server ID",
        max_length=50,
        unique=True,
        validators=[CODE_VALIDATOR],
        help_text="The worker's node name before the @ (celery worker -n NAME@%h).",
    )
    description = models.CharField("description", max_length=200, blank=True)
    enabled = models.BooleanField(
        "is batch server", default=True, help_text="Disabled servers take no new tasks."
    )
    time_zone = models.CharField(
        "time zone",
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="The zone in which the schedule's start and end times are read.",
    )
    groups = models.ManyToManyField(
        BatchGroup,
        related_name="servers",
        blank=True,
        verbose_name="batch groups",
        help_text="The batch groups whose tasks this server runs.",
    )
    created = models.DateTimeField(default=now)

    class Meta:
        ordering = ["name"]
        verbose_name = "batch server"

    def __str__(self) -> str:
        return self.name

    def max_threads_at(self, when: dt.datetime) -> int | None:
        """Maximum batch threads from the schedule row covering ``when``.

        None when the server has no schedule rows (the worker's own concurrency applies);
        0 when rows exist but none covers ``when`` (outside every window: take no new tasks).
        Rows may cross midnight (20:00-07:30).
        """
        rows = list(self.schedule.all())
        if not rows:
            return None
        local = when.astimezone(ZoneInfo(self.time_zone)).time()
        for row in rows:
            if row.covers(local):
                return row.max_threads
        return 0


class BatchServerSchedule(models.Model):
    server = models.ForeignKey(BatchServer, models.CASCADE, related_name="schedule")
    start_time = models.TimeField("start time", help_text="In the server's time zone.")
    end_time = models.TimeField(
        "end time",
        help_text="Earlier than the start crosses midnight; equal to the start means all day.",
    )
    max_threads = models.PositiveSmallIntegerField(
        "maximum batch threads",
        validators=[MinValueValidator(0), MaxValueValidator(MAX_THREADS_LIMIT)],
        default=8,
        help_text="Tasks this server runs at once in this window (0-512; 0 takes none).",
    )

    class Meta:
        ordering = ["server", "start_time"]
        verbose_name = "batch server schedule row"
        constraints = [
            models.CheckConstraint(
                condition=Q(max_threads__lte=MAX_THREADS_LIMIT), name="schedule_max_threads_512"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.server}: {self.start_time:%H:%M}-{self.end_time:%H:%M} x{self.max_threads}"

    def covers(self, t: dt.time) -> bool:
        if self.start_time == self.end_time:
            return True
        if self.start_time < self.end_time:
            return self.start_time <= t < self.end_time
        return t >= self.start_time or t < self.end_time  # crosses midnight


class BatchServerReplicaQuerySet(models.QuerySet["BatchServerReplica"]):
    def online(self, at: dt.datetime | None = None) -> BatchServerReplicaQuerySet:
        at = at or now()
        return self.filter(last_heartbeat__gte=at - BatchServerReplica.offline_after())


class BatchServerReplica(models.Model):
    """One running worker process (node ``name@host``) of a batch server."""

    server = models.ForeignKey(BatchServer, models.CASCADE, related_name="replicas")
    hostname = models.CharField("node name", max_length=200, unique=True)
    pid = models.IntegerField(null=True)
    concurrency = models.PositiveIntegerField("threads", default=0)
    busy = models.PositiveIntegerField("threads busy", default=0)
    queues = models.JSONField(default=list)
    started_at = models.DateTimeField(default=now)
    last_heartbeat = models.DateTimeField(default=now)

    objects = BatchServerReplicaQuerySet.as_manager()

    class Meta:
        ordering = ["hostname"]
        verbose_name = "batch server replica"

    def __str__(self) -> str:
        return self.hostname

    @staticmethod
    def offline_after() -> dt.timedelta:
        return dt.timedelta(seconds=3 * settings.BATCH_HEARTBEAT_SECONDS)

    def is_online(self, at: dt.datetime | None = None) -> bool:
        return self.last_heartbeat >= (at or now()) - self.offline_after()

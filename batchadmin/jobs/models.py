from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Case, F, OuterRef, Q, Subquery, Value, When
from django.db.models.functions import Coalesce
from django.utils.timezone import now

from batchadmin.lib import clock, daterange, deadlines, durations, recurrence
from batchadmin.servers.models import CODE_VALIDATOR, BatchGroup, BatchServer
from batchadmin.servers.models import Priority as Priority  # re-exported: long imported from here

MAX_RETRIES_LIMIT = 5  # D365: "The highest allowed value is 5" (retryable-batch.md)
MISSED_COUNT_LIMIT = 10_000  # a MissedOccurrence row counts at most this many occurrences
TIME_LIMIT_MAX_SECONDS = 7 * 24 * 3600  # a task's time limit: one week at most


class BatchStatus(models.TextChoices):
    """One enum for jobs and tasks, as D365's BatchStatus."""

    WITHHOLD = "withhold", "Withhold"
    WAITING = "waiting", "Waiting"
    READY = "ready", "Ready"
    EXECUTING = "executing", "Executing"
    ERROR = "error", "Error"
    ENDED = "ended", "Ended"
    NOT_RUN = "not_run", "Didn't run"
    # An operator skipped the task (transitions.skip_task): it counts as Ended for the
    # conditions of its dependents and never makes the job fail.
    SKIPPED = "skipped", "Skipped"
    CANCELING = "canceling", "Canceling"
    CANCELED = "canceled", "Canceled"


# A task in one of these still has work ahead of it; a job is over when none of its tasks is.
OPEN_TASK_STATUSES = (
    BatchStatus.WAITING,
    BatchStatus.READY,
    BatchStatus.EXECUTING,
    BatchStatus.CANCELING,
)
# "Running": a job or task whose process may be running now (Canceling ones run until they
# stop). The one definition; BatchTask.objects.running() and the partial indexes use it.
RUNNING_STATUSES = (BatchStatus.EXECUTING, BatchStatus.CANCELING)
# The order of a status in a job's life, for sorting lists by status (not by the alphabet):
# held, waiting, on its way, then how it ended.
LIFECYCLE_ORDER = (
    BatchStatus.WITHHOLD,
    BatchStatus.WAITING,
    BatchStatus.READY,
    BatchStatus.EXECUTING,
    BatchStatus.CANCELING,
    BatchStatus.ERROR,
    BatchStatus.ENDED,
    BatchStatus.SKIPPED,
    BatchStatus.NOT_RUN,
    BatchStatus.CANCELED,
)


class SaveHistory(models.TextChoices):
    """D365 "Save job to history" (the job's LogLevel)."""

    ALWAYS = "always", "Always"
    ERRORS = "errors", "Errors only"
    NEVER = "never", "Never"


class Company(models.Model):
    code = models.CharField(
        "company",
        max_length=10,
        unique=True,
        validators=[RegexValidator(r"^[A-Za-z0-9_-]+$", "Letters, digits, hyphens, underscores.")],
        help_text="Legal entity code, as D365's company accounts (USMF).",
    )
    name = models.CharField("name", max_length=200, blank=True)

    class Meta:
        ordering = ["code"]
        verbose_name = "company"
        verbose_name_plural = "companies"

    def __str__(self) -> str:
        return self.code


def validate_time_zone(name: str) -> None:
    try:
        recurrence.zone(name)
    except recurrence.RuleError as exc:
        raise ValidationError(str(exc)) from None


class ActivePeriod(models.Model):
    """D365 "Active periods for batch jobs": the time of day in which a job may start.

    A job that falls due outside its period waits for the period to open (README, "Recurrence
    and active periods").
    """

    code = models.CharField(
        "active period",
        max_length=50,
        unique=True,
        validators=[CODE_VALIDATOR],
        help_text="Identifier, e.g. Night.",
    )
    name = models.CharField("name", max_length=200, blank=True)
    start_time = models.TimeField("from time", help_text="Jobs may start from this time on.")
    end_time = models.TimeField(
        "to time",
        help_text="Jobs may start until this time. Before the from time: the period crosses "
        "midnight (18:00 to 08:00). Equal to it: all day.",
    )
    time_zone = models.CharField(
        "time zone",
        max_length=64,
        default="UTC",
        validators=[validate_time_zone],
        help_text="The times are read in this zone and follow its daylight saving time.",
    )
    created = models.DateTimeField(default=now)

    class Meta:
        ordering = ["code"]
        verbose_name = "active period"

    def __str__(self) -> str:
        return f"{self.code} ({self.start_time:%H:%M}-{self.end_time:%H:%M} {self.time_zone})"

    def window(self) -> recurrence.Window:
        return recurrence.Window(self.start_time, self.end_time, self.time_zone)

    def is_open(self, at: dt.datetime) -> bool:
        return self.window().is_open(at)

    def next_opening(self, at: dt.datetime) -> dt.datetime:
        return self.window().next_opening(at)

    def describe(self) -> str:
        """The window in words: "18:00 to 08:00 (next day) Europe/Oslo", "All day UTC"."""
        zone = clock.zone_label(self.time_zone)
        if self.start_time == self.end_time:
            return f"All day {zone}"
        tail = " (next day)" if self.end_time < self.start_time else ""
        start, end = (clock.format_when(t, "time") for t in (self.start_time, self.end_time))
        return f"{start} to {end}{tail} {zone}"


CALENDAR_DATES_LIMIT = 5000  # dates in one calendar: decades of holidays, not every day


class Calendar(models.Model):
    """Beyond D365: a named set of dates (holidays, month-end freezes) that a recurrence skips
    or moves to the next working day (docs/calendars.md)."""

    code = models.CharField(
        "calendar",
        max_length=50,
        unique=True,
        validators=[CODE_VALIDATOR],
        help_text="Identifier, e.g. NO-HOLIDAYS.",
    )
    description = models.CharField("description", max_length=200, blank=True)
    created = models.DateTimeField(default=now)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["code"]
        verbose_name = "calendar"

    def __str__(self) -> str:
        return self.code

    def date_set(self) -> frozenset[dt.date]:
        return frozenset(self.dates.values_list("date", flat=True))


class CalendarDate(models.Model):
    calendar = models.ForeignKey(Calendar, models.CASCADE, related_name="dates")
    date = models.DateField("date", validators=[daterange.validate])
    description = models.CharField(
        "description", max_length=200, blank=True, help_text="What the date is, e.g. Christmas."
    )

    class Meta:
        ordering = ["calendar", "date"]
        verbose_name = "calendar date"
        constraints = [
            models.UniqueConstraint(fields=["calendar", "date"], name="calendar_date_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.calendar_id}: {self.date:%Y-%m-%d}"


HAS_DEADLINE = Q(deadline_time__isnull=False) | Q(deadline_minutes__isnull=False)
# A job with no time schedule of its own: it runs only after the job it follows.
TRIGGER_ONLY = Q(after_job__isnull=False, recurrence__isnull=True)


class AfterStatus(models.TextChoices):
    """The final status of a run of the job a triggered job follows (as a task condition's)."""

    ENDED = "ended", "Ended"
    ERROR = "error", "Error"
    ENDED_OR_ERROR = "ended_or_error", "Ended or error"

    def matches(self, final: str) -> bool:
        return (
            final
            in {
                AfterStatus.ENDED: (BatchStatus.ENDED,),
                AfterStatus.ERROR: (BatchStatus.ERROR,),
                AfterStatus.ENDED_OR_ERROR: (BatchStatus.ENDED, BatchStatus.ERROR),
            }[self]
        )


class BatchJobQuerySet(models.QuerySet["BatchJob"]):
    def due(self, at: dt.datetime) -> BatchJobQuerySet:
        # A paused recurrence starts nothing (a LEFT JOIN on the one-to-one, per due row). A
        # job triggered by another one and without a recurrence has no time schedule: while
        # Waiting it waits for that job's runs, not for its scheduled start (TRIGGER_ONLY).
        return self.filter(
            Q(recurrence__isnull=True) | Q(recurrence__paused_at__isnull=True),
            status=BatchStatus.WAITING,
            scheduled_start__lte=at,
        ).exclude(TRIGGER_ONLY)

    def running(self) -> BatchJobQuerySet:
        return self.filter(status__in=RUNNING_STATUSES)

    def with_last_run(self) -> Any:  # Any: the annotations are not in the model's type
        """Annotate the newest run's ``last_run_status``, ``last_run_started`` and
        ``last_run_ended``: a recurring job back in Waiting still shows how its run ended.
        Each is an index lookup on jobrun_job_idx per job read."""
        last = BatchJobRun.objects.filter(job=OuterRef("pk")).order_by("-started_at", "-pk")
        return self.annotate(
            last_run_status=Subquery(last.values("status")[:1]),
            last_run_started=Subquery(last.values("started_at")[:1]),
            last_run_ended=Subquery(last.values("ended_at")[:1]),
        )

    def with_status_rank(self) -> Any:
        """Annotate ``status_rank``: the status's place in LIFECYCLE_ORDER, to sort by."""
        return self.annotate(
            status_rank=Case(
                *(When(status=s, then=Value(i)) for i, s in enumerate(LIFECYCLE_ORDER)),
                default=Value(len(LIFECYCLE_ORDER)),
                output_field=models.IntegerField(),
            )
        )

    def with_effective_priority(self) -> Any:  # Any: see BatchTaskQuerySet's
        """Annotate ``effective_priority``: the job's own when it overrides its groups', else
        the highest default priority of its tasks' groups (Normal for a job without tasks).

        The due-job start orders by it, so it agrees with the priorities the job's tasks will
        run with (see BatchTaskQuerySet.with_effective_priority).
        """
        highest_group = (
            BatchGroup.objects.filter(tasks__job=OuterRef("pk"))
            .order_by("-default_priority")
            .values("default_priority")[:1]
        )
        return self.annotate(
            effective_priority=Case(
                When(priority_overridden=True, then=F("priority")),
                default=Coalesce(Subquery(highest_group), Value(int(Priority.NORMAL))),
                output_field=models.IntegerField(),
            )
        )


class BatchJob(models.Model):
    Status = BatchStatus
    Priority = Priority
    SaveHistory = SaveHistory

    description = models.CharField("job description", max_length=200)
    status = models.CharField(
        "status",
        max_length=10,
        choices=BatchStatus.choices,
        default=BatchStatus.WITHHOLD,
    )
    priority = models.PositiveSmallIntegerField(
        "scheduling priority",
        choices=Priority.choices,
        default=Priority.NORMAL,
        help_text="Higher priorities are started first when more is due than can run.",
    )
    # D365 "Scheduling priority is overridden": off = each task takes its batch group's
    # scheduling priority; on = every task of the job takes ``priority``.
    priority_overridden = models.BooleanField(
        "scheduling priority is overridden",
        default=False,
        help_text="Off: each task takes its batch group's scheduling priority.",
    )
    scheduled_start = models.DateTimeField(
        "scheduled start date/time",
        default=now,
        validators=[daterange.validate],
        help_text="The job starts when this time has passed and its status is Waiting.",
    )
    started_at = models.DateTimeField("actual start date/time", null=True, blank=True)
    ended_at = models.DateTimeField("end date/time", null=True, blank=True)
    save_history = models.CharField(
        "save job to history",
        max_length=6,
        choices=SaveHistory.choices,
        default=SaveHistory.ALWAYS,
        help_text="Always keeps every run; Errors only keeps runs that end in Error; Never keeps "
        "none. Jobs with many tasks run lighter with Errors only.",
    )
    critical = models.BooleanField(
        "critical job",
        default=False,
        help_text="When it ends in Error, every batch manager is alerted (popup and e-mail).",
    )
    company = models.ForeignKey(
        Company,
        models.PROTECT,
        null=True,
        blank=True,
        verbose_name="company accounts",
        help_text="Default company for new tasks of this job.",
    )
    active_period = models.ForeignKey(
        ActivePeriod,
        models.PROTECT,
        null=True,
        blank=True,
        related_name="jobs",
        verbose_name="active period",
        help_text="The job starts only inside this period; a start that falls outside waits "
        "for the period to open.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="created by",
    )
    run_as = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="run by",
        help_text="The user whose identity the tasks run with; empty means the creator.",
    )
    canceled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="canceled by",
    )
    current_run = models.ForeignKey(
        "BatchJobRun", models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Beyond D365: a deadline, a time of day or a duration after the scheduled start (one of
    # the two). The tick's check raises "at risk" and "missed" alerts (alerts/deadlines.py).
    deadline_time = models.TimeField(
        "must have ended by",
        null=True,
        blank=True,
        help_text="A time of day in the job's zone (its recurrence's, else the server's): each "
        "run must have ended by the first such time after its scheduled start.",
    )
    deadline_minutes = models.PositiveIntegerField(
        "must have ended within (minutes)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(deadlines.MAX_WITHIN_MINUTES)],
        help_text="Each run must have ended this many minutes after its scheduled start.",
    )
    # The run in progress was started by an operator (Run now, Rerun, a skip that resumed the
    # job; transitions._start_manual_run): it neither waits for nor uses up an occurrence.
    # When it ends, a recurring job goes back to ``return_status`` (Waiting or Withhold) with
    # ``return_start``, the schedule it interrupted; without one it keeps the run's status.
    manual_run = models.BooleanField(default=False)
    # Beyond D365: a job that follows another one runs each time a run of that job ends with
    # ``after_status`` (engine: transitions.queue_followers, start_queued_run).
    after_job = models.ForeignKey(
        "self",
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="followers",
        verbose_name="triggered by job",
        help_text="This job runs each time a run of that job ends with the status below, "
        "besides its recurrence if it has one.",
    )
    after_status = models.CharField(
        "when that job ends",
        max_length=14,
        choices=AfterStatus.choices,
        default=AfterStatus.ENDED,
        help_text="Which final status of that job's run starts this job.",
    )
    return_status = models.CharField(max_length=10, choices=BatchStatus.choices, blank=True)
    return_start = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(default=now)
    modified = models.DateTimeField(auto_now=True)

    objects = BatchJobQuerySet.as_manager()

    class Meta:
        verbose_name = "batch job"
        indexes = [
            # BatchJob.objects.due(): the tick's "which waiting jobs have reached their start".
            models.Index(
                fields=["scheduled_start"],
                name="job_due_idx",
                condition=Q(status="waiting"),
            ),
            # The tick's settle pass over running jobs.
            models.Index(
                fields=["status"],
                name="job_running_idx",
                condition=Q(status__in=list(RUNNING_STATUSES)),
            ),  # The job list's default sort and its "scheduled between" filter, and the
            # workspace's counts by status, with 100,000 jobs (bench/pages.py).
            models.Index(fields=["scheduled_start"], name="job_scheduled_idx"),
            models.Index(fields=["status"], name="job_status_idx"),
            # alerts.deadlines.watched(): the waiting and running jobs that have a deadline,
            # for the tick's check and the workspace's "late or at risk" tile.
            models.Index(
                fields=["scheduled_start"],
                name="job_deadline_idx",
                condition=HAS_DEADLINE & Q(status__in=["waiting", *RUNNING_STATUSES]),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(deadline_time=None) | Q(deadline_minutes=None),
                name="job_one_deadline",
            ),
            models.CheckConstraint(condition=~Q(after_job=F("pk")), name="job_not_after_itself"),
            models.CheckConstraint(
                condition=Q(deadline_minutes=None)
                | Q(deadline_minutes__gte=1, deadline_minutes__lte=deadlines.MAX_WITHIN_MINUTES),
                name="job_deadline_minutes_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pk}: {self.description}"

    def effective_run_as_id(self) -> int | None:
        return self.run_as_id or self.created_by_id

    def is_running(self) -> bool:
        return self.status in RUNNING_STATUSES

    def is_live(self, at: dt.datetime | None = None) -> bool:
        """Whether the job's status may change by itself soon (pages poll such jobs)."""
        if self.is_running():
            return True
        soon = (at or now()) + dt.timedelta(minutes=5)
        return self.status == BatchStatus.WAITING and self.scheduled_start <= soon

    @property
    def next_run(self) -> dt.datetime | None:
        if self.status != BatchStatus.WAITING or self.is_trigger_only():
            return None
        return self.scheduled_start

    def is_trigger_only(self) -> bool:
        """Triggered by another job and without a recurrence: no time schedule of its own."""
        return self.after_job_id is not None and self.get_recurrence() is None

    def next_start(self, at: dt.datetime | None = None) -> dt.datetime | None:
        """When the next run may start: outside its active period it waits for the period to
        open, as transitions.start_job does."""
        if self.next_run is None or self.active_period is None:
            return self.next_run
        due = max(self.next_run, at or now())  # a start that has passed is due now
        if self.active_period.is_open(due):
            return self.next_run
        return self.active_period.next_opening(due)

    def next_starts(self, n: int, at: dt.datetime | None = None) -> list[dt.datetime]:
        """The next ``n`` times the job starts, as the engine will start it (``batch next``).

        1. A Waiting job next starts at its scheduled start (when its active period opens, if
           that is closed then); a running one at the first occurrence after now. A job in any
           other status (Withhold, or over) starts nothing by itself.
        2. Then its recurrence's occurrences, as far as End after and End by allow, each held
           to its active period's opening; occurrences folded into one opening start once.
        Times are in the recurrence's zone, or the server's for a job without one.
        """
        at = at or now()
        recurring = self.get_recurrence()
        tz = recurring.rule().tz if recurring is not None else recurrence.zone(settings.TIME_ZONE)
        starts: list[dt.datetime] = []
        runs_done = recurring.runs if recurring is not None else 0
        if self.status == BatchStatus.WAITING:
            first = self.next_start(at)
            if first is None:
                return []
            starts.append(first)
            after = self.scheduled_start
            runs_done += 1  # the scheduled run counts for End after
        elif self.is_running() and recurring is not None:
            after = max(at, self.scheduled_start)
        else:
            return []
        if recurring is not None:
            rule = recurring.rule()
            left = rule.runs_left(runs_done)
            for t in rule.occurrences(after):
                if len(starts) >= n or (left is not None and left <= 0):
                    break
                if self.active_period is not None and not self.active_period.is_open(t):
                    t = self.active_period.next_opening(t)
                if starts and t <= starts[-1]:
                    continue  # folded into the start before it
                starts.append(t)
                if left is not None:
                    left -= 1
        return [t.astimezone(tz) for t in starts[:n]]

    def deadline(self) -> deadlines.Deadline | None:
        if self.deadline_time is not None:
            return deadlines.Deadline(at=self.deadline_time)
        if self.deadline_minutes is not None:
            return deadlines.Deadline(within=dt.timedelta(minutes=self.deadline_minutes))
        return None

    def zone(self) -> str:
        """The job's time zone: its recurrence's, else the server's (deadlines are read in it)."""
        recurring = self.get_recurrence()
        return recurring.time_zone if recurring is not None else settings.TIME_ZONE

    def deadline_due(self, scheduled: dt.datetime) -> dt.datetime | None:
        """When the run scheduled at ``scheduled`` must have ended; None without a deadline."""
        deadline = self.deadline()
        if deadline is None:
            return None
        try:
            tz = recurrence.zone(self.zone())
        except recurrence.RuleError:  # a row edited by hand
            tz = recurrence.zone("UTC")
        return deadline.due(scheduled, tz)

    def get_recurrence(self) -> BatchRecurrence | None:
        try:
            return self.recurrence
        except BatchRecurrence.DoesNotExist:
            return None

    @property
    def pause_note(self) -> str:
        """Who paused the recurrence, why and until when ("" when it is not paused)."""
        recurring = self.get_recurrence()
        return recurring.pause_note() if recurring else ""

    @property
    def recurrence_words(self) -> str:
        """The recurrence in words for the job list ("Every 2 weeks on Mon ..."), or ""."""
        recurrence = self.get_recurrence()
        return recurrence.describe() if recurrence else ""


class BatchRecurrence(models.Model):
    """D365 "Define recurrence": when a job runs again (docs/architecture.md, section 5).

    The job's scheduled start is its next run; after every run (Ended or Error) the engine
    puts the job back to Waiting with the next occurrence, until the range is over.
    """

    class Unit(models.TextChoices):
        # The values are batchadmin.lib.recurrence's units.
        MINUTES = "minutes", "Minutes"
        HOURS = "hours", "Hours"
        DAYS = "days", "Days"
        WEEKS = "weeks", "Weeks"
        MONTHS = "months", "Months"
        YEARS = "years", "Years"
        CRON = "cron", "Cron expression"

    class Weekday(models.TextChoices):
        MON = "mon", "Monday"
        TUE = "tue", "Tuesday"
        WED = "wed", "Wednesday"
        THU = "thu", "Thursday"
        FRI = "fri", "Friday"
        SAT = "sat", "Saturday"
        SUN = "sun", "Sunday"

    class Nth(models.IntegerChoices):
        FIRST = 1, "First"
        SECOND = 2, "Second"
        THIRD = 3, "Third"
        FOURTH = 4, "Fourth"
        LAST = -1, "Last"

    class Month(models.IntegerChoices):
        JAN = 1, "January"
        FEB = 2, "February"
        MAR = 3, "March"
        APR = 4, "April"
        MAY = 5, "May"
        JUN = 6, "June"
        JUL = 7, "July"
        AUG = 8, "August"
        SEP = 9, "September"
        OCT = 10, "October"
        NOV = 11, "November"
        DEC = 12, "December"

    class Missed(models.TextChoices):
        RUN_ONCE = "run_once", "Run once now"
        SKIP = "skip", "Skip to the next occurrence"

    class Overlap(models.TextChoices):
        # Beyond D365 (issue 14, item 4); import/export use these values.
        SKIP = "skip", "Skip it (recorded as missed)"
        BUFFER_ONE = "buffer_one", "Run it as soon as the current run ends"
        CANCEL_RUNNING = "cancel_running", "Cancel the running one and start"

    class OnCalendarDate(models.TextChoices):
        # The values are batchadmin.lib.recurrence's SKIP and NEXT_DAY.
        SKIP = "skip", "Skip it"
        NEXT_DAY = "next_day", "Run on the next working day"

    job = models.OneToOneField(BatchJob, models.CASCADE, related_name="recurrence")
    start_date = models.DateField("start date", validators=[daterange.validate])
    start_time = models.TimeField("start time")
    time_zone = models.CharField(
        "time zone",
        max_length=64,
        validators=[validate_time_zone],
        help_text="The start, the end date and the pattern are read in this zone.",
    )
    end_after = models.PositiveIntegerField(
        "end after",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="Stop after this many runs. Empty (and no end date): no end.",
    )
    end_by = models.DateField(
        "end by",
        null=True,
        blank=True,
        validators=[daterange.validate],
        help_text="The last date on which the job may run.",
    )
    unit = models.CharField(
        "recurring pattern",
        max_length=7,
        choices=Unit.choices,
        default=Unit.DAYS,
        help_text="Minutes and hours count elapsed time; the others keep the local time of day.",
    )
    every = models.PositiveIntegerField(
        "count",
        default=1,
        validators=[MinValueValidator(1)],
        help_text="Repeat after this many minutes, hours, days, weeks, months or years.",
    )
    weekdays = models.JSONField(
        "on weekdays",
        default=list,
        blank=True,
        help_text="Weeks: the days of the week it runs on (mon, tue ...); empty: the start's.",
    )
    day = models.PositiveSmallIntegerField(
        "day",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(31)],
        help_text="Months and years: the day of the month. Months without it are skipped.",
    )
    nth = models.SmallIntegerField(
        "which",
        null=True,
        blank=True,
        choices=Nth.choices,
        help_text="Months and years: the first, second, third, fourth or last weekday.",
    )
    weekday = models.CharField("weekday", max_length=3, choices=Weekday.choices, blank=True)
    month = models.PositiveSmallIntegerField(
        "month",
        null=True,
        blank=True,
        choices=Month.choices,
        help_text="Years: the month; empty: the start's.",
    )
    cron = models.CharField(
        "cron expression",
        max_length=100,
        blank=True,
        help_text="Five fields, minute hour day month weekday, read in the time zone.",
    )
    missed = models.CharField(
        "missed runs",
        max_length=8,
        choices=Missed.choices,
        default=Missed.RUN_ONCE,
        help_text="When the job could not start on time (servers down): run it once as soon "
        "as possible, or skip to the next occurrence. Missed runs are never replayed one by one.",
    )
    calendar = models.ForeignKey(
        Calendar,
        models.PROTECT,
        null=True,
        blank=True,
        related_name="recurrences",
        verbose_name="calendar",
        help_text="Dates on which the job does not run as the pattern says (holidays).",
    )
    on_calendar_date = models.CharField(
        "on a calendar date",
        max_length=8,
        choices=OnCalendarDate.choices,
        default=OnCalendarDate.SKIP,
        help_text="Skip the run, or run it on the next working day (the next date not in the "
        "calendar) at the same time.",
    )
    overlap = models.CharField(
        "when the next run comes while one runs",
        max_length=14,
        choices=Overlap.choices,
        default=Overlap.SKIP,
        help_text="An occurrence that comes while the job still runs: skip it, run it once as "
        "soon as the current run ends (one, however many passed), or cancel the running one "
        "and start.",
    )
    # Overlap "cancel_running": the occurrence after the running run's, set when a run starts;
    # the tick cancels the run when it comes (tick.handle_overlaps). And the run was canceled
    # for it: its settling starts the next run at once.
    overlap_at = models.DateTimeField(null=True, blank=True)
    overlap_canceled = models.BooleanField(default=False)
    # Paused (issue 14, item 6): the tick starts no run while paused_at is set. Who, why and
    # until when are the operator's note; the tick resumes it at paused_until.
    paused_at = models.DateTimeField("paused at", null=True, blank=True)
    paused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="paused by",
    )
    pause_reason = models.CharField(
        "why paused", max_length=500, blank=True, help_text="Why the recurrence is paused."
    )
    paused_until = models.DateTimeField(
        "paused until",
        null=True,
        blank=True,
        help_text="Resumed by itself at this time; empty: until someone resumes it.",
    )
    # Runs started under this recurrence; End after counts them. Saving the dialog restarts it.
    runs = models.PositiveIntegerField(default=0)
    _calendar_dates: tuple[int, frozenset[dt.date]] | None = None  # see calendar_dates()
    created = models.DateTimeField(default=now)
    modified = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "recurrence"
        constraints = [
            models.CheckConstraint(condition=Q(every__gte=1), name="recurrence_every_1_or_more"),
            models.CheckConstraint(
                condition=Q(end_after=None) | Q(end_by=None), name="recurrence_one_end"
            ),
            models.CheckConstraint(
                condition=Q(end_after=None) | Q(end_after__gte=1),
                name="recurrence_end_after_1_or_more",
            ),
            models.CheckConstraint(
                condition=Q(day=None) | Q(day__gte=1, day__lte=31), name="recurrence_day_1_31"
            ),
            models.CheckConstraint(
                condition=~Q(unit="cron") | ~Q(cron=""), name="recurrence_cron_expression"
            ),
            models.CheckConstraint(
                condition=Q(paused_until=None) | Q(paused_at__isnull=False),
                name="recurrence_paused_until_only_when_paused",
            ),
        ]
        indexes = [
            # The tick's overlap check of running jobs (tick.handle_overlaps).
            models.Index(
                fields=["overlap_at"],
                name="recurrence_overlap_at_idx",
                condition=Q(overlap_at__isnull=False),
            ),
            # The tick's automatic resume (tick.handle_paused_until).
            models.Index(
                fields=["paused_until"],
                name="recurrence_paused_until_idx",
                condition=Q(paused_until__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.describe()

    def is_paused(self) -> bool:
        return self.paused_at is not None

    def pause_note(self) -> str:
        """ "Paused by alice on 2026-12-03 10:40 Europe/Oslo: month-end freeze; until 2026-12-05
        06:00 Europe/Oslo", or "" when not paused."""
        if self.paused_at is None:
            return ""
        zone = recurrence.zone(self.time_zone)
        who = f" by {self.paused_by.get_username()}" if self.paused_by_id and self.paused_by else ""
        note = f"Paused{who} on {clock.format_when(self.paused_at.astimezone(zone), 'tz')}"
        if self.pause_reason:
            note += f": {self.pause_reason}"
        if self.paused_until is not None:
            note += f"; until {clock.format_when(self.paused_until.astimezone(zone), 'tz')}"
        return note

    def aware(self, when: dt.datetime) -> dt.datetime:
        """``when`` as given when it has an offset, else read as wall-clock time in the
        recurrence's zone (a time in a DST gap: the first instant after it)."""
        if when.tzinfo is not None:
            return when
        return recurrence.localize(when, recurrence.zone(self.time_zone))

    def start(self) -> dt.datetime:
        """The local (naive) start date and time, in ``time_zone``."""
        return dt.datetime.combine(self.start_date, self.start_time)

    def rule(self) -> recurrence.Rule:
        """The rule to compute with; RuleError if the row holds one the dialog would refuse."""
        for label, value in (("start date", self.start_date), ("end date", self.end_by)):
            # Stored before the bounds, or by hand: no occurrence can be computed from it.
            if value is not None and not daterange.in_range(value):
                raise recurrence.RuleError(
                    f"The {label} {value:%Y-%m-%d} is out of range: dates go "
                    f"{daterange.RANGE_TEXT}."
                )
        return recurrence.Rule(
            start=self.start(),
            time_zone=self.time_zone,
            unit=self.unit,
            every=self.every,
            weekdays=tuple(recurrence.weekday_number(d) for d in self.weekdays),
            day=self.day,
            nth=self.nth,
            weekday=recurrence.weekday_number(self.weekday) if self.weekday else None,
            month=self.month,
            cron=self.cron,
            end_after=self.end_after,
            end_by=self.end_by,
            calendar=self.calendar_dates(),
            on_calendar_date=self.on_calendar_date,
            calendar_name=self.calendar.code if self.calendar_id and self.calendar else "",
        )

    def calendar_dates(self) -> frozenset[dt.date]:
        """The dates of the calendar, read once per instance (the engine asks for the rule a
        few times while it settles one run)."""
        if self.calendar_id is None:
            return frozenset()
        cached = self._calendar_dates
        if cached is None or cached[0] != self.calendar_id:
            dates = CalendarDate.objects.filter(calendar_id=self.calendar_id)
            cached = (self.calendar_id, frozenset(dates.values_list("date", flat=True)))
            self._calendar_dates = cached
        return cached[1]

    def next_occurrence(self, after: dt.datetime, *, inclusive: bool = False) -> dt.datetime | None:
        """The next run after ``after``; None once End after or End by is reached."""
        return self.rule().next_after(after, runs_done=self.runs, inclusive=inclusive)

    def next_runs(self, after: dt.datetime, n: int = 5) -> list[dt.datetime]:
        return self.rule().next_runs(after, n, runs_done=self.runs)

    def runs_left(self) -> int | None:
        return self.rule().runs_left(self.runs)

    def describe(self) -> str:
        """In words, for the job list: "Every 2 weeks on Mon and Thu at 22:00 Europe/Oslo, 7 runs left"."""
        try:
            recurrence.zone(self.time_zone)
            return self.rule().describe(runs_done=self.runs)
        except recurrence.RuleError as exc:
            return f"Invalid recurrence: {exc}"  # a row edited by hand; the engine skips it too


class MissedOccurrence(models.Model):
    """Occurrences of a recurring job that did not run, and why; one row per stretch.

    Not a BatchJobRun: history rows stay one per execution, and missed occurrences are never
    replayed (docs/architecture.md, section 5), so they are only recorded.
    """

    class Reason(models.TextChoices):
        RUNNING = "running", "The job was still running"
        LATE = "late", "Not started in time; skipped"
        PAUSED = "paused", "The recurrence was paused"

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="missed_occurrences")
    scheduled_start = models.DateTimeField("scheduled start date/time")
    last_scheduled_start = models.DateTimeField("last missed start date/time")
    occurrences = models.PositiveIntegerField(
        "occurrences", default=1, help_text=f"Counted up to {MISSED_COUNT_LIMIT:,}."
    )
    reason = models.CharField("reason", max_length=7, choices=Reason.choices)
    recorded_at = models.DateTimeField(default=now)

    class Meta:
        verbose_name = "missed occurrence"
        ordering = ["-scheduled_start"]
        indexes = [models.Index(fields=["job", "-scheduled_start"], name="missed_job_idx")]

    def __str__(self) -> str:
        return f"job {self.job_id}: {self.occurrences} missed from {self.scheduled_start:%Y-%m-%d %H:%M}"


class BatchTaskQuerySet(models.QuerySet["BatchTask"]):
    def running(self) -> BatchTaskQuerySet:
        """Executing or Canceling (RUNNING_STATUSES)."""
        return self.filter(status__in=RUNNING_STATUSES)

    def taking_slot(self) -> BatchTaskQuerySet:
        """Tasks that take a thread or a concurrency slot: running, or Ready and sent to the
        broker (a message is on its way to a thread). Held tasks (Ready, no message) do not."""
        return self.filter(TAKES_SLOT)

    # Any: django-stubs cannot follow an annotation made in a QuerySet method, and would reject
    # the filters and orderings on ``effective_priority`` that callers chain.
    def with_effective_priority(self, *, select: bool = True) -> Any:
        """Annotate ``effective_priority``: the task's job's scheduling priority when the job
        overrides its groups', else the task's group's default priority (D365 "Scheduling
        priority is overridden"). ``select=False`` only aliases it, for filters and ordering
        that must not add a column (and a GROUP BY entry).

        The same rule as priority.effective() in Python and sql.EFFECTIVE_PRIORITY in the
        claim's hand-written SQL; a test checks all three agree.
        """
        expr = Case(
            When(job__priority_overridden=True, then=F("job__priority")),
            default=F("group__default_priority"),
            output_field=models.IntegerField(),
        )
        if select:
            return self.annotate(effective_priority=expr)
        return self.alias(effective_priority=expr)


# Tasks that take a slot (see BatchTaskQuerySet.taking_slot).
TAKES_SLOT = Q(status__in=RUNNING_STATUSES) | Q(
    status=BatchStatus.READY, dispatched_at__isnull=False
)


class BatchTask(models.Model):
    Status = BatchStatus

    class ConditionType(models.TextChoices):
        ALL = "all", "All"
        ANY = "any", "Any"

    # No index of its own: task_job_status_idx (job, status) and the unique (job, key) start
    # with it and serve every lookup by job; a third copy only cost each attempt's two
    # (non-HOT) task updates one more index entry each.
    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="tasks", db_index=False)
    key = models.CharField(
        "task ID",
        max_length=50,
        help_text="Identifies the task inside its job; conditions and import/export use it.",
    )
    description = models.CharField("task description", max_length=200)
    # Indexed by task_company_idx, partial: most tasks run in their job's company (NULL here),
    # and their attempts' updates then skip it.
    company = models.ForeignKey(
        Company,
        models.PROTECT,
        null=True,
        blank=True,
        verbose_name="company accounts",
        db_index=False,
    )
    process = models.CharField(
        "class name",
        max_length=100,
        help_text="The registered batch process this task runs.",
    )
    parameters = models.JSONField("parameters", default=dict, blank=True)
    group = models.ForeignKey(
        BatchGroup,
        models.PROTECT,
        related_name="tasks",
        verbose_name="batch group",
        help_text="Only servers that serve this group run the task.",
    )
    ignore_failure = models.BooleanField(
        "ignore task failure",
        default=False,
        help_text="If set, failure of this task won't cause the job to fail.",
    )
    max_retries = models.PositiveSmallIntegerField(
        "maximum retries",
        default=0,
        validators=[MaxValueValidator(MAX_RETRIES_LIMIT)],
        help_text="How often a failed attempt is retried (0-5).",
    )
    time_limit = models.PositiveIntegerField(
        "time limit (seconds)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(TIME_LIMIT_MAX_SECONDS)],
        help_text="An attempt running longer is asked to stop, then aborted, and ends in Error. "
        "Empty: the server default.",
    )
    condition_type = models.CharField(
        "condition type",
        max_length=3,
        choices=ConditionType.choices,
        default=ConditionType.ALL,
        help_text="All: every condition must be met. Any: one is enough.",
    )
    status = models.CharField(
        "status",
        max_length=10,
        choices=BatchStatus.choices,
        default=BatchStatus.WAITING,
    )
    retries = models.PositiveSmallIntegerField("actual retries", default=0)
    # Bookkeeping of the current (or last) attempt.
    attempt = models.PositiveSmallIntegerField(default=0)
    # No index: each attempt sets it (the claim) and updates the task again (the finish),
    # neither HOT, so an index cost two entries an attempt. Nothing frequent looks tasks up by
    # server: the servers pages ask for running tasks, which the partial indexes on running
    # statuses find; only deleting a server (SET_NULL) reads every task for it.
    server = models.ForeignKey(
        BatchServer,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="server",
        db_index=False,
    )
    hostname = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField("start date/time", null=True, blank=True)
    ended_at = models.DateTimeField("end date/time", null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)  # not before (retry backoff)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    progress = models.PositiveSmallIntegerField("progress %", null=True, blank=True)
    position = models.PositiveIntegerField(default=0)
    # When the tick must next act on the running attempt (tick.handle_overdue_tasks): at
    # the claim, start + time limit; once asked to stop (time limit or cancel), the end of the
    # grace period, after which the attempt is aborted.
    deadline_at = models.DateTimeField(null=True, blank=True)
    # The running attempt passed its time limit and was asked to stop; reset by the claim.
    timed_out = models.BooleanField(default=False)
    # Run now with parameter overrides: what this run's attempts use instead of
    # ``parameters`` (the claim reads COALESCE(run_parameters, parameters)); cleared when the
    # run ends, so the stored parameters never change.
    run_parameters = models.JSONField(null=True, blank=True)
    # Who skipped the task and why ("Skipped by alice: <reason>"), while it is Skipped.
    skip_note = models.CharField(max_length=300, blank=True)

    objects = BatchTaskQuerySet.as_manager()

    class Meta:
        verbose_name = "batch task"
        ordering = ["job", "position", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["job", "key"], name="task_key_unique_in_job"),
            models.CheckConstraint(
                condition=Q(max_retries__lte=MAX_RETRIES_LIMIT),
                name="task_max_retries_0_5",
            ),
            models.CheckConstraint(
                condition=Q(time_limit=None)
                | Q(time_limit__gte=1, time_limit__lte=TIME_LIMIT_MAX_SECONDS),
                name="task_time_limit_1s_7d",
            ),
        ]
        indexes = [
            # "Is anything of this job still open?" on every task finish.
            models.Index(fields=["job", "status"], name="task_job_status_idx"),
            # The tick's re-dispatch of ready tasks whose message may be lost.
            models.Index(fields=["ready_at"], name="task_ready_idx", condition=Q(status="ready")),
            # The tick's lease expiry.
            models.Index(
                fields=["lease_expires_at"],
                name="task_lease_idx",
                condition=Q(status__in=list(RUNNING_STATUSES)),
            ),
            # The tick's time limits and aborts after the cancel grace period.
            models.Index(
                fields=["deadline_at"],
                name="task_deadline_idx",
                condition=Q(status__in=list(RUNNING_STATUSES)),
            ),
            # A group's maximum running tasks: the claim's sql.GROUP_RUNNING count.
            models.Index(
                fields=["group"],
                name="task_group_running_idx",
                condition=Q(status__in=list(RUNNING_STATUSES)),
            ),
            # The Batch job history's company filter (tasks of a company of their own) and the
            # PROTECT check when a company is deleted; without an index both read every task.
            models.Index(
                fields=["company"], name="task_company_idx", condition=Q(company__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.key}: {self.description}"

    def is_open(self) -> bool:
        return self.status in OPEN_TASK_STATUSES

    def time_limit_text(self) -> str:
        """'1 h 30 min': the task's own time limit, or the server default."""
        return durations.whole(self.time_limit or settings.BATCH_TASK_TIME_LIMIT_SECONDS)


class BatchTaskCondition(models.Model):
    """D365 "Has conditions": ``task`` runs when ``depends_on`` reaches ``expected_status``."""

    class ExpectedStatus(models.TextChoices):
        ENDED = "ended", "Ended"
        ERROR = "error", "Error"
        ENDED_OR_ERROR = "ended_or_error", "Ended or error"

    task = models.ForeignKey(BatchTask, models.CASCADE, related_name="conditions")
    depends_on = models.ForeignKey(
        BatchTask, models.CASCADE, related_name="dependents", verbose_name="task ID"
    )
    expected_status = models.CharField(
        "expected status",
        max_length=14,
        choices=ExpectedStatus.choices,
        default=ExpectedStatus.ENDED,
        help_text="Status the parent task must reach for this task to start.",
    )

    class Meta:
        verbose_name = "task condition"
        constraints = [
            models.CheckConstraint(condition=~Q(task=F("depends_on")), name="condition_not_self"),
            models.UniqueConstraint(fields=["task", "depends_on"], name="condition_pair_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.task_id} after {self.depends_on_id} {self.expected_status}"


class BatchJobRun(models.Model):
    """One execution of a job: D365's batch job history row."""

    Status = BatchStatus

    class Trigger(models.TextChoices):
        SCHEDULED = "scheduled", "Scheduled"
        RUN_NOW = "run_now", "Run now"
        RERUN_ALL = "rerun_all", "Rerun of the whole job"
        RERUN_FAILED = "rerun_failed", "Rerun of the failed tasks"
        RERUN_FROM = "rerun_from", "Rerun from a task"
        RESUME = "resume", "Resumed after a skip"
        TRIGGERED = "triggered", "After another job"
        BACKFILL = "backfill", "Backfill"

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="runs")
    trigger = models.CharField(
        "started by", max_length=12, choices=Trigger.choices, default=Trigger.SCHEDULED
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="operator",
    )
    note = models.CharField("note", max_length=300, blank=True)
    # Run now's parameter overrides for this run only: {task key: {parameter: value}}.
    parameters = models.JSONField("parameter overrides", default=dict, blank=True)
    # The recurrence occurrence this run stands for: its scheduled start for a scheduled run
    # of a recurring job, the missed one for a backfill; a process reads it as ctx.occurrence.
    occurrence = models.DateTimeField(
        "occurrence",
        null=True,
        blank=True,
        help_text="The occurrence of the recurrence this run stands for.",
    )
    status = models.CharField(max_length=10, choices=BatchStatus.choices)
    scheduled_start = models.DateTimeField("scheduled start date/time")
    started_at = models.DateTimeField("actual start date/time", default=now)
    ended_at = models.DateTimeField("end date/time", null=True, blank=True)
    run_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        related_name="+",
        verbose_name="run by",
    )
    canceled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name="canceled by",
    )

    class Meta:
        verbose_name = "batch job run"
        ordering = ["-started_at"]
        indexes = [
            models.Index(fields=["job", "-started_at"], name="jobrun_job_idx"),
            # History clean-up: "runs that ended before the limit".
            models.Index(fields=["ended_at"], name="jobrun_ended_idx"),
            # The Batch job history inquiry (jobs/inquiries.py): its default order, newest
            # first, and its time range; and the same per status (the "what failed" filter).
            models.Index(fields=["-started_at", "-id"], name="jobrun_started_idx"),
            models.Index(fields=["status", "-started_at", "-id"], name="jobrun_status_idx"),
            # ... and its sort by duration (the same expression as its ordering's).
            models.Index(
                (F("ended_at") - F("started_at")).desc(), F("id").desc(), name="jobrun_took_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} of job {self.job_id}"


class QueuedRunQuerySet(models.QuerySet["QueuedRun"]):
    def pending(self) -> QueuedRunQuerySet:
        return self.filter(done_at=None)


class QueuedRun(models.Model):
    """A run the engine owes a job, in the order they were queued: after a run of the job it
    follows (a trigger), or for an occurrence a manager backfills.

    The durable outbox between the transaction that decides a run is owed (the parent's
    settle, the backfill request) and the one that starts it (transitions.start_queued_run):
    nothing is lost if a worker dies between the two, and the unique constraint keeps a run
    of the parent from triggering its follower twice. A job runs its queued runs one at a
    time, each when the one before has ended.
    """

    class Kind(models.TextChoices):
        TRIGGER = "trigger", "After another job"
        BACKFILL = "backfill", "Backfill"

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="queued_runs")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    # A trigger: the parent's run and its final status (the run may be gone: save to history).
    after_job = models.ForeignKey(
        BatchJob, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    after_run_id = models.PositiveBigIntegerField(null=True, blank=True)
    after_status = models.CharField(max_length=10, choices=BatchStatus.choices, blank=True)
    # A backfill: the occurrence the run stands for, and who asked.
    occurrence = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created = models.DateTimeField(default=now)
    done_at = models.DateTimeField(null=True, blank=True)
    run = models.ForeignKey(
        BatchJobRun, models.SET_NULL, null=True, blank=True, related_name="queued_as"
    )
    note = models.CharField(max_length=300, blank=True)  # why it did not start, if it did not

    objects = QueuedRunQuerySet.as_manager()

    class Meta:
        verbose_name = "queued run"
        indexes = [
            # tick.handle_queued_runs: the pending rows, oldest first.
            models.Index(
                fields=["job", "id"], name="queuedrun_pending_idx", condition=Q(done_at=None)
            ),
        ]
        constraints = [
            # A retried settle of the parent's run must not start the follower twice.
            models.UniqueConstraint(
                fields=["job", "after_run_id"],
                condition=Q(after_run_id__isnull=False),
                name="queuedrun_once_per_parent_run",
            ),
            # One pending backfill run per occurrence: asking twice queues it once.
            models.UniqueConstraint(
                fields=["job", "occurrence"],
                condition=Q(done_at=None, occurrence__isnull=False),
                name="queuedrun_pending_occurrence",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of job {self.job_id}"


class BatchTaskRun(models.Model):
    """One attempt of one task in one job run (D365's batch task history, per attempt)."""

    Status = BatchStatus

    job_run = models.ForeignKey(BatchJobRun, models.CASCADE, related_name="task_runs")
    # No index of its own: taskrun_task_idx (task, attempt) and taskrun_task_last_idx
    # (task, -id) start with it and serve every lookup by task (and the cascade from a
    # deleted task); each attempt's insert and update would only write a third copy.
    task = models.ForeignKey(BatchTask, models.CASCADE, related_name="runs", db_index=False)
    attempt = models.PositiveSmallIntegerField(default=1)
    status = models.CharField(max_length=10, choices=BatchStatus.choices)
    # No index of its own either: taskrun_server_idx (server, -started_at, -id) starts with
    # it (the inquiries' server filter, SET_NULL when a server is deleted).
    server = models.ForeignKey(
        BatchServer, models.SET_NULL, null=True, blank=True, related_name="+", db_index=False
    )
    hostname = models.CharField(max_length=200, blank=True)
    # When the task became Ready for this attempt (copied by the claim from the task): the
    # Gantt's wait, ready -> start, which covers a busy group, a limit and a retry's backoff.
    ready_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    error_message = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    # The Celery message this attempt ran under, to revoke (abort) it.
    celery_task_id = models.CharField(max_length=64, blank=True)

    class Meta:
        verbose_name = "batch task run"
        ordering = ["job_run", "task", "attempt"]
        indexes = [
            models.Index(fields=["task", "attempt"], name="taskrun_task_idx"),
            # The workspace's "finished per minute / failures over the last day" and /metrics.
            models.Index(fields=["ended_at"], name="taskrun_ended_idx"),
            # The Batch tasks inquiry (jobs/inquiries.py): its default order and time range,
            # the same per status and per server ("what failed last night on aos2").
            models.Index(fields=["-started_at", "-id"], name="taskrun_started_idx"),
            models.Index(fields=["status", "-started_at", "-id"], name="taskrun_status_idx"),
            models.Index(fields=["server", "-started_at", "-id"], name="taskrun_server_idx"),
            models.Index(
                (F("ended_at") - F("started_at")).desc(), F("id").desc(), name="taskrun_took_idx"
            ),
            # The task grid's "last attempt" of each line (task_grid.load).
            models.Index(fields=["task", "-id"], name="taskrun_task_last_idx"),
        ]

    def __str__(self) -> str:
        return f"task {self.task_id} attempt {self.attempt}"

    def duration(self) -> dt.timedelta | None:
        if self.started_at and self.ended_at:
            return self.ended_at - self.started_at
        return None


class BatchLogEntry(models.Model):
    """A line a batch process wrote (D365's Infolog: info / warning / error)."""

    class Level(models.IntegerChoices):
        INFO = 20, "Info"
        WARNING = 30, "Warning"
        ERROR = 40, "Error"

    task_run = models.ForeignKey(BatchTaskRun, models.CASCADE, related_name="log_entries")
    created = models.DateTimeField(default=now)
    level = models.PositiveSmallIntegerField(choices=Level.choices, default=Level.INFO)
    message = models.TextField()

    class Meta:
        verbose_name = "log entry"
        verbose_name_plural = "log entries"
        ordering = ["task_run", "pk"]

    def __str__(self) -> str:
        return self.message[:80]


class StatusChange(models.Model):
    """Every change of a job's status, written in the same transaction as the change.

    Alerts and the job timeline read these (healthchecks' Flip). Task attempts have their
    own history in BatchTaskRun.
    """

    job = models.ForeignKey(BatchJob, models.CASCADE, related_name="status_changes")
    job_run = models.ForeignKey(
        BatchJobRun,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="status_changes",
    )
    old_status = models.CharField(max_length=10, choices=BatchStatus.choices)
    new_status = models.CharField(max_length=10, choices=BatchStatus.choices)
    reason = models.CharField(max_length=200, blank=True)
    by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["job", "at"]

    def __str__(self) -> str:
        return f"job {self.job_id}: {self.old_status} -> {self.new_status}"


class SavedJobFilter(models.Model):
    """A filter of the job list a user saved under a name: the list's query string."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, related_name="saved_job_filters"
    )
    name = models.CharField("name", max_length=80)
    query = models.CharField("query string", max_length=2000, blank=True)
    created = models.DateTimeField(default=now)

    class Meta:
        verbose_name = "saved job filter"
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="saved_filter_unique_name"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.name}"

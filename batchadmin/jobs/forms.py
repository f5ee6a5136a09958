"""The batch job form (header and task lines), Change status and Copy batch job.

A task line is edited with three forms at once, bundled in ``TaskEditor``: the task's own
fields, the parameter form of its process (the process's dialog, D365's ``pack()``), and the
Has conditions lines.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max
from django.urls import reverse

from batchadmin.audit import trail
from batchadmin.engine import transitions
from batchadmin.jobs import access, triggers
from batchadmin.jobs.models import (
    MAX_RETRIES_LIMIT,
    TIME_LIMIT_MAX_SECONDS,
    ActivePeriod,
    AfterStatus,
    BatchJob,
    BatchStatus,
    BatchTask,
    BatchTaskCondition,
)
from batchadmin.lib import clock, deadlines, durations
from batchadmin.lib.graph import find_cycle
from batchadmin.processes import registry
from batchadmin.servers.models import BatchGroup, Priority

HEADER_FIELDS = [
    "description",
    "scheduled_start",
    "run_as",
    "priority",
    "priority_overridden",
    "company",
    "active_period",
    "save_history",
    "critical",
    "deadline_time",
    "deadline_minutes",
]
# What the task line writes; status, retries and the attempt bookkeeping belong to transitions.
TASK_FIELDS = [
    "key",
    "description",
    "company",
    "process",
    "parameters",
    "group",
    "ignore_failure",
    "max_retries",
    "time_limit",
    "condition_type",
]
PARAMETER_PREFIX = "param"
CONDITION_PREFIX = "cond"
NEW = "new"


def _run_by_field(
    form: forms.ModelForm[BatchJob], user: User, *, creator: str, read_only: bool = False
) -> None:
    field = form.fields["run_as"]
    assert isinstance(field, forms.ModelChoiceField)
    field.queryset = get_user_model().objects.filter(is_active=True).order_by("username")
    field.empty_label = f"The creator ({creator})"
    if not access.is_manager(user) and not read_only:
        # D365: only a batch job manager changes Run by. A disabled field ignores what is
        # posted and keeps its initial value, so the refusal is server-side too.
        field.disabled = True
        field.help_text = "Only a batch job manager can change Run by."


class ActivePeriodChoiceField(forms.ModelChoiceField[ActivePeriod]):
    def label_from_instance(self, obj: ActivePeriod) -> str:
        return f"{obj.code}: {obj.describe()}"


# D365 shows "Scheduling priority is overridden" and the priority as two fields; here they are
# one select whose first choice is "not overridden", so a priority that does not apply is never
# on screen.
GROUP_PRIORITY = ""
PRIORITY_CHOICES = [(GROUP_PRIORITY, "Batch group's priority"), *Priority.choices]


class JobForm(forms.ModelForm[BatchJob]):
    """The job header: description, scheduled start, run by, priority, company, active period,
    save job to history and critical."""

    priority = forms.TypedChoiceField(
        label="Scheduling priority",
        choices=PRIORITY_CHOICES,
        coerce=int,
        empty_value=None,
        required=False,
        help_text="Overrides the batch groups' priority for every task; higher ones start first.",
    )

    # Beyond D365: the job this one follows, by ID (a select of every job would not scale).
    # Not the model field: saved through triggers.set_trigger, which refuses loops under locks.
    follows = forms.IntegerField(
        label="Triggered by job",
        required=False,
        min_value=1,
        widget=forms.NumberInput(attrs={"placeholder": "no job"}),
        help_text="A job ID: this job runs each time a run of that job ends with the status "
        "below, besides its recurrence if it has one. Without a recurrence it has no schedule "
        "of its own.",
    )

    class Meta:
        model = BatchJob
        fields = [
            *(f for f in HEADER_FIELDS if f not in ("priority", "priority_overridden")),
            "after_status",
        ]
        field_classes = {
            "active_period": ActivePeriodChoiceField,
            "scheduled_start": clock.DateTimeField,
            "deadline_time": clock.TimeField,
        }
        widgets = {
            "deadline_minutes": forms.NumberInput(
                attrs={"min": 1, "max": deadlines.MAX_WITHIN_MINUTES, "placeholder": "none"}
            ),
        }

    def __init__(self, *args: Any, user: User, read_only: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user = user
        self.fields["after_status"].required = False  # forms posted before triggers existed
        if not self.is_bound and "follows" not in self.initial:
            self.initial["follows"] = self.instance.after_job_id
        if not self.is_bound and "priority" not in self.initial:
            job = self.instance
            self.initial["priority"] = job.priority if job.priority_overridden else GROUP_PRIORITY
        creator = self.instance.created_by if self.instance.pk else user
        _run_by_field(self, user, creator=str(creator or "unknown"), read_only=read_only)
        company = self.fields["company"]
        assert isinstance(company, forms.ModelChoiceField)
        company.empty_label = "(none)"
        period = self.fields["active_period"]
        assert isinstance(period, forms.ModelChoiceField)
        period.empty_label = "Any time"
        if not access.is_manager(user) and not read_only:
            # Critical alerts every batch job manager: theirs to decide, as Run by is. A
            # disabled field keeps its initial value whatever is posted.
            self.fields["critical"].disabled = True
            self.fields["critical"].help_text += " Only a batch job manager can change it."
        if read_only:
            for field in self.fields.values():
                field.disabled = True

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or self.cleaned_data
        if cleaned.get("deadline_time") is not None and cleaned.get("deadline_minutes"):
            self.add_error(
                "deadline_minutes",
                "A deadline is a time of day or a number of minutes after the start, not both: "
                "empty one of them.",
            )
        if self.instance.pk and "run_as" in self.changed_data:
            # The tasks run as the new Run by from now on: it must be allowed their processes
            # (the runner would refuse every attempt otherwise).
            run_as = cleaned.get("run_as") or self.instance.created_by
            processes = self.instance.tasks.values_list("process", flat=True).distinct()
            try:
                access.check_processes(run_as, processes)
            except registry.ProcessNotAllowed as exc:
                self.add_error("run_as", str(exc))
        if not cleaned.get("after_status"):
            cleaned["after_status"] = AfterStatus.ENDED
        follows: int | None = cleaned.get("follows")
        if follows is not None and not access.visible_jobs(self.user).filter(pk=follows).exists():
            self.add_error("follows", f"There is no batch job {follows} that you can see.")
        elif "follows" in cleaned:
            try:
                triggers.check(self.instance.pk, follows)
            except triggers.TriggerError as exc:
                self.add_error("follows", str(exc))
            else:
                self.instance.after_job_id = follows
        # Not a model field of this form (see PRIORITY_CHOICES): written to the job here.
        chosen: int | None = cleaned.get("priority")
        self.instance.priority_overridden = chosen is not None
        if chosen is not None:
            self.instance.priority = chosen
        return cleaned

    def save_header(self, *, by: User | None = None) -> BatchJob:
        """Write the header fields only (never status), under the job lock; the audit trail
        gets what changed."""
        job = self.save(commit=False)
        with transaction.atomic():
            saved = transitions.lock_editable_job(job.pk)
            before = trail.snapshot(saved, HEADER_FIELDS)
            job.save(update_fields=[*HEADER_FIELDS, "modified"])
            trail.record_edit(
                trail.Action.JOB_EDIT,
                before=before,
                after=trail.snapshot(job, HEADER_FIELDS),
                user=by,
                job=job,
                target="header",
            )
            # Checked again under the locks: another request may have closed a loop meanwhile.
            triggers.set_trigger(
                job_id=job.pk,
                after_id=self.cleaned_data.get("follows"),
                status=job.after_status,
                by=by,
            )
        return job


class CopyJobForm(forms.ModelForm[BatchJob]):
    """Copy batch job: what the copy may change (D365 copy-batch-job.md)."""

    class Meta:
        model = BatchJob
        fields = ["description", "company", "scheduled_start", "run_as"]
        field_classes = {"scheduled_start": clock.DateTimeField}
        help_texts = {
            "company": "Tasks that ran in the job's company move to this one with the copy.",
        }

    def __init__(self, *args: Any, user: User, source: BatchJob, **kwargs: Any) -> None:
        run_as = source.run_as if access.is_manager(user) else None
        initial = {
            "description": source.description,
            "company": source.company_id,
            "scheduled_start": source.scheduled_start,
            "run_as": run_as.pk if run_as else None,
        }
        kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)
        _run_by_field(self, user, creator=f"you, {user}")
        company = self.fields["company"]
        assert isinstance(company, forms.ModelChoiceField)
        company.empty_label = "(none)"


class ChangeStatusForm(forms.Form):
    """Select new status. Every user move is a choice here; the dialog shows only the ones
    transitions.USER_MOVES offers from the current status, and change_status refuses the rest.
    """

    status = forms.TypedChoiceField(
        label="New status",
        choices=[
            (BatchStatus.WAITING.value, "Waiting"),
            (BatchStatus.WITHHOLD.value, "Withhold"),
            (BatchStatus.CANCELING.value, "Cancel"),
        ],
        coerce=BatchStatus,
        widget=forms.RadioSelect,
    )
    confirm = forms.BooleanField(
        label="Yes, cancel this job",
        required=False,
    )
    confirm_empty = forms.BooleanField(
        label="Yes, set it Waiting without tasks",
        required=False,
    )

    def __init__(self, *args: Any, job: BatchJob, empty: bool = False, **kwargs: Any) -> None:
        moves = transitions.USER_MOVES.get(BatchStatus(job.status), ())
        if len(moves) == 1:
            kwargs.setdefault("initial", {"status": moves[0].value})
        self.empty = empty  # the job has no tasks
        super().__init__(*args, **kwargs)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("status") == BatchStatus.CANCELING and not cleaned.get("confirm"):
            self.add_error("confirm", "Tick this box to confirm that the job is to be canceled.")
        # A job without tasks starts and ends at once, having run nothing: almost always a
        # job whose tasks were never added. Say so before it happens.
        waiting = cleaned.get("status") == BatchStatus.WAITING
        if waiting and self.empty and not cleaned.get("confirm_empty"):
            self.add_error(
                "confirm_empty",
                "This job has no tasks: add them first, or tick this box to run it empty.",
            )
        return cleaned


# --- Task lines ---------------------------------------------------------------------------


class ProcessSelect(forms.Select):
    """D365's Class name list: each option says what the process does when hovered."""

    def create_option(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        option: dict[str, Any] = super().create_option(*args, **kwargs)
        with contextlib.suppress(registry.UnknownProcess):
            option["attrs"]["title"] = registry.get(str(option["value"])).description
        return option


def process_choices(current: str = "", *, user: Any = None) -> list[Any]:
    """Registered processes grouped by the first part of their name (demo, mail, reports):
    those ``user`` may run (access.may_run; ``None``: all)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for p in registry.all_processes():
        if access.may_run(user, p):
            groups.setdefault(p.name.split(".")[0], []).append((p.name, f"{p.label} ({p.name})"))
    choices: list[Any] = [("", "Choose a batch process…"), *groups.items()]
    if current and current not in {name for group in groups.values() for name, _ in group}:
        # A process whose module is gone, or one this user may not pick (a manager put it
        # there): keep it visible so the line reads true; saving it is refused.
        registered = current in {p.name for p in registry.all_processes()}
        note = "you may not run it" if registered else "no longer registered"
        choices.append((current, f"{current} ({note})"))
    return choices


class TaskForm(forms.ModelForm[BatchTask]):
    process = forms.ChoiceField(
        label="Class name",
        help_text="The batch process this task runs.",
        widget=ProcessSelect,
    )

    class Meta:
        model = BatchTask
        fields = [
            "key",
            "description",
            "process",
            "company",
            "group",
            "ignore_failure",
            "max_retries",
            "time_limit",
            "condition_type",
        ]
        widgets = {
            # A line opened for editing puts the cursor here, so Enter and Esc work at once.
            "description": forms.TextInput(attrs={"autofocus": True}),
            "max_retries": forms.NumberInput(attrs={"min": 0, "max": MAX_RETRIES_LIMIT}),
            "time_limit": forms.NumberInput(
                attrs={"min": 1, "max": TIME_LIMIT_MAX_SECONDS, "placeholder": "default"}
            ),
        }

    def __init__(self, *args: Any, job: BatchJob, user: User | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.job = job
        self.user = user
        key = self.fields["key"]
        key.required = False  # a new task left empty gets the next free Tn
        key.widget.attrs.update({"size": 10, "spellcheck": "false", "autocomplete": "off"})
        key.help_text = "Names the task in conditions and import files." + (
            " Empty: keeps it." if self.instance.pk else " Empty: the next free ID (T1, T2, …)."
        )
        process = self.fields["process"]
        assert isinstance(process, forms.ChoiceField)
        process.choices = process_choices(self.instance.process, user=user)
        company = self.fields["company"]
        assert isinstance(company, forms.ModelChoiceField)
        company.empty_label = f"The job's company ({job.company or 'none'})"
        group = self.fields["group"]
        assert isinstance(group, forms.ModelChoiceField)
        group.empty_label = None
        if not self.instance.pk and not self.initial.get("group"):
            self.initial["group"] = BatchGroup.objects.default().pk
        default = durations.whole(settings.BATCH_TASK_TIME_LIMIT_SECONDS)
        self.fields["time_limit"].help_text = (
            "An attempt running longer is asked to stop, then aborted, and ends in Error. "
            f"Empty: the default, {default}."
        )
        self.ceiling = access.time_limit_ceiling(job_run_as(job, user))
        if self.ceiling is not None:
            self.fields[
                "time_limit"
            ].help_text += f" At most {durations.whole(self.ceiling)} for a Batch user's task."

    def clean_key(self) -> str:
        """The task ID as import files name it: any text up to 50 characters, unique in the
        job (conditions point at the task itself, so renaming one keeps them)."""
        key = (self.cleaned_data.get("key") or "").strip()
        if not key:
            # Left empty: a task keeps its ID (a form without the field, too); a new one gets
            # the next free Tn when saved.
            return self.instance.key if self.instance.pk else ""
        if BatchTask.objects.filter(job=self.job, key=key).exclude(pk=self.instance.pk).exists():
            raise forms.ValidationError(
                f"Task ID {key} is already used in this job: choose another."
            )
        return key

    def clean_process(self) -> str:
        name: str = self.cleaned_data["process"]
        try:
            registry.get(name)
        except registry.UnknownProcess:
            raise forms.ValidationError(
                f"{name} is no longer registered: choose another batch process."
            ) from None
        # Both who saves the line and who the job runs as (they differ when a manager edits a
        # Batch user's job): the runner checks the latter again at every attempt.
        try:
            for who in {self.user, job_run_as(self.job, self.user)}:
                access.check_processes(who, [name])
        except registry.ProcessNotAllowed as exc:
            raise forms.ValidationError(str(exc)) from None
        return name

    def clean_time_limit(self) -> int | None:
        limit: int | None = self.cleaned_data.get("time_limit")
        if self.ceiling is None:
            return limit
        if limit is None and self.ceiling < settings.BATCH_TASK_TIME_LIMIT_SECONDS:
            return self.ceiling  # the default is above what this job may have
        if limit is not None and limit > self.ceiling:
            raise forms.ValidationError(
                f"At most {self.ceiling} seconds ({durations.whole(self.ceiling)}) for a task "
                "run as a Batch user (BATCH_USER_MAX_TIME_LIMIT)."
            )
        return limit


class ConditionForm(forms.Form):
    """One Has conditions line: run after task ``depends_on`` reaches ``expected_status``."""

    # An integer, not a ModelChoiceField: a posted id of a task outside this job gets a clear
    # message from ConditionFormSet.clean instead of "Select a valid choice".
    depends_on = forms.IntegerField(label="Task ID", required=False, widget=forms.Select)
    expected_status = forms.ChoiceField(
        label="Expected status",
        choices=BatchTaskCondition.ExpectedStatus.choices,
        initial=BatchTaskCondition.ExpectedStatus.ENDED,
    )


class BaseConditionFormSet(forms.BaseFormSet[ConditionForm]):
    def __init__(
        self,
        *args: Any,
        job_tasks: dict[int, BatchTask],
        task: BatchTask | None,
        other_edges: dict[int, list[int]],
        **kwargs: Any,
    ) -> None:
        self.job_tasks = job_tasks
        self.task = task
        self.other_edges = other_edges
        super().__init__(*args, **kwargs)
        choices = [("", "—")] + [
            (pk, f"{t.key} · {t.description}")
            for pk, t in job_tasks.items()
            if task is None or pk != task.pk
        ]
        for form in self.forms:
            form.fields["depends_on"].widget.choices = choices
            form.fields["DELETE"].label = "Remove"

    def chosen(self) -> list[tuple[ConditionForm, int, str]]:
        """(form, parent task id, expected status) of the lines that name a parent."""
        result = []
        for form in self.forms:
            data = getattr(form, "cleaned_data", {})
            if data.get("DELETE"):
                continue
            if data.get("depends_on") is not None:
                result.append((form, data["depends_on"], data["expected_status"]))
        return result

    def clean(self) -> None:
        if any(self.errors):
            return
        own_pk = self.task.pk if self.task else None
        seen: dict[int, ConditionForm] = {}
        for form, parent, _ in self.chosen():
            if parent == own_pk:
                form.add_error("depends_on", "A task can't have a condition on itself.")
            elif parent not in self.job_tasks:
                form.add_error(
                    "depends_on",
                    f"Task #{parent} is not a task of this batch job: a condition can only "
                    "name a task of the same job.",
                )
            elif parent in seen:
                key = self.job_tasks[parent].key
                form.add_error("depends_on", f"There is already a condition on {key}.")
            else:
                seen[parent] = form
        if any(self.errors):
            return
        # The job's graph with this task's new conditions in place of its old ones.
        me = own_pk if own_pk is not None else 0
        edges = dict(self.other_edges)
        edges[me] = list(seen)
        cycle = find_cycle(edges)
        if cycle and me in cycle:
            start = cycle.index(me)
            loop = cycle[start:-1] + cycle[:start] + [me]
            names = [self._key(pk) for pk in loop]
            steps = ", ".join(f"{a} waits for {b}" for a, b in pairwise(names))
            seen[loop[1]].add_error(
                "depends_on",
                f"This condition makes a cycle: {steps}. A task can't wait for itself.",
            )

    def _key(self, pk: int) -> str:
        task = self.job_tasks.get(pk)
        return task.key if task else "this task"


ConditionFormSet = cast(
    type[BaseConditionFormSet],
    forms.formset_factory(ConditionForm, formset=BaseConditionFormSet, extra=0, can_delete=True),
)


def job_run_as(job: BatchJob, user: User | None) -> User | None:
    """Who the job's tasks run as: Run by, else its creator, else (a job being made) ``user``."""
    if job.run_as_id is not None:
        return job.run_as
    if job.created_by_id is not None:
        return job.created_by
    return user


def parameter_form(
    process_name: str,
    *,
    data: Any = None,
    initial: dict[str, Any] | None = None,
    auto_id: str = "id_%s",
    user: User | None = None,
) -> tuple[registry.BatchProcess | None, forms.Form]:
    """The parameter form of a process, prefixed so its fields never clash with the task's;
    none for a process ``user`` may not run (the process field says why)."""
    try:
        process = registry.get(process_name)
    except registry.UnknownProcess:
        process = None
    if process is None or not access.may_run(user, process):
        return None, registry.NoParameters(prefix=PARAMETER_PREFIX, auto_id=auto_id)
    form = process.form_class(data=data, initial=initial, prefix=PARAMETER_PREFIX, auto_id=auto_id)
    return process, form


@dataclass
class TaskEditor:
    """One task line in edit mode: the task's fields, its parameters and its conditions."""

    job: BatchJob
    task: BatchTask | None
    form: TaskForm
    process: registry.BatchProcess | None
    params: forms.Form
    conditions: BaseConditionFormSet
    quiet: bool = False  # re-rendered for "Add condition": don't show errors yet
    error: str = ""  # a refusal that belongs to no field (the job started meanwhile)
    parameters: dict[str, Any] = field(default_factory=dict)  # set by is_valid()

    @property
    def dom_id(self) -> str:
        return f"task-{self.task.pk if self.task else NEW}"

    @property
    def task_ref(self) -> str:
        return str(self.task.pk) if self.task else NEW

    def is_valid(self) -> bool:
        valid = self.form.is_valid()
        valid = self.conditions.is_valid() and valid
        if self.process is None:
            return False
        if not self.params.is_valid():
            return False
        try:
            self.parameters = self.process.clean_parameters(
                {name: self.params[name].data for name in self.params.fields}
            )
        except registry.ParameterError as exc:
            for name, messages in exc.errors.items():
                self.params.add_error(None if name == "__all__" else name, messages)
            return False
        return valid

    def save(self, *, by: User | None = None) -> BatchTask:
        """Create or update the task and replace its conditions, under the job lock; the
        audit trail gets what changed."""
        task = self.form.save(commit=False)
        task.parameters = self.parameters
        with transaction.atomic():
            transitions.lock_editable_job(self.job.pk)
            before: dict[str, Any] = {}
            if self.task is not None:
                stored = BatchTask.objects.filter(pk=self.task.pk, job=self.job).first()
                before = trail.task_snapshot(stored, TASK_FIELDS) if stored else {}
            parents = {parent for _, parent, _ in self.conditions.chosen()}
            if BatchTask.objects.filter(job=self.job, pk__in=parents).count() != len(parents):
                raise transitions.ChangeRefused(
                    "A task named in Has conditions was deleted meanwhile. Nothing was saved."
                )
            taken = BatchTask.objects.filter(job=self.job, key=task.key).exclude(pk=task.pk)
            if task.key and taken.exists():
                raise transitions.ChangeRefused(
                    f"Task ID {task.key} was taken meanwhile by another task. Nothing was saved."
                )
            if self.task is None:
                task.job = self.job
                task.key = task.key or next_task_key(self.job.pk)
                position = BatchTask.objects.filter(job=self.job).aggregate(p=Max("position"))
                task.position = (position["p"] or 0) + 1
                task.save()
            elif not BatchTask.objects.filter(pk=task.pk, job=self.job).exists():
                raise transitions.ChangeRefused(
                    "This task was deleted meanwhile. Nothing was saved."
                )
            elif find_cycle(job_edges(self.job, without=task.pk) | {task.pk: list(parents)}):
                # Someone else added a condition that closes a loop with these ones.
                raise transitions.ChangeRefused(
                    "These conditions would now make a cycle with a change made meanwhile. "
                    "Nothing was saved; close the line and look again."
                )
            else:
                task.save(update_fields=TASK_FIELDS)
                task.conditions.all().delete()
            BatchTaskCondition.objects.bulk_create(
                BatchTaskCondition(task=task, depends_on_id=parent, expected_status=expected)
                for _, parent, expected in self.conditions.chosen()
            )
            trail.record_edit(
                trail.Action.TASK_EDIT if self.task is not None else trail.Action.TASK_ADD,
                before=before,
                after=trail.task_snapshot(task, TASK_FIELDS),
                user=by,
                job=self.job,
                target=f"task {task.key}",
            )
        return task


def job_edges(job: BatchJob, *, without: int | None) -> dict[int, list[int]]:
    """Task -> the tasks it waits for, over the job, leaving out the conditions of ``without``."""
    edges: dict[int, list[int]] = {}
    for child, parent in BatchTaskCondition.objects.filter(task__job=job).values_list(
        "task_id", "depends_on_id"
    ):
        if child != without:
            edges.setdefault(child, []).append(parent)
    return edges


def next_task_key(job_id: int) -> str:
    """T1, T2, ...: one more than the highest Tn of the job (the caller holds the job lock)."""
    keys = BatchTask.objects.filter(job_id=job_id, key__regex=r"^T[0-9]+$").values_list(
        "key", flat=True
    )
    return f"T{max((int(k[1:]) for k in keys), default=0) + 1}"


def task_editor(
    job: BatchJob,
    task: BatchTask | None,
    *,
    user: User | None,
    data: Any = None,
    process: str | None = None,
    add_condition: bool = False,
) -> TaskEditor:
    """Build the editor for ``task`` (None: a new task), bound to ``data`` when posted."""
    job_tasks = {t.pk: t for t in BatchTask.objects.filter(job=job).order_by("position", "pk")}
    edges = job_edges(job, without=task.pk if task else None)
    if data is not None and add_condition:
        data = data.copy()
        total = f"{CONDITION_PREFIX}-TOTAL_FORMS"
        data[total] = str(int(data.get(total) or 0) + 1)
    instance = task or BatchTask(job=job)
    initial_conditions = None
    if task is not None and data is None:
        initial_conditions = [
            {"depends_on": c.depends_on_id, "expected_status": c.expected_status}
            for c in task.conditions.order_by("pk")
        ]
    ref = str(task.pk) if task else NEW
    # Ids carry the line, so two lines open at once keep their labels apart.
    auto_id = f"id_t{ref}_%s"
    form = TaskForm(
        data,
        instance=instance,
        job=job,
        user=user,
        initial=None if task else {"process": process or ""},
        auto_id=auto_id,
    )
    form.fields["process"].widget.attrs.update(
        {
            "hx-get": reverse("jobs:task-parameters", args=[job.pk]) + f"?task={ref}",
            "hx-trigger": "change",
            "hx-target": f"#task-{ref}-parameters",
            "hx-swap": "outerHTML",
            "hx-include": "this",
        }
    )
    name = process or (data.get("process", "") if data is not None else instance.process)
    stored = instance.parameters if name == instance.process else None
    params_process, params = parameter_form(
        name, data=data, initial=stored, auto_id=auto_id, user=user
    )
    conditions = ConditionFormSet(
        data,
        initial=initial_conditions,
        prefix=CONDITION_PREFIX,
        auto_id=auto_id,
        job_tasks=job_tasks,
        task=task,
        other_edges=edges,
    )
    return TaskEditor(
        job=job,
        task=task,
        form=form,
        process=params_process,
        params=params,
        conditions=conditions,
        quiet=add_condition,
    )

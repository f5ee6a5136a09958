from __future__ import annotations

import datetime as dt

from django.db import migrations

# D365 ships "Batch job history clean-up" as a periodic task to schedule; we seed it as an
# ordinary recurring batch job, so operators retune its limit and schedule on the job page.
DESCRIPTION = "Batch job history clean-up"
PROCESS = "history.cleanup"
KEEP_DAYS = 30
AT = dt.time(2, 0)  # outside business hours, in UTC


def seed(apps, schema_editor):
    BatchJob = apps.get_model("jobs", "BatchJob")
    BatchTask = apps.get_model("jobs", "BatchTask")
    BatchRecurrence = apps.get_model("jobs", "BatchRecurrence")
    BatchGroup = apps.get_model("servers", "BatchGroup")
    if BatchTask.objects.filter(process=PROCESS).exists():
        return  # an operator made one already (or this ran before)
    group, _ = BatchGroup.objects.get_or_create(
        code="default", defaults={"description": "Default batch group (D365's empty group)"}
    )
    current = dt.datetime.now(dt.UTC)
    first = dt.datetime.combine(current.date(), AT, tzinfo=dt.UTC)
    if first <= current:
        first += dt.timedelta(days=1)
    job = BatchJob.objects.create(
        description=DESCRIPTION,
        status="waiting",
        priority=20,  # Normal
        scheduled_start=first,
        save_history="errors",  # D365's advice for jobs that run often
    )
    BatchTask.objects.create(
        job=job,
        key="T1",
        description=f"Delete history older than {KEEP_DAYS} days",
        process=PROCESS,
        # What the process's parameter form gives for these values (see processes.maintenance).
        parameters={
            "keep_days": KEEP_DAYS,
            "statuses": [],
            "description": "",
            "other_records": True,
        },
        group=group,
        position=1,
    )
    BatchRecurrence.objects.create(
        job=job,
        start_date=first.date(),
        start_time=AT,
        time_zone="UTC",
        unit="days",
        every=1,
        missed="run_once",
    )


def unseed(apps, schema_editor):
    BatchJob = apps.get_model("jobs", "BatchJob")
    BatchJob.objects.filter(description=DESCRIPTION, tasks__process=PROCESS).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_save_history_critical"),
        ("servers", "0002_default_group"),
    ]

    operations = [migrations.RunPython(seed, unseed)]

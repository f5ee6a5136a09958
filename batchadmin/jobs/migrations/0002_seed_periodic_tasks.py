from __future__ import annotations

from django.db import migrations

# The system's own periodic work, as PeriodicTask rows so operators retune it in the admin.
# engine.beat.BatchScheduler (once jobs.beat) runs "batchadmin.tick" inside the beat process.
TICK_NAME = "batchadmin: release tick"


def seed(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    every_second, _ = IntervalSchedule.objects.get_or_create(every=1, period="seconds")
    PeriodicTask.objects.get_or_create(
        name=TICK_NAME,
        defaults={
            "task": "batchadmin.tick",
            "interval": every_second,
            "description": "Starts due batch jobs, expires leases of lost servers, sends retries.",
        },
    )


def unseed(apps, schema_editor):
    apps.get_model("django_celery_beat", "PeriodicTask").objects.filter(name=TICK_NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(seed, unseed)]

from django.db import migrations, models

NORMAL = 20


def mark_overridden(apps, schema_editor):
    # Until now a job's priority applied to all its tasks. Every group starts with the default
    # priority Normal, so a job set to anything else keeps its priority by overriding it.
    BatchJob = apps.get_model("jobs", "BatchJob")
    BatchJob.objects.exclude(priority=NORMAL).update(priority_overridden=True)


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0006_task_time_limit"),
    ]

    operations = [
        migrations.AddField(
            model_name="batchjob",
            name="priority_overridden",
            field=models.BooleanField(
                default=False,
                help_text="Off: each task takes its batch group's scheduling priority.",
                verbose_name="scheduling priority is overridden",
            ),
        ),
        migrations.RunPython(mark_overridden, migrations.RunPython.noop),
    ]

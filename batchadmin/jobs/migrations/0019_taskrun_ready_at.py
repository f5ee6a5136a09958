"""When the task became Ready for each attempt: the Gantt's wait (ready -> start)."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0018_recurrence_overlap")]

    operations = [
        migrations.AddField(
            model_name="batchtaskrun",
            name="ready_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]

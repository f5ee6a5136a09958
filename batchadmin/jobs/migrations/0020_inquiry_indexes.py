"""Indexes of the Batch job history and Batch tasks inquiries, and of the task grid's last
attempt per line (the readers are named in the models' Meta.indexes)."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0019_taskrun_ready_at"),
        ("servers", "0005_group_priority_reserved_capacity"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="batchjobrun",
            index=models.Index(fields=["-started_at", "-id"], name="jobrun_started_idx"),
        ),
        migrations.AddIndex(
            model_name="batchjobrun",
            index=models.Index(fields=["status", "-started_at", "-id"], name="jobrun_status_idx"),
        ),
        migrations.AddIndex(
            model_name="batchtaskrun",
            index=models.Index(fields=["-started_at", "-id"], name="taskrun_started_idx"),
        ),
        migrations.AddIndex(
            model_name="batchtaskrun",
            index=models.Index(fields=["status", "-started_at", "-id"], name="taskrun_status_idx"),
        ),
        migrations.AddIndex(
            model_name="batchtaskrun",
            index=models.Index(fields=["server", "-started_at", "-id"], name="taskrun_server_idx"),
        ),
        migrations.AddIndex(
            model_name="batchtaskrun",
            index=models.Index(fields=["task", "-id"], name="taskrun_task_last_idx"),
        ),
    ]

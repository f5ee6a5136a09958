"""Fewer index entries per attempt: every attempt updates its task twice and writes its attempt
row twice, none of them HOT, and each write adds an entry to every index of the table.

Dropped, as only the first column of a composite index: BatchTask.job (task_job_status_idx
(job, status) and the unique (job, key)), BatchTaskRun.task (taskrun_task_idx (task, attempt)
and taskrun_task_last_idx (task, -id)), BatchTaskRun.server (taskrun_server_idx (server,
-started_at, -id)). Dropped as nothing frequent needs it: BatchTask.server (the servers pages
ask for running tasks, found by the partial indexes on running statuses). BatchTask.company
becomes partial, for tasks with a company of their own: the others (most) skip it.
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0023_triggers_and_backfill"),
        ("servers", "0006_group_max_tasks"),
    ]

    operations = [
        migrations.AlterField(
            model_name="batchtask",
            name="company",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                to="jobs.company",
                verbose_name="company accounts",
            ),
        ),
        migrations.AlterField(
            model_name="batchtask",
            name="job",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="tasks",
                to="jobs.batchjob",
            ),
        ),
        migrations.AlterField(
            model_name="batchtask",
            name="server",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="servers.batchserver",
                verbose_name="server",
            ),
        ),
        migrations.AlterField(
            model_name="batchtaskrun",
            name="server",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="servers.batchserver",
            ),
        ),
        migrations.AlterField(
            model_name="batchtaskrun",
            name="task",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="runs",
                to="jobs.batchtask",
            ),
        ),
        migrations.AddIndex(
            model_name="batchtask",
            index=models.Index(
                condition=models.Q(("company__isnull", False)),
                fields=["company"],
                name="task_company_idx",
            ),
        ),
    ]

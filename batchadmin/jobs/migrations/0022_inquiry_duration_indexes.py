"""The inquiries' sort by duration (jobs/inquiries.py): an index on the same expression as its
ORDER BY, so the longest runs and attempts come from an index scan, not a sort of the whole
history (490 ms for 380,000 runs under load, bench/pages.py)."""

from __future__ import annotations

import django.db.models.expressions
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("jobs", "0021_taskrun_error_trigram")]

    operations = [
        migrations.AddIndex(
            model_name="batchjobrun",
            index=models.Index(
                models.OrderBy(
                    django.db.models.expressions.CombinedExpression(
                        models.F("ended_at"), "-", models.F("started_at")
                    ),
                    descending=True,
                ),
                models.OrderBy(models.F("id"), descending=True),
                name="jobrun_took_idx",
            ),
        ),
        migrations.AddIndex(
            model_name="batchtaskrun",
            index=models.Index(
                models.OrderBy(
                    django.db.models.expressions.CombinedExpression(
                        models.F("ended_at"), "-", models.F("started_at")
                    ),
                    descending=True,
                ),
                models.OrderBy(models.F("id"), descending=True),
                name="taskrun_took_idx",
            ),
        ),
    ]

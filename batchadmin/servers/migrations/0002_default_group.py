from __future__ import annotations

from django.db import migrations


def create_default_group(apps, schema_editor):
    BatchGroup = apps.get_model("servers", "BatchGroup")
    BatchGroup.objects.get_or_create(
        code="default",
        defaults={"description": "Default batch group (D365's empty group)"},
    )


class Migration(migrations.Migration):
    dependencies = [("servers", "0001_initial")]

    operations = [migrations.RunPython(create_default_group, migrations.RunPython.noop)]

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from batchadmin.lib import tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchadmin.settings")
# Before the application loads its middleware: the Django instrumentation adds its own.
tracing.setup("web")
application = get_wsgi_application()

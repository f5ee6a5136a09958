from __future__ import annotations

from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET

from batchadmin.lib.http import AuthedRequest


# TODO(groups/servers pages): replaced by the Batch groups and Server configuration pages.
@require_GET
def group_list(request: AuthedRequest) -> HttpResponse:
    raise Http404("Being built.")


@require_GET
def server_list(request: AuthedRequest) -> HttpResponse:
    raise Http404("Being built.")

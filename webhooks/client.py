"""The HTTP client webhook deliveries go out on: one per worker process (``HTTP_CLIENT``).

Its transport re-checks every resolved address against the SSRF allow-list
(``CONVEYOR_CRAWL_ALLOWED_HOSTS``, read at connect time) and redirects are never followed.
"""

from __future__ import annotations

import httpx

from common.process import ProcessResource
from common.urlsafety import AllowList
from config import get_settings
from webhooks.transport import GuardedSyncTransport


def new_client() -> httpx.Client:
    return httpx.Client(
        transport=GuardedSyncTransport(lambda: AllowList.parse(get_settings().crawl_allowed_hosts)),
        follow_redirects=False,
    )


#: Started by the worker's start-up hook (``workers.lifecycle``) or on the first delivery.
HTTP_CLIENT: ProcessResource[httpx.Client] = ProcessResource(
    "webhook http client", new_client, httpx.Client.close
)

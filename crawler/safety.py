"""URL safety for crawls: the platform's one SSRF guard, ``common.urlsafety``.

Crawls and webhook deliveries go through the same checks and the same allow-list
(``CONVEYOR_CRAWL_ALLOWED_HOSTS``), so the guard lives in ``common`` and is named here for the
crawler, where a reader looks for it.
"""

from common.urlsafety import (
    ALLOW_SETTING,
    ALLOWED_SCHEMES,
    AllowList,
    DNSError,
    IPAddress,
    Target,
    UnsafeURLError,
    check_address,
    check_url,
    check_url_async,
    is_public_address,
    parse_target,
    resolve_checked,
)

__all__ = [
    "ALLOWED_SCHEMES",
    "ALLOW_SETTING",
    "AllowList",
    "DNSError",
    "IPAddress",
    "Target",
    "UnsafeURLError",
    "check_address",
    "check_url",
    "check_url_async",
    "is_public_address",
    "parse_target",
    "resolve_checked",
]

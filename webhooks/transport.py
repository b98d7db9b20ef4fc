"""A synchronous httpx transport that applies the SSRF guard at connect time.

The URL is checked before a delivery (``service.guard_url``), but a name can resolve to another
address a moment later (DNS rebinding). This transport resolves the host itself, checks every
address with the platform's guard (``common.urlsafety``), and connects only to a checked address,
so what was checked is what is connected to. TLS still verifies the host name. The allow-list is
read on every connection, so a changed ``CONVEYOR_CRAWL_ALLOWED_HOSTS`` applies at once.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import httpx

from common.urlsafety import AllowList, UnsafeURLError, check_address


class _GuardedSyncBackend(httpcore.NetworkBackend):
    def __init__(self, allowed: Callable[[], AllowList]) -> None:
        self._inner = httpcore.SyncBackend()
        self._allowed = allowed

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        allowed = self._allowed()
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise httpcore.ConnectError(f"{host} did not resolve: {exc}") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        by_name = allowed.allows_host(host, port)
        if not by_name:
            for address in addresses:
                check_address(address, port, allowed, host)  # raises UnsafeURLError
        last: Exception | None = None
        for address in dict.fromkeys(addresses):
            try:
                return self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        if last is None:
            raise httpcore.ConnectError(f"{host} has no address")
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise UnsafeURLError("Unix sockets are not allowed.")

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class GuardedSyncTransport(httpx.HTTPTransport):
    """httpx's sync transport whose connection pool connects through the SSRF guard."""

    def __init__(self, allowed: Callable[[], AllowList], *, max_connections: int = 50) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_connections // 5 or 1,
            keepalive_expiry=30.0,
            network_backend=_GuardedSyncBackend(allowed),
        )

"""Conveyor's HTTP router for app projects on the local backend.

A request reaches an environment's ``web`` replicas by its ``Host`` header (the environment's
domain) or by the path prefix ``/apps/{slug}/{environment}/`` (stripped before forwarding). The
route of an environment is a file the local backend replaces atomically once the new replicas
passed their health check (``routes/<slug>-<env>.json``): each request reads the current one (a
``stat`` per request, the file is re-read only when it changed), so the switch is atomic and the
old replicas only get requests sent before it (they are drained before being stopped). A
replica that refuses the connection (nothing was sent) is skipped for the next one, after the
route is read again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from deployments.proxy import session as client_session

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_counter = itertools.count()


@dataclass
class _Cached:
    stamp: tuple[int, int, int]
    data: dict[str, Any]


@dataclass
class RouteTable:
    """The routes directory, read lazily: one route file by key, the domain index by scan."""

    directory: Path
    _routes: dict[str, _Cached] = field(default_factory=dict)
    _domains: dict[str, str] = field(default_factory=dict)
    _dir_stamp: int = -1

    def route(self, key: str) -> dict[str, Any] | None:
        path = self.directory / f"{key}.json"
        try:
            st = path.stat()
        except FileNotFoundError:
            self._routes.pop(key, None)
            return None
        stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        cached = self._routes.get(key)
        if cached is None or cached.stamp != stamp:
            try:
                data = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                return None
            cached = _Cached(stamp, data)
            self._routes[key] = cached
        return cached.data

    def key_for_host(self, host: str) -> str | None:
        try:
            stamp = self.directory.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if stamp != self._dir_stamp:
            domains: dict[str, str] = {}
            for path in self.directory.glob("*.json"):
                with contextlib.suppress(OSError, ValueError):
                    data = json.loads(path.read_text())
                    if data.get("domain"):
                        domains[str(data["domain"]).lower()] = path.stem
            self._domains, self._dir_stamp = domains, stamp
        return self._domains.get(host.lower())


def endpoints(table: RouteTable, key: str) -> list[str]:
    route = table.route(key)
    if route is None:
        return []
    return list(route.get("services", {}).get("web", []))


@dataclass
class Forwarded:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class NoReplica(Exception):
    """Nothing serves this environment now (no route, no ready replica, all refused)."""


async def forward(
    table: RouteTable,
    key: str,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    timeout: float,
) -> Forwarded:
    """Send the request to one of the environment's web replicas and read its answer."""
    out_headers = {
        k.decode("latin-1"): v.decode("latin-1")
        for k, v in headers
        if k.decode("latin-1").lower() not in HOP_BY_HOP
    }
    tried: set[str] = set()
    last_error = "no replica serves this environment"
    for _ in range(4):
        targets = [t for t in endpoints(table, key) if t not in tried]
        if not targets:
            break
        target = targets[next(_counter) % len(targets)]
        tried.add(target)
        try:
            async with client_session(timeout).request(
                method,
                f"http://{target}{path}",
                data=body if body else None,
                headers=out_headers,
                allow_redirects=False,
            ) as response:
                content = await response.read()
                relayed = [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in response.headers.items()
                    if k.lower() not in HOP_BY_HOP
                ]
                relayed.append((b"content-length", str(len(content)).encode()))
                return Forwarded(response.status, relayed, content)
        except aiohttp.ClientConnectorError as exc:
            last_error = str(exc) or type(exc).__name__  # nothing sent: try another replica
        except aiohttp.ServerDisconnectedError as exc:
            if method not in ("GET", "HEAD", "OPTIONS"):
                raise NoReplica(str(exc) or "the replica closed the connection") from exc
            last_error = str(exc) or type(exc).__name__
    raise NoReplica(last_error)


def default_table() -> RouteTable:
    from config import get_settings
    from projects.runtime import runtime_dir

    return RouteTable(runtime_dir(get_settings()) / "routes")

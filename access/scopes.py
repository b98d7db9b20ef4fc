"""Scopes (``<group>:read`` / ``<group>:write`` and ``admin``) and the roles that cap them.

``write`` implies ``read``; a stored ``"*"`` is every scope (keys made before scopes existed,
and the keys of the service-account members they were migrated to).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

#: Every resource group a route can belong to (a router declares one).
GROUPS: tuple[str, ...] = (
    "jobs",
    "crawls",
    "inference",
    "deployments",
    "resources",
    "projects",
    "assistants",
    "rag",
    "billing",
    "alerts",
    "webhooks",
    "keys",
    "organizations",
)
ADMIN = "admin"
ALL = "*"
ALL_SCOPES: tuple[str, ...] = (
    *(f"{group}:{level}" for group in GROUPS for level in ("read", "write")),
    ADMIN,
)
ROLES: tuple[str, ...] = ("owner", "admin", "developer", "viewer")


def is_scope(scope: str) -> bool:
    return scope in ALL_SCOPES


def expand(scopes: Iterable[str]) -> frozenset[str]:
    """Stored scopes → every scope they grant (``*`` → all, ``x:write`` → also ``x:read``)."""
    out: set[str] = set()
    for scope in scopes:
        if scope == ALL:
            return frozenset(ALL_SCOPES)
        out.add(scope)
        if scope.endswith(":write"):
            out.add(scope[: -len("write")] + "read")
    return frozenset(out)


def _role_cap(role: str) -> frozenset[str]:
    if role in ("owner", "admin"):
        return frozenset(ALL_SCOPES)
    if role == "developer":
        return frozenset(ALL_SCOPES) - {"billing:write", "organizations:write", ADMIN}
    # viewer (and anything unknown): read only
    return frozenset(s for s in ALL_SCOPES if s.endswith(":read"))


@lru_cache(maxsize=4096)
def effective(key_scopes: tuple[str, ...], role: str) -> frozenset[str]:
    """What a key may do in an organisation: its own scopes capped by the member's role."""
    return expand(key_scopes) & _role_cap(role)


def minimal(scopes: Iterable[str]) -> list[str]:
    """A sorted, display form: ``x:read`` dropped where ``x:write`` is there."""
    granted = expand(scopes)
    return sorted(
        s for s in granted if not (s.endswith(":read") and s[: -len("read")] + "write" in granted)
    )


def for_method(group: str, method: str) -> str:
    """The scope a route of ``group`` needs: GET/HEAD/OPTIONS read, anything else write."""
    level = "read" if method.upper() in ("GET", "HEAD", "OPTIONS") else "write"
    return f"{group}:{level}"

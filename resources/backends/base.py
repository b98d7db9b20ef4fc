"""What every backend offers, and the plain data that passes between backends and the service.

A backend keeps two JSON objects per resource: ``state`` (where it lives: names, ports,
directories; safe to show) and ``secret`` (passwords, keys; stored only encrypted). Each call
takes a ``Handle`` of both and returns a new one when it changes them.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from resources.errors import NotSupported, OutsideWindow

# table (or redis db / blob key set) -> {"rows": n, "checksum": "..."}
Fingerprint = dict[str, dict[str, Any]]


@dataclass
class Handle:
    state: dict[str, Any]
    secret: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        env: dict[str, str] = self.secret.get("env", {})
        return env


@dataclass
class BackupResult:
    """A finished backup: where it is, how big, and what it must restore to."""

    location: str
    size_bytes: int
    fingerprint: Fingerprint
    method: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class VerifyResult:
    ok: bool
    expected: Fingerprint
    actual: Fingerprint
    mismatches: list[str]


@dataclass(frozen=True)
class Window:
    """The PITR window: from the earliest base backup's end to the last archived commit."""

    restorable_from: datetime
    restorable_until: datetime

    def contains(self, when: datetime) -> bool:
        return self.restorable_from <= when <= self.restorable_until

    def describe(self) -> str:
        return f"{self.restorable_from.isoformat()} .. {self.restorable_until.isoformat()}"

    def require(self, target: datetime) -> None:
        """Refuse a point-in-time target outside the window before any work starts, with the
        window in the message and the details."""
        if not self.contains(target):
            raise OutsideWindow(
                f"target_time {target.isoformat()} is outside the restorable window "
                f"{self.describe()}",
                details={
                    "restorable_from": self.restorable_from.isoformat(),
                    "restorable_until": self.restorable_until.isoformat(),
                },
            )


def compare_fingerprints(expected: Fingerprint, actual: Fingerprint) -> VerifyResult:
    mismatches = [
        f"{name}: expected {expected.get(name)}, got {actual.get(name)}"
        for name in sorted(set(expected) | set(actual))
        if expected.get(name) != actual.get(name)
    ]
    return VerifyResult(not mismatches, expected, actual, mismatches)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Backend(Protocol):
    """The operations of one resource type and tier. Unsupported ones raise NotSupported."""

    type: str
    tier: str

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle: ...

    def deprovision(self, handle: Handle) -> None: ...

    def rotate(self, handle: Handle) -> Handle: ...

    def backup(self, handle: Handle, backup_id: str) -> BackupResult: ...

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult: ...

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle: ...

    def branch(self, handle: Handle, ident: str) -> Handle: ...

    def metrics(self, handle: Handle) -> dict[str, Any]: ...

    # Point in time and archive health: dedicated postgres; NoPitr elsewhere.
    def window(self, handle: Handle, base_backups: list[BackupResult]) -> Window: ...

    def pitr(
        self, source: Handle, base_backups: list[BackupResult], target: datetime, ident: str
    ) -> Handle: ...

    def health(self, handle: Handle) -> dict[str, Any]: ...

    def heartbeat(self, handle: Handle) -> None: ...

    def prune_archive(self, handle: Handle, base_backups: list[BackupResult]) -> None: ...


class NoPitr:
    """Mixin for backends without point-in-time restore (everything but dedicated postgres)."""

    def window(self, handle: Handle, base_backups: list[BackupResult]) -> Window:
        raise NotSupported("point-in-time restore needs a dedicated postgres resource")

    def pitr(
        self, source: Handle, base_backups: list[BackupResult], target: datetime, ident: str
    ) -> Handle:
        raise NotSupported("point-in-time restore needs a dedicated postgres resource")

    def health(self, handle: Handle) -> dict[str, Any]:
        return {"status": "ok"}

    def heartbeat(self, handle: Handle) -> None:
        return None

    def prune_archive(self, handle: Handle, base_backups: list[BackupResult]) -> None:
        return None

"""Volumes on the local machine: a directory per resource with a size limit.

A plain directory has no kernel-enforced size (a loop-mounted filesystem would, but needs
CAP_SYS_ADMIN, which containers rarely grant), so the limit is enforced by a periodic check
(``resources.check_usage`` on beat): past the limit the volume is made read-only by taking
the write bits off every directory and file (their modes are saved beside the volume and put
back when usage is under the limit again or the limit is raised). Permission bits do not stop
a process running as root: apps writing to a volume must run as another user for this to hold.
On Kubernetes the PVC's storage request is the real limit. Backups are ``tar.gz`` files
fingerprinted per file.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

from resources.backends import files
from resources.backends.base import BackupResult, Handle, NoPitr, VerifyResult, compare_fingerprints
from resources.errors import NotSupported
from resources.settings import ResourceSettings

DEFAULT_LIMIT = 1 << 30


class Volume(NoPitr):
    type = "volume"
    tier = "shared"

    def __init__(self, settings: ResourceSettings) -> None:
        self.settings = settings

    def _create(self, ident: str, limit: int) -> Handle:
        path = (self.settings.volumes_dir / ident).resolve()
        path.mkdir(parents=True, mode=0o770)
        return Handle(
            state={"ident": ident, "path": str(path), "limit_bytes": limit},
            secret={"env": {"VOLUME_PATH": str(path)}},
        )

    def provision(self, ident: str, limits: dict[str, Any]) -> Handle:
        return self._create(ident, int(limits.get("size_bytes", DEFAULT_LIMIT)))

    def deprovision(self, handle: Handle) -> None:
        self.set_read_only(handle, False)
        shutil.rmtree(handle.state["path"], ignore_errors=True)

    # -- the size limit -------------------------------------------------------------------
    def apply_limits(self, handle: Handle, limits: dict[str, Any]) -> dict[str, Any]:
        """A new limit is recorded; the caller runs the usage check at once (lock/unlock)."""
        return {"limit_bytes": int(limits.get("size_bytes", handle.state["limit_bytes"]))}

    def usage_bytes(self, handle: Handle) -> int:
        total = 0
        for dirpath, _, names in os.walk(handle.state["path"]):
            for name in names:
                st = os.lstat(os.path.join(dirpath, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
        return total

    def _lock_file(self, handle: Handle) -> Path:
        return self.settings.volumes_dir.resolve() / f".{handle.state['ident']}.readonly.json"

    def is_read_only(self, handle: Handle) -> bool:
        return self._lock_file(handle).exists()

    def set_read_only(self, handle: Handle, read_only: bool) -> None:
        """Take the write bits off every directory and file (modes saved first), or put the
        saved modes back. Idempotent; entries made while read-only (by root) are locked too."""
        root, lock = Path(handle.state["path"]), self._lock_file(handle)
        saved: dict[str, int] = json.loads(lock.read_text()) if lock.exists() else {}
        if not read_only:
            for rel, mode in saved.items():
                path = root / rel
                if path.exists() and not path.is_symlink():
                    path.chmod(mode)
            lock.unlink(missing_ok=True)
            return
        if not root.exists():
            return
        entries = [root, *(p for p in root.rglob("*") if not p.is_symlink())]
        for path in entries:
            saved.setdefault(path.relative_to(root).as_posix(), stat.S_IMODE(path.lstat().st_mode))
        tmp = lock.with_suffix(".tmp")
        tmp.write_text(json.dumps(saved))
        tmp.replace(lock)  # saved before any mode changes: an interrupted lock can be undone
        for path in reversed(entries):  # children first: their directory is still writable
            mode = stat.S_IMODE(path.lstat().st_mode)
            path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))

    def rotate(self, handle: Handle) -> Handle:
        raise NotSupported("a volume has no credentials to rotate")

    def backup(self, handle: Handle, backup_id: str) -> BackupResult:
        root = Path(handle.state["path"])
        dest = self.settings.backups_dir / handle.state["ident"] / backup_id / "volume.tar.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        digests: list[tuple[str, str]] = []
        with tarfile.open(dest, "w:gz") as tar:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    name = path.relative_to(root).as_posix()
                    digests.append((name, files.file_digest(path)))
                    tar.add(path, arcname=name, recursive=False)
        return BackupResult(str(dest), dest.stat().st_size, files.fingerprint(digests), "tar")

    @staticmethod
    def _extract(archive: Path, into: Path) -> None:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(into, filter="data")

    def verify(self, handle: Handle, backup: BackupResult) -> VerifyResult:
        scratch = self.settings.volumes_dir.resolve() / f"scratch_{secrets.token_hex(6)}"
        scratch.mkdir(parents=True)
        try:
            self._extract(Path(backup.location), scratch)
            actual = files.tree_fingerprint(scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return compare_fingerprints(backup.fingerprint, actual)

    def restore(self, backup: BackupResult, source: Handle, ident: str) -> Handle:
        handle = self._create(ident, int(source.state["limit_bytes"]))
        self._extract(Path(backup.location), Path(handle.state["path"]))
        return handle

    def branch(self, handle: Handle, ident: str) -> Handle:
        new = self._create(ident, int(handle.state["limit_bytes"]))
        shutil.copytree(handle.state["path"], new.state["path"], dirs_exist_ok=True)
        lock = self._lock_file(handle)
        if lock.exists():  # copied read-only: the branch gets the modes the source had
            for rel, mode in json.loads(lock.read_text()).items():
                path = Path(new.state["path"]) / rel
                if path.exists() and not path.is_symlink():
                    path.chmod(mode)
        return new

    def metrics(self, handle: Handle) -> dict[str, Any]:
        used, limit = self.usage_bytes(handle), int(handle.state["limit_bytes"])
        return {
            "used_bytes": used,
            "limit_bytes": limit,
            "over_limit": used > limit,
            "read_only": self.is_read_only(handle),
        }

"""Volumes on the local machine: a directory per resource with a size limit.

The local tier cannot make the kernel enforce the limit on a plain directory, so it is
checked: ``metrics`` reports usage against it and ``over_limit`` (on Kubernetes the PVC's
storage request is the real limit). Backups are ``tar.gz`` files fingerprinted per file.
"""

from __future__ import annotations

import secrets
import shutil
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
        shutil.rmtree(handle.state["path"], ignore_errors=True)

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
        return new

    def metrics(self, handle: Handle) -> dict[str, Any]:
        used = sum(p.stat().st_size for p in Path(handle.state["path"]).rglob("*") if p.is_file())
        limit = int(handle.state["limit_bytes"])
        return {"used_bytes": used, "limit_bytes": limit, "over_limit": used > limit}

"""Running server binaries (pg_ctl, pg_dump, redis-server …) with clear errors.

When we are root, PostgreSQL binaries run as the configured OS user (``initdb`` and the
server refuse root); the error message carries the command name and its output's tail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from resources.errors import BackendError, MachineNotReady


def as_user(args: Sequence[str], user: str | None) -> list[str]:
    if user and os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *args]
    return list(args)


def run(
    args: Sequence[str],
    *,
    user: str | None = None,
    timeout: float | None = 600,
    ok_codes: tuple[int, ...] = (0,),
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            as_user(args, user),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"{Path(args[0]).name} timed out after {timeout}s") from exc
    if proc.returncode not in ok_codes:
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise BackendError(f"{Path(args[0]).name} failed (exit {proc.returncode}): {tail}")
    return proc


def chown_tree(path: Path, user: str) -> None:
    """Give ``path`` (recursively) to ``user`` when we are root, so its servers can write."""
    if os.geteuid() == 0:
        run(["chown", "-R", f"{user}:", str(path)])


def _can_enter(directory: Path, user: str) -> bool:
    return run(["test", "-x", str(directory)], user=user, ok_codes=(0, 1)).returncode == 0


def ensure_reachable(path: Path, user: str | None) -> None:
    """Let ``user`` (the OS user a server runs as) reach ``path``: when we are root, each parent
    directory it cannot enter (a data dir under ``/root``, mode 0700) gets a POSIX ACL entry
    ``u:<user>:x`` — search only, it still cannot list the directory. Raise
    :class:`MachineNotReady` naming the directory and the fix when that is not possible."""
    if not user or os.geteuid() != 0:
        return
    for directory in reversed(path.resolve().parents):
        if _can_enter(directory, user):
            continue
        if shutil.which("setfacl") is not None:
            subprocess.run(
                ["setfacl", "-m", f"u:{user}:x", str(directory)],
                capture_output=True,
                check=False,
            )
        if not _can_enter(directory, user):
            mode = oct(directory.stat().st_mode & 0o777)
            raise MachineNotReady(
                f"The OS user {user!r} that runs the resource's server cannot enter "
                f"{directory} (mode {mode}). Give it search access (`setfacl -m u:{user}:x "
                f"{directory}`, or `chmod o+x {directory}`), or set CONVEYOR_DATA_DIR to a "
                "directory it can reach."
            )

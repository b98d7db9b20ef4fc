"""Running server binaries (pg_ctl, pg_dump, redis-server …) with clear errors.

When we are root, PostgreSQL binaries run as the configured OS user (``initdb`` and the
server refuse root); the error message carries the command name and its output's tail.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from resources.errors import BackendError


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

"""Secrets at rest: one Fernet key ring from configured keys or, when none is configured, from a
key file created once (mode 0600) in the data directory.

The first key encrypts and every key decrypts (rotation). Processes that do not share the data
directory (several machines) must all be given the same configured keys.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet


def key_ring(configured: Sequence[str], key_file: Path) -> MultiFernet:
    """A key ring of the ``configured`` Fernet keys, or of ``key_file``'s key when none are."""
    keys = [k.strip() for k in configured if k.strip()] or [file_key(key_file)]
    return MultiFernet([Fernet(k.encode()) for k in keys])


def split_keys(value: str) -> list[str]:
    """The keys of a comma-separated setting."""
    return [k.strip() for k in value.split(",") if k.strip()]


def file_key(path: Path) -> str:
    """The key stored in ``path``, generated and written (0600) by the first process to ask."""
    if path.exists():
        return _read_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it first
        return _read_key(path)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def _read_key(path: Path) -> str:
    # Another process may have created the file a moment ago and not written it yet.
    for _ in range(50):
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.02)
    raise RuntimeError(f"key file {path} is empty")

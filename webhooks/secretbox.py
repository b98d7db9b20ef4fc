"""Webhook signing secrets at rest: Fernet-encrypted, decrypted only to sign a delivery.

Keys come from ``CONVEYOR_WEBHOOK_SECRETS_KEYS`` (comma-separated Fernet keys, the first
encrypts, all decrypt: rotation); when unset, a key file ``webhooks.key`` (mode 0600) in the data
directory is created once and used — processes that do not share the data directory (several
machines) must all be given the same ``CONVEYOR_WEBHOOK_SECRETS_KEYS``.
"""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, MultiFernet

from config import get_settings


def _read_key(path: Path) -> str:
    # Another process may have created the file a moment ago and not written it yet.
    for _ in range(50):
        key = path.read_text().strip()
        if key:
            return key
        time.sleep(0.02)
    raise RuntimeError(f"webhook key file {path} is empty")


def _key_file(path: Path) -> str:
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


@lru_cache(maxsize=1)
def _box() -> MultiFernet:
    settings = get_settings()
    configured = settings.webhook_secrets_keys.get_secret_value()
    keys = [k.strip() for k in configured.split(",") if k.strip()]
    if not keys:
        keys = [_key_file(settings.data_dir / "webhooks.key")]
    return MultiFernet([Fernet(k.encode()) for k in keys])


def encrypt(secret: str) -> str:
    return _box().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    return _box().decrypt(token.encode()).decode()


def reset() -> None:
    """Forget the cached keys (tests that change settings)."""
    _box.cache_clear()

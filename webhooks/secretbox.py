"""Webhook signing secrets at rest: Fernet-encrypted, decrypted only to sign a delivery.

Keys come from ``CONVEYOR_WEBHOOK_SECRETS_KEYS`` (comma-separated Fernet keys, the first
encrypts, all decrypt: rotation); when unset, a key file ``webhooks.key`` in the data directory
(``common.crypto.key_ring``).
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import MultiFernet

from common.crypto import key_ring, split_keys
from config import get_settings


@lru_cache(maxsize=1)
def _box() -> MultiFernet:
    settings = get_settings()
    configured = split_keys(settings.webhook_secrets_keys.get_secret_value())
    return key_ring(configured, settings.data_dir / "webhooks.key")


def encrypt(secret: str) -> str:
    return _box().encrypt(secret.encode()).decode()


def decrypt(token: str) -> str:
    return _box().decrypt(token.encode()).decode()


def reset() -> None:
    """Forget the cached keys (tests that change settings)."""
    _box.cache_clear()

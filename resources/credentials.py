"""Credentials at rest: Fernet encryption (with key rotation) and masking for display.

Secrets are JSON objects (connection strings, passwords, keys). They are stored only as
Fernet tokens and shown in full only by the credentials endpoint; everywhere else
(lists, logs, webhooks) they go through ``mask_url``/``mask_env``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from common.crypto import key_ring
from resources.settings import ResourceSettings

MASK = "****"
_SECRET_NAMES = re.compile(r"(PASSWORD|SECRET|TOKEN|KEY)(?!_ID)", re.IGNORECASE)


class CredentialBox:
    """Encrypts and decrypts secrets with the configured keys (the first key encrypts)."""

    def __init__(self, settings: ResourceSettings) -> None:
        self._fernet = key_ring(settings.credentials_keys, settings.data_dir / "credentials.key")

    def encrypt(self, secret: dict[str, Any]) -> str:
        return self._fernet.encrypt(json.dumps(secret, sort_keys=True).encode()).decode()

    def decrypt(self, token: str) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self._fernet.decrypt(token.encode()))
        return value

    def reencrypt(self, token: str) -> str:
        """Re-encrypt under the current first key (after a key rotation)."""
        return self._fernet.rotate(token.encode()).decode()


def mask_url(url: str) -> str:
    """``postgresql://u:pw@host:5432/db`` → ``postgresql://u:****@host:5432/db``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username}:{MASK}" if parts.username else f":{MASK}"
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, f"{userinfo}@{host}", parts.path, parts.query, ""))


def mask_env(env: dict[str, str]) -> dict[str, str]:
    """Mask URL passwords and every value whose name says it is a secret."""
    masked: dict[str, str] = {}
    for name, value in env.items():
        if "://" in value:
            masked[name] = mask_url(value)
        elif _SECRET_NAMES.search(name):
            masked[name] = MASK
        else:
            masked[name] = value
    return masked

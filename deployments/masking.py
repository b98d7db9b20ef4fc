"""Mask secrets in text shown to users (deployment logs, failure reasons)."""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "****"

# Token shapes that are secret whatever deployment printed them.
_PATTERNS = [
    re.compile(r"\b(sk|rk|pk)[-_][A-Za-z0-9_\-]{12,}"),
    re.compile(r"\bhf_[A-Za-z0-9]{16,}"),
    re.compile(r"\bwhsec_[A-Za-z0-9+/=]{16,}"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-+/=]{8,}"),
    re.compile(
        r"(?i)\b([A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY)[A-Z0-9_]*\s*[=:]\s*)"
        r"(\"[^\"]*\"|'[^']*'|\S+)"
    ),
    re.compile(r"(://[^/\s:@]+:)([^@\s/]+)(@)"),
]


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace known secret values and secret-looking tokens with `****`."""
    for value in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(value, MASK)
    for pattern in _PATTERNS:
        if pattern.groups == 0:
            text = pattern.sub(MASK, text)
        elif pattern.groups == 1 or pattern.groups == 2:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        else:
            text = pattern.sub(lambda m: m.group(1) + MASK + m.group(3), text)
    return text

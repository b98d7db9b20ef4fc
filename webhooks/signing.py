"""Standard Webhooks signatures (https://www.standardwebhooks.com/) for senders and receivers.

A secret is ``whsec_`` + base64 of 24 random bytes. Every delivery carries three headers:
``webhook-id`` (the message id, the same on every retry), ``webhook-timestamp`` (Unix seconds)
and ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``).
The HMAC itself comes from the reference ``standardwebhooks`` library, so what Conveyor signs is
exactly what every Standard Webhooks receiver library (``standardwebhooks.Webhook.verify``, svix)
accepts; :func:`verify` is the same check, hardened against malformed headers.

Receivers can use :func:`verify` directly::

    from webhooks.signing import verify, WebhookVerificationFailed
    event = verify(secret, request.headers, raw_body)   # raises on a bad signature
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
DEFAULT_TOLERANCE_SECONDS = 300

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "SECRET_PREFIX",
    "WebhookVerificationFailed",
    "generate_secret",
    "is_valid_secret",
    "sign",
    "signature_headers",
    "verify",
]


class WebhookVerificationFailed(Exception):
    """The webhook's headers or signature did not verify; the message must be rejected."""


def generate_secret() -> str:
    """A fresh signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def is_valid_secret(secret: str) -> bool:
    """True when ``secret`` is ``whsec_`` + standard base64 of 24 to 64 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return False
    try:
        raw = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        return False
    return 24 <= len(raw) <= 64


def _webhook(secret: str) -> Webhook:
    if not is_valid_secret(secret):
        raise ValueError("webhook secret must be 'whsec_' followed by base64 of 24-64 bytes")
    return Webhook(secret)


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``v1,<base64 HMAC-SHA256>``."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return _webhook(secret).sign(msg_id, moment, body.decode("utf-8"))


def signature_headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers (plus the content type) for one delivery."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: int | None = None,
) -> Any:
    """Check a received webhook and return its parsed JSON payload.

    ``headers`` is any case-insensitive or lower/upper-case mapping of the request headers and
    ``body`` the raw request body, byte for byte as received (not re-serialised JSON).
    Raises :class:`WebhookVerificationFailed` when a header is missing, the timestamp is further
    than ``tolerance_seconds`` from ``now`` (replay protection), or no ``v1`` signature matches.
    Several space-separated signatures are accepted, as during a secret rotation.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    ts_text = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not (msg_id and ts_text and signatures):
        raise WebhookVerificationFailed("missing webhook-id, webhook-timestamp or signature")
    try:
        timestamp = int(ts_text)
    except ValueError:
        raise WebhookVerificationFailed("webhook-timestamp is not an integer") from None
    current = int(datetime.now(tz=UTC).timestamp()) if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationFailed("webhook-timestamp outside the tolerance window")
    raw = body.encode("utf-8") if isinstance(body, str) else body
    try:
        expected = sign(secret, msg_id, timestamp, raw).partition(",")[2].encode("ascii")
    except UnicodeDecodeError:
        raise WebhookVerificationFailed("body is not UTF-8") from None
    # Several space-separated signatures may be sent (secret rotation); malformed or non-v1
    # entries are skipped, never fatal. compare_digest keeps the check constant-time.
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode("utf-8"), expected):
            try:
                return json.loads(raw)
            except ValueError:
                raise WebhookVerificationFailed("body is not JSON") from None
    raise WebhookVerificationFailed("no matching v1 signature")

"""Worker-side work of the access domain: the audit log's retention."""

from __future__ import annotations

from access import audit
from config import get_settings
from store.db import session_scope


def purge_audit_log() -> int:
    """Delete audit records older than ``audit_retention_days`` (400), in batches."""
    days = get_settings().audit_retention_days
    total = 0
    while True:
        with session_scope() as session:
            count = audit.purge(session, days)
        total += count
        if count == 0:
            return total

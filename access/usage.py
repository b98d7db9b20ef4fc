"""Key usage off the request path: ``last_used_at`` (at most once a minute per key) and the
first use of a key from a new address (an audit record).

A request only touches an in-process dict (``note``); a daemon thread of each API process
writes what gathered every ``key_usage_flush_seconds`` in one transaction, after a Redis
``SET NX EX 60`` per key so that several API processes still write a key at most once a minute.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from sqlalchemy import Table, bindparam, update

from access import audit
from access.audit import RequestInfo
from common import redis_clients
from common.timeutil import utcnow
from config import get_settings
from store.db import session_scope
from store.models import ApiKey

log = logging.getLogger(__name__)

THROTTLE_SECONDS = 60
_MAX_SEEN = 100_000


@dataclass(frozen=True)
class _Use:
    key_id: str
    org_id: str
    member_id: str
    info: RequestInfo


class UsageRecorder:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._marked: dict[str, float] = {}  # key id → when its last use was queued
        self._seen: set[tuple[str, str]] = set()  # (key id, ip) known in this process
        self._used: dict[str, _Use] = {}
        self._addresses: dict[tuple[str, str], _Use] = {}
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()

    def note(self, key_id: str, org_id: str, member_id: str, info: RequestInfo) -> None:
        """Called on every authenticated request: dict lookups, no I/O."""
        now = time.monotonic()
        last = self._marked.get(key_id)
        fresh_use = last is None or now - last >= THROTTLE_SECONDS
        address = (key_id, info.ip or "")
        new_address = bool(info.ip) and address not in self._seen
        if not fresh_use and not new_address:
            return
        use = _Use(key_id, org_id, member_id, info)
        with self._lock:
            if fresh_use:
                self._marked[key_id] = now
                self._used[key_id] = use
            if new_address:
                if len(self._seen) >= _MAX_SEEN:
                    self._seen.clear()
                self._seen.add(address)
                self._addresses[address] = use
        self._start()

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._run, name="key-usage", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = get_settings().key_usage_flush_seconds
        while True:
            self._wake.wait(interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # the store down: this round's marks are dropped
                log.warning("writing key usage failed: %s", exc)

    def flush(self) -> int:
        """Write what gathered; the number of keys whose ``last_used_at`` was written."""
        with self._lock:
            used, self._used = self._used, {}
            addresses, self._addresses = self._addresses, {}
        if not used and not addresses:
            return 0
        due = [u for u in used.values() if _claim(u.key_id)]
        now = utcnow()
        with session_scope() as session:
            if due:
                table = ApiKey.__table__
                assert isinstance(table, Table)
                stmt = (
                    update(table)
                    .where(table.c.id == bindparam("kid"))
                    .values(last_used_at=bindparam("ts"))
                )
                session.connection().execute(stmt, [{"kid": u.key_id, "ts": now} for u in due])
            for use in addresses.values():
                audit.note_address(
                    session,
                    key_id=use.key_id,
                    org_id=use.org_id,
                    member_id=use.member_id,
                    info=use.info,
                )
        return len(due)


def _claim(key_id: str) -> bool:
    """Whether this process may write the key's last use now (once a minute across processes;
    Redis unreachable: yes)."""
    try:
        return bool(
            redis_clients.client().set(
                f"conveyor:key-used:{key_id}", "1", nx=True, ex=THROTTLE_SECONDS
            )
        )
    except Exception:
        return True


RECORDER = UsageRecorder()

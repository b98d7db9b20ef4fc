"""Beat's scheduler: celery-redbeat's, made to ride out a Redis blip.

redbeat 2.4.2 lets a ``redis.ConnectionError`` escape ``tick()``, which ends beat's loop (the
process exits), and a restarted beat then waits for its predecessor's lock to lapse. Here a tick
that cannot reach Redis logs one line and tries again a second later; a lock that lapsed (Redis
came back without it, or the lock expired meanwhile) is re-acquired without blocking, and while
another beat holds it this one stands by. The lock lives ``redbeat_lock_timeout`` seconds
(``CONVEYOR_BEAT_LOCK_TIMEOUT``, default 20 s: four ticks of ``beat_max_loop_interval``, 5 s),
so a beat that died is replaced within that time.
"""

from __future__ import annotations

from typing import Any

from celery.utils.log import get_logger
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis import exceptions as redis_errors

from config.queues import BEAT_SEND_ONLY_IF, resolve

logger = get_logger("celery.beat")

#: Redis errors that mean "not reachable now" (a restart, a failover, an AOF being loaded).
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis_errors.ConnectionError,  # BusyLoadingError is one
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
)


class ResilientRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """``RedBeatScheduler`` whose tick survives Redis outages and re-acquires its lock."""

    #: Seconds between ticks while Redis does not answer.
    retry_interval = 1.0

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            if self.lock_key and not self._holds_lock():
                return float(self.max_interval)  # another beat schedules; stand by
            return float(super().tick(*args, **kwargs))  # extends the lock, sends due tasks
        except redis_errors.LockError as exc:  # the extend found the lock gone or taken
            logger.warning("beat: lost the lock %s (%s); re-acquiring", self.lock_key, exc)
            self._forget_lock()
            return self.retry_interval
        except REDIS_UNAVAILABLE as exc:
            logger.warning(
                "beat: Redis unavailable (%s: %s); retrying in %.0f s",
                type(exc).__name__,
                exc,
                self.retry_interval,
            )
            return self.retry_interval

    def apply_async(
        self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any
    ) -> Any:
        """Send a due entry, unless its ``BEAT_SEND_ONLY_IF`` check says there is nothing to
        do (then only its schedule advances)."""
        check = BEAT_SEND_ONLY_IF.get(entry.name)
        if check is not None:
            try:
                needed = bool(resolve(check)())
            except Exception as exc:  # cannot tell: send it
                logger.warning("beat: check %s failed (%s); sending %s", check, exc, entry.name)
                needed = True
            if not needed:
                logger.info("beat: %s not sent: nothing to do (%s)", entry.name, check)
                if advance:
                    self.reserve(entry)
                return None
        return super().apply_async(entry, producer, advance, **kwargs)

    def _holds_lock(self) -> bool:
        """Whether this beat holds the lock, taking it if it is free (never blocking)."""
        lock: Any = getattr(self, "lock", None)
        if lock is not None and lock.local.token is not None:
            return True  # tick's extend checks that it is still ours
        if lock is None:  # beat_init could not take it (Redis was down when beat started)
            client = get_redis(self.app)
            lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
            lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
            self.lock = lock
        if lock.acquire(blocking=False):
            logger.info("beat: Acquired lock")
            return True
        logger.debug("beat: lock %s is held by another beat; standing by", self.lock_key)
        return False

    def _forget_lock(self) -> None:
        lock: Any = getattr(self, "lock", None)
        if lock is not None:
            lock.local.token = None

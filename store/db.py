"""Engine and session factory (one engine per process), and the transaction scope helper."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.retry import RetryPolicy
from config import get_settings

log = logging.getLogger(__name__)
T = TypeVar("T")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


#: A pooled connection used this recently is handed out without a liveness ping (HikariCP's
#: ``aliveBypassWindowMs`` idea): under load no checkout pays a round trip, while one that sat
#: idle (a PostgreSQL restart, a dropped TCP connection) is pinged and replaced if dead.
PING_BYPASS_SECONDS = 1.0


def _ping_when_idle(engine: Engine) -> None:
    """Pessimistic disconnect handling without a ping on every checkout."""

    @event.listens_for(engine, "checkin")
    def _stamp(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_BYPASS_SECONDS:
            return  # new, or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool discards it and connects afresh
            raise DisconnectionError("stale pooled connection") from exc


def _create_engine(**options: Any) -> Engine:
    settings = get_settings()
    url = settings.resolved_database_url()
    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **options
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_recycle=1800,
        **options,
    )
    _ping_when_idle(engine)
    return engine


@lru_cache(maxsize=1)
def get_engine() -> Engine:
    """The process's engine: sessions and transactions."""
    return _create_engine()


@lru_cache(maxsize=1)
def get_autocommit_engine() -> Engine:
    """A second pool whose connections are in autocommit mode from the start, for work that is
    one atomic statement: no BEGIN/COMMIT round trips and no isolation-level switching on
    every checkout (which an ``execution_options`` proxy of the main engine would pay)."""
    return _create_engine(isolation_level="AUTOCOMMIT")


@lru_cache(maxsize=1)
def get_relaxed_autocommit_engine() -> Engine:
    """PostgreSQL: an autocommit pool whose commits return before their WAL reaches the disk
    (``synchronous_commit = off`` on each of its connections): for a statement whose loss in a
    database crash is recovered anyway and whose effect the next durable commit of the same
    job flushes (a job's start; see :func:`autocommit`). Elsewhere: the autocommit pool."""
    if get_settings().resolved_database_url().startswith("sqlite"):
        return get_autocommit_engine()
    engine = _create_engine(isolation_level="AUTOCOMMIT")

    @event.listens_for(engine, "connect")
    def _relax(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("SET synchronous_commit = off")
        if not dbapi_connection.autocommit:  # a session setting: it outlives this transaction
            dbapi_connection.commit()

    return engine


def is_postgresql() -> bool:
    return get_engine().dialect.name == "postgresql"


@lru_cache(maxsize=1)
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


def reset_engine() -> None:
    """Forget the engines (tests and forked worker children call this)."""
    for factory in (get_engine, get_autocommit_engine, get_relaxed_autocommit_engine):
        if factory.cache_info().currsize:
            factory().dispose(close=False)
        factory.cache_clear()
    get_sessionmaker.cache_clear()


def retry_on_disconnect(work: Callable[[], T], *, attempts: int = 2) -> T:
    """Run ``work`` (which opens its own connection) again when its connection turned out to
    be dead (a PostgreSQL restart inside the ping bypass window): SQLAlchemy has then already
    invalidated the pool, so the next try connects afresh. Only for work that is safe to
    repeat, such as one compare-and-set statement."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DBAPIError as exc:
            if not exc.connection_invalidated or attempt == attempts:
                raise
            log.warning("database connection lost; retrying once on a new connection")
    raise AssertionError("unreachable")


@contextmanager
def autocommit(*, durable: bool = True) -> Iterator[Connection]:
    """A connection whose every statement commits on its own: for work that is one atomic
    statement (a compare-and-set ``UPDATE … RETURNING``). Never use it for several statements
    that must succeed or fail together.

    ``durable=False``: the commit does not wait for the disk flush (one fewer flush per job on
    the job path). Only for a statement that a database crash may undo without harm, because
    what follows recovers it: a job's start is flushed by its completion's durable commit (the
    write-ahead log is flushed in order), and a start lost in a crash leaves the job ``queued``,
    so its fenced completion loses and the sweeper runs it again, as after a worker's death."""
    factory = get_autocommit_engine if durable else get_relaxed_autocommit_engine
    with factory().connect() as connection:
        yield connection


@contextmanager
def transaction() -> Iterator[Connection]:
    """A Core connection in one transaction, committed when the block ends (rolled back on an
    error): several statements that must succeed or fail together, without a Session's cost."""
    with get_engine().begin() as connection:
        yield connection


@contextmanager
def read_session() -> Iterator[Session]:
    """A session for reads on the autocommit pool: each query runs alone, with no BEGIN or
    COMMIT round trip (the polling hot path). Nothing written through it is transactional."""
    session = Session(bind=get_autocommit_engine(), expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()


@contextmanager
def session_scope() -> Iterator[Session]:
    """One transaction: commits when the block succeeds, rolls back when it raises."""
    session = get_sessionmaker()()
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
    else:
        session.commit()  # an outbox send refused after the commit raises from here
    finally:
        session.close()


#: What the store raises when it cannot be reached (refused, restarting, connection dropped).
def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` means the store could not be reached, not that a statement was wrong:
    a reason to answer 503 or retry later, never to fail a job."""
    if isinstance(exc, DisconnectionError | InterfaceError | OperationalError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def store_reachable() -> bool:
    """One quick round trip to the store on a pooled connection (pinged first)."""
    try:
        with get_autocommit_engine().connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True
    except Exception as exc:
        if is_unreachable(exc):
            return False
        raise


@dataclass(frozen=True)
class StoreRetry:
    """Retrying a write that must reach the store (a job's completion): while the store cannot
    be reached, try again after 0.5, 1, 2, 4, 5, 5 … s (``policy``) for at most
    ``give_up_after`` seconds, then let the error through (the job's lease then lapses and the
    job is re-queued: its outcome is never recorded twice)."""

    policy: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(attempts=None, base=0.5, factor=2.0, cap=5.0)
    )
    give_up_after: float = 60.0

    def call(self, work: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.give_up_after
        attempt = 0
        while True:
            attempt += 1
            try:
                return work()
            except Exception as exc:
                decision = self.policy.next(attempt, retryable=is_unreachable(exc))
                if decision.delay is None or time.monotonic() + decision.delay > deadline:
                    raise
                log.warning(
                    "the store is unreachable (%s); trying again in %.1f s", exc, decision.delay
                )
                time.sleep(decision.delay)


store_retry = StoreRetry()

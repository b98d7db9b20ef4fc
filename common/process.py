"""Per-process shared resources (a browser, an HTTP client, a model, a backend): one pattern.

A ``ProcessResource`` holds at most one value per process. Nothing is created on import: the
worker's start-up hook (``workers.lifecycle``) calls ``start()`` for the resources its queues
use, a task borrows the value with ``get()`` (created then if the hook did not run: a direct
call, a test), and the shutdown hook closes every resource this process opened
(``close_all()``). A forked child never reuses its parent's value.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_opened: list[ProcessResource[Any]] = []  # opened in this process, oldest first
_opened_lock = threading.Lock()


class ProcessResource(Generic[T]):
    def __init__(self, name: str, create: Callable[[], T], close: Callable[[T], None]) -> None:
        self.name = name
        self._create = create
        self._close = close
        self._value: T | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def get(self) -> T:
        """This process's value, created on first use."""
        with self._lock:
            if self._value is None or self._pid != os.getpid():
                self._set(self._create())
            assert self._value is not None
            return self._value

    start = get  # the name lifecycle hooks use

    def install(self, value: T) -> None:
        """Make ``value`` this process's (tests share one browser this way)."""
        with self._lock:
            self._set(value)

    def close(self) -> None:
        """Close and forget this process's value (a parent's value is only forgotten)."""
        with self._lock:
            value, mine = self._value, self._pid == os.getpid()
            self._value = None
        if value is not None and mine:
            self._close(value)

    @property
    def opened(self) -> bool:
        return self._value is not None and self._pid == os.getpid()

    def _set(self, value: T) -> None:
        self._value, self._pid = value, os.getpid()
        with _opened_lock:
            if self not in _opened:
                _opened.append(self)


def close_all() -> None:
    """Close every resource this process opened, newest first (shutdown hooks)."""
    with _opened_lock:
        resources = list(reversed(_opened))
        _opened.clear()
    for resource in resources:
        try:
            resource.close()
        except Exception:  # one failing close must not keep the others open
            log.exception("closing %s failed", resource.name)

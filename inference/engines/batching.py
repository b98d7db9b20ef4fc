"""Batching helpers shared by the engines that run a model on their own thread: requests come
from the event loop through a queue (``None`` asks the thread to stop) and are taken in batches.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def collect(
    requests: queue.Queue[T | None],
    first: T,
    *,
    size: Callable[[T], int],
    capacity: int,
    wait_s: float,
) -> tuple[list[T], bool]:
    """``first`` and the requests arriving within ``wait_s`` while the batch holds fewer than
    ``capacity`` (counted by ``size``); True when the stop marker came (after this batch)."""
    batch = [first]
    held = size(first)
    deadline = time.monotonic() + wait_s
    while held < capacity:
        timeout = deadline - time.monotonic()
        try:
            item = requests.get(timeout=timeout) if timeout > 0 else requests.get_nowait()
        except queue.Empty:
            break
        if item is None:
            return batch, True
        batch.append(item)
        held += size(item)
    return batch, False


async def stop(requests: queue.Queue[T | None], thread: threading.Thread | None) -> None:
    """Ask the engine thread to stop after what it holds, and wait for it (off the loop)."""
    if thread is not None:
        requests.put(None)
        await asyncio.to_thread(thread.join)

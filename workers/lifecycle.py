"""A worker process's lifecycle: the hooks that create its shared resources and close them.

Before forking each prefork child the parent freezes its heap (``gc.freeze``), so the children
keep sharing its pages. On start (a prefork child's ``worker_process_init``; for a threads or
solo pool, whose tasks run in the main process, ``worker_ready``) each queue the worker
consumes starts the resources its tasks borrow (``RESOURCES``); on shutdown every resource the
process opened is closed (``common.process.close_all``) and so are its Redis clients. Tasks
never create them on import."""

from __future__ import annotations

import gc
import importlib
import logging
from typing import Any

from celery import current_app
from celery.signals import (
    worker_before_create_process,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from celery.signals import worker_shutdown as worker_main_shutdown

from common import process, redis_clients
from config.queues import CRAWL, DEPLOY, INFERENCE, INGEST, WEBHOOKS

log = logging.getLogger(__name__)

#: queue → the ``module:attribute`` of each ``ProcessResource`` its tasks borrow.
RESOURCES: dict[str, tuple[str, ...]] = {
    CRAWL: ("crawler.runtime:RUNTIME",),
    DEPLOY: ("deployments.runtime:BACKEND",),
    WEBHOOKS: ("webhooks.client:HTTP_CLIENT",),
    INFERENCE: ("inference.worker:RUNTIME",),
    INGEST: ("rag.embedder:EMBEDDER",),
}


def _resource(path: str) -> process.ProcessResource[Any]:
    module, _, name = path.partition(":")
    found: process.ProcessResource[Any] = getattr(importlib.import_module(module), name)
    return found


def consumed_queues() -> set[str]:
    """The queues this worker consumes (``-Q``; every queue when none was named)."""
    queues = current_app.amqp.queues  # the Conveyor app: it is created as the current one
    return set(queues.consume_from or queues)


def start_resources(queues: set[str], *, models: bool) -> None:
    """Start the resources of ``queues``. Models (``inference``) load only in a worker that
    serves nothing else and runs its tasks in this process (CUDA starts where it is used)."""
    for queue in sorted(queues):
        if queue == INFERENCE and not (models and queues == {INFERENCE}):
            continue  # loaded by the first inference job instead
        for path in RESOURCES.get(queue, ()):
            _resource(path).start()


@worker_before_create_process.connect
def _freeze_heap(**_: Any) -> None:
    """In the parent, before each pool child is forked: move every object it holds to the
    collector's permanent generation, so that the children's collections never write to (and
    so copy) the pages they share with the parent: less memory per child."""
    gc.freeze()


@worker_process_init.connect
def _start_child(**_: Any) -> None:
    """A forked pool child: fresh database connections, then its queues' resources."""
    from store.db import reset_engine

    reset_engine()
    start_resources(consumed_queues(), models=False)


@worker_ready.connect
def _start_in_process_pool(sender: Any = None, **_: Any) -> None:
    """Threads and solo pools run tasks in the main process: start the resources there."""
    pool_module = type(getattr(sender, "pool", None)).__module__
    if pool_module.endswith((".thread", ".solo")):
        start_resources(consumed_queues(), models=True)


@worker_process_shutdown.connect
@worker_main_shutdown.connect
def _close(**_: Any) -> None:
    process.close_all()
    redis_clients.close_clients()

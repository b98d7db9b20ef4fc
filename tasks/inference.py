"""Inference jobs: ``inference.run`` on the ``inference`` queue.

Thin task: the work (this process's engine loop, usage) is ``inference.jobs``. The worker
should run the threads pool (``-P threads -c 32``) so many requests batch in one engine.
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_ready, worker_shutdown

from inference.jobs import close_models, load_models, run_inference
from jobs.context import JobContext
from tasks.runner import job_task


@job_task("inference")
def inference(ctx: JobContext) -> dict[str, Any] | None:
    """Run a chat/completion/embedding request or a batch on this process's engines."""
    return run_inference(ctx)


@worker_ready.connect
def _load_models_at_start(sender: Any = None, **_: Any) -> None:
    """Load the models when an inference worker starts (threads/solo pool: the process that
    runs the tasks). A prefork parent never loads them: CUDA must start in the child only, so
    prefork children load lazily on their first task."""
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    pool_module = type(getattr(sender, "pool", None)).__module__
    if queues == {"inference"} and pool_module.endswith((".thread", ".solo")):
        load_models()


@worker_shutdown.connect
def _close_models(**_: Any) -> None:
    close_models()

"""Inference jobs: ``inference.run`` on the ``inference`` queue.

Thin task: the work (this process's engine loop, usage) is ``inference.jobs``; the engines are
``inference.worker.RUNTIME``, loaded and closed by ``workers.lifecycle``. The worker should run
the threads pool (``-P threads -c 32``) so many requests batch in one engine.
"""

from __future__ import annotations

from typing import Any

from inference.jobs import run_inference
from jobs.context import JobContext
from tasks.runner import job_task


@job_task("inference")
def inference(ctx: JobContext) -> dict[str, Any] | None:
    """Run a chat/completion/embedding request or a batch on this process's engines."""
    return run_inference(ctx)

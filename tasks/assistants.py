"""Assistant replies: ``assistant.run`` on the ``inference`` queue.

Thin task: the work (history, context window, the inference path, the stored reply) is
``assistants.jobs``; it runs on the inference worker's engines (``inference.worker.RUNTIME``).
"""

from __future__ import annotations

from typing import Any

from assistants.jobs import run_reply
from jobs.context import JobContext
from tasks.runner import job_task


@job_task("assistant")
def assistant(ctx: JobContext) -> dict[str, Any]:
    """Answer a conversation's last message with the instance's model; the result is the reply."""
    return run_reply(ctx)

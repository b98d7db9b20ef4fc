"""The inference job's work: run one request (or a batch) on this process's engines
(``inference.worker.RUNTIME``) and record the organisation's usage."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from inference.schemas import InferenceJobInput
from inference.service import Meter
from inference.worker import RUNTIME, JobWasCancelled, execute
from jobs.context import JobCancelled, JobContext
from store.db import session_scope


def usage_recorder(org_id: str) -> Callable[[Meter, float], None]:
    """Per-organisation usage counters for quotas (engine seconds count as GPU seconds)."""

    def record(meter: Meter, seconds: float) -> None:
        from plans.service import record_usage as add

        with session_scope() as session:
            add(session, org_id, "gpu_seconds", math.ceil(seconds))
            add(session, org_id, "inference_prompt_tokens", meter.prompt_tokens)
            add(session, org_id, "inference_completion_tokens", meter.completion_tokens)

    return record


def run_inference(ctx: JobContext) -> dict[str, Any] | None:
    """Run a chat/completion/embedding request or a batch on this process's engines."""
    runtime = RUNTIME.get()
    payload = InferenceJobInput.model_validate(ctx.input)
    try:
        outcome = runtime.run(
            execute(runtime, ctx.job_id, payload, ctx, usage_recorder(ctx.org_id))
        )
    except JobWasCancelled as exc:
        raise JobCancelled(ctx.job_id) from exc
    return outcome.result

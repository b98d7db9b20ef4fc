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
from store.db import autocommit


def usage_recorder(ctx: JobContext) -> Callable[[Meter, float], None]:
    """Per-organisation usage counters for quotas (engine seconds count as GPU seconds), and the
    job's own usage counters (``usage_*`` in its progress, written with its final transition),
    from which ``billing.metering`` meters tokens and GPU seconds exactly once.

    The quota counters are one statement on a connection whose commit does not wait for the
    disk: the organisation's counter rows are locked only while it runs (32 requests finishing
    together no longer queue on them for a disk flush each), and the job's completion, a
    durable commit right after it, flushes it to disk with its own (the log is flushed in
    order)."""

    def record(meter: Meter, seconds: float) -> None:
        from plans.service import record_usages

        amounts = {
            "gpu_seconds": math.ceil(seconds),
            "inference_prompt_tokens": meter.prompt_tokens,
            "inference_completion_tokens": meter.completion_tokens,
        }
        with autocommit(durable=False) as connection:
            record_usages(connection, ctx.org_id, amounts)
        ctx.final_progress(
            usage_prompt_tokens=meter.prompt_tokens,
            usage_completion_tokens=meter.completion_tokens,
            usage_engine_seconds=math.ceil(seconds),
        )

    return record


def run_inference(ctx: JobContext) -> dict[str, Any] | None:
    """Run a chat/completion/embedding request or a batch on this process's engines."""
    runtime = RUNTIME.get()
    payload = InferenceJobInput.model_validate(ctx.input)
    try:
        outcome = runtime.run(execute(runtime, ctx.job_id, payload, ctx, usage_recorder(ctx)))
    except JobWasCancelled as exc:
        raise JobCancelled(ctx.job_id) from exc
    return outcome.result

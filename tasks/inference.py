"""Inference jobs: ``inference.run`` on the ``inference`` queue.

Thin task: the handler hands the job to the worker process's engine loop
(``inference.worker``), records usage for the organisation and returns the result. The worker
should run the threads pool (``-P threads -c 32``) so many requests batch in one engine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from config import get_settings
from inference.engines import EngineOptions
from inference.registry import configured_models
from inference.schemas import InferenceJobInput
from inference.service import Meter
from inference.worker import InferenceRuntime, JobWasCancelled, close_runtime, execute, get_runtime
from store.db import session_scope
from tasks.runner import JobCancelled, JobContext, job_task


def build_runtime() -> InferenceRuntime:
    settings = get_settings()
    specs = configured_models(
        settings.models, default_embedding=settings.inference_default_embedding
    )
    options = EngineOptions(
        engine=settings.inference_engine,  # type: ignore[arg-type]
        device=settings.inference_device,
        max_batch_size=settings.inference_max_batch_size,
        batch_wait_ms=settings.inference_batch_wait_ms,
        default_max_tokens=settings.inference_default_max_tokens,
        tensor_parallel_size=settings.inference_tensor_parallel_size,
    )
    return InferenceRuntime(specs, options, settings.resolved_redis_url())


def usage_recorder(org_id: str) -> Callable[[Meter, float], None]:
    """Per-organisation usage counters for quotas (engine seconds count as GPU seconds)."""

    def record(meter: Meter, seconds: float) -> None:
        from plans.service import record_usage as add

        with session_scope() as session:
            add(session, org_id, "gpu_seconds", math.ceil(seconds))
            add(session, org_id, "inference_prompt_tokens", meter.prompt_tokens)
            add(session, org_id, "inference_completion_tokens", meter.completion_tokens)

    return record


@job_task("inference")
def inference(ctx: JobContext) -> dict[str, Any] | None:
    """Run a chat/completion/embedding request or a batch on this process's engines."""
    runtime = get_runtime(build_runtime)
    payload = InferenceJobInput.model_validate(ctx.input)
    try:
        outcome = runtime.run(
            execute(runtime, ctx.job_id, payload, ctx, usage_recorder(ctx.org_id))
        )
    except JobWasCancelled as exc:
        raise JobCancelled(ctx.job_id) from exc
    return outcome.result


@worker_ready.connect
def _load_models_at_start(sender: Any = None, **_: Any) -> None:
    """Load the models when an inference worker starts (threads/solo pool: the process that
    runs the tasks). A prefork parent never loads them: CUDA must start in the child only, so
    prefork children load lazily on their first task."""
    queues = {q.name for q in getattr(getattr(sender, "task_consumer", None), "queues", [])}
    pool_module = type(getattr(sender, "pool", None)).__module__
    if queues == {"inference"} and pool_module.endswith((".thread", ".solo")):
        get_runtime(build_runtime)


@worker_shutdown.connect
def _close_models(**_: Any) -> None:
    close_runtime()

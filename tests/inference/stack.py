"""Start the inference stack (API + worker subprocesses) against the test session's services."""

from __future__ import annotations

import os
from pathlib import Path

from inference.relay import MODELS_KEY
from inference.testing import Stack, build_tiny_model

__all__ = ["Stack", "start_stack"]


def start_stack(model_root: Path) -> Stack:
    tiny = build_tiny_model(model_root / "tiny")
    slow = build_tiny_model(
        model_root / "slow", layers=6, hidden=256, heads=4, context_length=1024, seed=1
    )
    import redis

    redis.Redis.from_url(os.environ["CONVEYOR_BROKER_URL"]).delete(MODELS_KEY)
    env = {
        **os.environ,
        "CONVEYOR_MODELS": f"tiny={tiny},slow={slow}",
        "CONVEYOR_INFERENCE_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    stack = Stack(env, concurrency=16, log_dir=model_root / "logs")
    try:
        stack.wait_ready(["tiny", "slow", "all-MiniLM-L6-v2"])
    except BaseException:
        stack.stop()
        raise
    return stack

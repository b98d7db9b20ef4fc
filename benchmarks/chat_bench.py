"""What the inference benchmarks share (``inference_overhead.py``, ``assistant_ws.py``): N
concurrent streaming chats through Conveyor against the same requests sent straight to a
``TransformersEngine`` in the benchmark's process, on the same model, in alternating rounds.

``chat_stack`` builds (or takes) the model, points the platform at its store and broker (the
embedded shape by default: SQLite and an embedded Redis in a temp dir; ``--database-url`` and
``--broker-url`` point it at PostgreSQL/Redis), migrates, makes an organisation with a key and
starts the API and an inference worker (``inference.testing.Stack``) plus the anchor engine.
``alternate`` runs the rounds and ``report`` prints each round, the medians with their spread,
the load average and the time-to-first-token overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["queues", "workers", "the fox", "inference", "jobs", "the answer", "numbers"]


@dataclass
class RunStats:
    """One round: tokens generated, wall seconds, and each request's time to its first token."""

    tokens: int
    seconds: float
    first: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def pct_ms(self, pct: float) -> float:
        ordered = sorted(self.first)
        return ordered[min(len(ordered) - 1, int(pct / 100 * len(ordered)))] * 1000

    def line(self, name: str) -> str:
        return (
            f"{name:>9}: {self.tokens} tokens in {self.seconds:.2f}s = "
            f"{self.tokens_per_s:.1f} tok/s, first token p50 {self.pct_ms(50):.0f} ms "
            f"p95 {self.pct_ms(95):.0f} ms p99 {self.pct_ms(99):.0f} ms"
        )


def prompts(n: int) -> list[str]:
    return [f"Tell me about {TOPICS[i % len(TOPICS)]} number {i}." for i in range(n)]


async def gather_stats(
    one: Callable[[int, str], Awaitable[tuple[int, float]]], texts: Sequence[str]
) -> RunStats:
    """Run ``one(i, prompt) -> (tokens, seconds to first token)`` for every prompt at once."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(texts)))
    elapsed = time.perf_counter() - start
    return RunStats(sum(t for t, _ in results), elapsed, [f for _, f in results])


async def run_direct(
    engine: Any, texts: Sequence[str], max_tokens: int, system: str | None = None
) -> RunStats:
    """The anchor: the same chats streamed straight from the engine."""
    from inference.engines.base import ChatEngine, GenerationRequest, SamplingParams, Usage

    assert isinstance(engine, ChatEngine)

    async def one(i: int, prompt: str) -> tuple[int, float]:
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        messages = [{"role": "system", "content": system}] if system else []
        text = engine.render_chat([*messages, {"role": "user", "content": prompt}])
        params = SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i)
        async for event in engine.stream(GenerationRequest(f"d{i}", text, params)):
            if isinstance(event, Usage):
                tokens = event.completion_tokens
            elif not first and event.text:
                first = time.perf_counter() - start
        return tokens, first

    return await gather_stats(one, texts)


def add_arguments(parser: argparse.ArgumentParser, *, concurrency: int, max_tokens: int) -> None:
    parser.add_argument("--model", help="a causal LM directory (default: build a tiny GPT-2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; medians")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument("--broker-url", default="", help="default: the embedded Redis")
    parser.add_argument(
        "--services",
        action="store_true",
        help="a private database and Redis DB on this machine's PostgreSQL/Redis (harness.py)",
    )


@dataclass
class ChatStack:
    """The running platform, its key, and the anchor engine (same model, same batch size)."""

    url: str
    key: str
    api_pid: int
    worker_pid: int
    engine: Any
    model: Path
    work: Path


@contextlib.contextmanager
def chat_stack(args: argparse.Namespace, batch_size: int) -> Iterator[ChatStack]:
    """Start everything (see the module docstring); stop it all on exit."""
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    sys.path.insert(0, str(ROOT))
    from inference.testing import build_tiny_model, free_port

    model = Path(args.model) if args.model else build_tiny_model(work / "tiny")
    # The platform's settings come from the environment: set them before importing config.
    os.environ.update(
        {
            "CONVEYOR_DATA_DIR": str(work / "data"),
            "CONVEYOR_EMBEDDED_REDIS_PORT": str(free_port()),
            "CONVEYOR_MODELS": f"bench={model}",
            "CONVEYOR_INFERENCE_DEVICE": args.device,
            "CONVEYOR_INFERENCE_ENGINE": "transformers",
            "CONVEYOR_INFERENCE_DEFAULT_EMBEDDING": "false",
            "CONVEYOR_INFERENCE_MAX_BATCH_SIZE": str(batch_size),
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if args.database_url:
        os.environ["CONVEYOR_DATABASE_URL"] = args.database_url
    if args.broker_url:
        os.environ["CONVEYOR_BROKER_URL"] = args.broker_url
    with contextlib.ExitStack() as cleanup:
        if args.services:
            from benchmarks.harness import services

            bench = cleanup.enter_context(services())
            args.broker_url = bench.broker_url
            os.environ["CONVEYOR_DATA_DIR"] = str(work / "data")
        yield from _started(args, batch_size, model, work)


def _started(
    args: argparse.Namespace, batch_size: int, model: Path, work: Path
) -> Iterator[ChatStack]:
    from config import get_settings
    from inference.engines.transformers_engine import TransformersEngine
    from inference.testing import Stack
    from store import migrate, orgs
    from store.db import session_scope
    from workers.embedded import ensure_embedded_broker, stop_embedded_broker

    settings = get_settings()
    os.environ["CONVEYOR_BROKER_URL"] = ensure_embedded_broker(settings)
    migrate.upgrade()
    with session_scope() as session:
        org = orgs.get_or_create_org(session, "bench", plan="unlimited")
        key = orgs.create_key(session, org.id, name="bench").raw
    engine = TransformersEngine(
        "bench",
        model,
        device=args.device,
        max_batch_size=batch_size,
        batch_wait_ms=settings.inference_batch_wait_ms,
        # The anchor alone on the machine: a thread per core (its fastest here; the workers
        # leave a core to the platform, CONVEYOR_INFERENCE_CPU_THREADS).
        cpu_threads=os.cpu_count() or 1,
    )
    stack = Stack(dict(os.environ), concurrency=batch_size, log_dir=work / "logs")
    try:
        asyncio.run(engine.start())
        stack.wait_ready(["bench"])
        yield ChatStack(stack.url, key, stack.api.pid, stack.worker.pid, engine, model, work)
    finally:
        stack.stop()
        asyncio.run(engine.close())
        if not args.broker_url:
            stop_embedded_broker(settings.data_dir)


def alternate(
    rounds: int,
    direct: Callable[[], Coroutine[Any, Any, RunStats]],
    ours: Callable[[], Coroutine[Any, Any, RunStats]],
) -> tuple[list[RunStats], list[RunStats]]:
    """``rounds`` alternating rounds of the anchor and Conveyor (each its own event loop)."""
    anchors: list[RunStats] = []
    measured: list[RunStats] = []
    for _ in range(rounds):
        anchors.append(asyncio.run(direct()))
        measured.append(asyncio.run(ours()))
    return anchors, measured


@contextlib.contextmanager
def cpu_per_request(stack: ChatStack, requests: int) -> Iterator[None]:
    """Print the API's and the worker's CPU milliseconds per request over the block."""
    from benchmarks.harness import cpu_seconds

    before = (cpu_seconds(stack.api_pid), cpu_seconds(stack.worker_pid))
    yield
    api, worker = (cpu_seconds(stack.api_pid), cpu_seconds(stack.worker_pid))
    print(
        f"cpu per request: API {(api - before[0]) / requests * 1000:.1f} ms, "
        f"worker {(worker - before[1]) / requests * 1000:.1f} ms (engine included)"
    )


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def report(
    args: argparse.Namespace, stack: ChatStack, direct: list[RunStats], ours: list[RunStats]
) -> None:
    """Each round, then the median ratio with its spread, the first-token overhead, the load."""
    print(f"logs in {stack.work / 'logs'}")
    print(
        f"model={stack.model.name} device={args.device} concurrency={args.concurrency} "
        f"max_tokens={args.max_tokens} rounds={args.rounds} "
        f"load_average={' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for d, o in zip(direct, ours, strict=True):
        print(d.line("direct"))
        print(o.line("conveyor"))
    ratios = [o.tokens_per_s / d.tokens_per_s for d, o in zip(direct, ours, strict=True)]
    over50 = [o.pct_ms(50) - d.pct_ms(50) for d, o in zip(direct, ours, strict=True)]
    over99 = [o.pct_ms(99) - d.pct_ms(99) for d, o in zip(direct, ours, strict=True)]
    print(
        f"direct_tok_s={statistics.median(d.tokens_per_s for d in direct):.1f} "
        f"conveyor_tok_s={statistics.median(o.tokens_per_s for o in ours):.1f}"
    )
    print(f"ratio={_spread(ratios)} (per round: Conveyor tok/s / direct tok/s)")
    print(f"first_token_overhead_p50_ms={_spread(over50)}")
    print(f"first_token_overhead_p99_ms={_spread(over99)}")

"""Conveyor's inference path vs the same engine called directly, same requests, same run.

Anchor: a ``TransformersEngine`` in this process, fed N concurrent streaming chat requests.
Ours: the same N requests through the OpenAI client → Conveyor API → ``inference`` queue →
inference worker (threads pool) → the same engine → Redis relay → SSE. Both use the same model,
prompts, seeds and ``max_tokens``; the script prints tokens/s and time to first token for each
and ``ratio=`` (Conveyor tokens/s ÷ direct tokens/s).

    python benchmarks/inference_overhead.py                 # tiny GPT-2 on CPU, embedded store
    python benchmarks/inference_overhead.py --model DIR --device cuda --concurrency 32

By default the platform runs in its embedded shape (SQLite + embedded Redis in a temp dir);
``--database-url``/``--broker-url`` point it at PostgreSQL/Redis instead.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunStats:
    tokens: int
    seconds: float
    ttft: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def line(self, name: str) -> str:
        return (
            f"{name:>9}: {self.tokens} tokens in {self.seconds:.2f}s = "
            f"{self.tokens_per_s:.1f} tok/s, TTFT p50 {statistics.median(self.ttft) * 1000:.0f} ms"
            f" p95 {sorted(self.ttft)[int(0.95 * (len(self.ttft) - 1))] * 1000:.0f} ms"
        )


def _prompts(n: int) -> list[str]:
    topics = ["queues", "workers", "the fox", "inference", "jobs", "the answer", "numbers"]
    return [f"Tell me about {topics[i % len(topics)]} number {i}." for i in range(n)]


async def run_direct(engine: object, prompts: list[str], max_tokens: int) -> RunStats:
    from inference.engines.base import ChatEngine, GenerationRequest, SamplingParams, Usage

    assert isinstance(engine, ChatEngine)

    async def one(i: int, prompt: str) -> tuple[int, float]:
        start = time.perf_counter()
        first = 0.0
        tokens = 0
        text = engine.render_chat([{"role": "user", "content": prompt}])
        params = SamplingParams(max_tokens=max_tokens, temperature=0.8, seed=i)
        async for event in engine.stream(GenerationRequest(f"d{i}", text, params)):
            if isinstance(event, Usage):
                tokens = event.completion_tokens
            elif not first and event.text:
                first = time.perf_counter() - start
        return tokens, first

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    elapsed = time.perf_counter() - start
    return RunStats(sum(t for t, _ in results), elapsed, [f for _, f in results])


async def run_conveyor(url: str, key: str, prompts: list[str], max_tokens: int) -> RunStats:
    import openai

    async with openai.AsyncOpenAI(
        base_url=f"{url}/v1",
        api_key=key,
        max_retries=0,
        timeout=600,
        http_client=openai.DefaultAsyncHttpxClient(timeout=600),
    ) as client:

        async def one(i: int, prompt: str) -> tuple[int, float]:
            start = time.perf_counter()
            first = 0.0
            tokens = 0
            stream = await client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.8,
                seed=i,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                elif not first and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
            return tokens, first

        start = time.perf_counter()
        results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
        return RunStats(
            sum(t for t, _ in results), time.perf_counter() - start, [f for _, f in results]
        )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a causal LM directory (default: build a tiny GPT-2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument("--broker-url", default="", help="default: the embedded Redis")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    sys.path.insert(0, str(ROOT))
    from inference.testing import Stack, build_tiny_model, free_port

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
            "CONVEYOR_INFERENCE_MAX_BATCH_SIZE": str(args.concurrency),
            "CONVEYOR_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    if args.database_url:
        os.environ["CONVEYOR_DATABASE_URL"] = args.database_url
    if args.broker_url:
        os.environ["CONVEYOR_BROKER_URL"] = args.broker_url
    from config import get_settings
    from inference.engines.transformers_engine import TransformersEngine
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
        max_batch_size=args.concurrency,
        batch_wait_ms=settings.inference_batch_wait_ms,
    )
    stack = Stack(dict(os.environ), concurrency=args.concurrency, log_dir=work / "logs")
    prompts = _prompts(args.concurrency)
    try:
        asyncio.run(engine.start())
        stack.wait_ready(["bench"])
        # Warm both paths (first batches pay one-time costs).
        asyncio.run(run_direct(engine, prompts[:4], 4))
        asyncio.run(run_conveyor(stack.url, key, prompts[:4], 4))
        direct: list[RunStats] = []
        ours: list[RunStats] = []
        for _ in range(args.rounds):
            direct.append(asyncio.run(run_direct(engine, prompts, args.max_tokens)))
            ours.append(asyncio.run(run_conveyor(stack.url, key, prompts, args.max_tokens)))
    finally:
        stack.stop()
        asyncio.run(engine.close())
        if not args.broker_url:
            stop_embedded_broker(settings.data_dir)

    print(f"logs in {work / 'logs'}")
    print(
        f"model={model.name} device={args.device} concurrency={args.concurrency} "
        f"max_tokens={args.max_tokens} rounds={args.rounds}"
    )
    for d, o in zip(direct, ours, strict=True):
        print(d.line("direct"))
        print(o.line("conveyor"))
    direct_tps = statistics.median(d.tokens_per_s for d in direct)
    ours_tps = statistics.median(o.tokens_per_s for o in ours)
    print(f"direct_tok_s={direct_tps:.1f} conveyor_tok_s={ours_tps:.1f}")
    print(f"ratio={ours_tps / direct_tps:.3f}")


if __name__ == "__main__":
    main()

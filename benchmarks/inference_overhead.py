"""Conveyor's inference path vs the same engine called directly, same requests, same run.

Anchor: a ``TransformersEngine`` in this process, fed N concurrent streaming chat requests.
Ours: the same N requests through the OpenAI client → Conveyor API → ``inference`` queue →
inference worker (threads pool) → the same engine → Redis relay → SSE. Both use the same model,
prompts, seeds and ``max_tokens``; the script prints tokens/s and time to first token for each,
``ratio=`` (Conveyor tokens/s ÷ direct tokens/s, median of the rounds with its spread), the
time-to-first-token overhead (p50 and p99, ours minus the engine's own) and the load average.
``--trace`` also prints where a request's first-token time goes (client → job row → worker start
→ first relayed chunk → client), from the job rows and the relay streams' entry times.

    python benchmarks/inference_overhead.py                 # tiny GPT-2 on CPU, embedded store
    python benchmarks/inference_overhead.py --services --rounds 5 --concurrency 1
    python benchmarks/inference_overhead.py --model DIR --device cuda --concurrency 32

Shared parts (the stack, the anchor, the report): ``benchmarks/chat_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import chat_bench
from benchmarks.chat_bench import RunStats

#: job id → (client send, client first token) in Unix seconds, for ``--trace``.
TIMELINE: dict[str, tuple[float, float]] = {}


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
            sent = time.time()
            first = 0.0
            tokens = 0
            raw = await client.chat.completions.with_raw_response.create(
                model="bench",
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens,
                temperature=0.8,
                seed=i,
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in raw.parse():
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                elif not first and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                    TIMELINE[raw.headers.get("x-conveyor-job-id", "")] = (sent, time.time())
            return tokens, first

        return await chat_bench.gather_stats(one, prompts)


def trace() -> None:
    """Median split of the first-token time over the last round's jobs (milliseconds)."""
    from sqlalchemy import select

    from common.redis_clients import client
    from inference.relay import events_key
    from store.db import session_scope
    from store.models import Job

    redis = client()
    parts: dict[str, list[float]] = {}
    with session_scope() as session:
        rows = session.execute(
            select(Job.id, Job.created_at, Job.started_at).where(Job.id.in_(list(TIMELINE)))
        ).all()
    for job_id, created, started in rows:
        sent, first = TIMELINE[job_id]
        entries: Any = redis.xrange(events_key(job_id), count=3)
        stamps = [int(entry_id.decode().split("-")[0]) / 1000 for entry_id, _ in entries]
        marks = {
            "api → job row": created.timestamp() - sent,
            "job row → worker start": (started.timestamp() if started else 0) - created.timestamp(),
            "worker start → 'started' relayed": stamps[0] - (started.timestamp() if started else 0),
            "'started' → first chunk relayed": stamps[1] - stamps[0],
            "first chunk relayed → client": first - stamps[1],
        }
        for name, seconds in marks.items():
            parts.setdefault(name, []).append(seconds * 1000)
    for name, values in parts.items():
        print(f"trace: {name:<36} p50 {statistics.median(values):7.1f} ms  max {max(values):7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    chat_bench.add_arguments(parser, concurrency=32, max_tokens=64)
    parser.add_argument("--trace", action="store_true", help="split the first-token time")
    args = parser.parse_args()
    prompts = chat_bench.prompts(args.concurrency)
    with chat_bench.chat_stack(args, args.concurrency) as stack:
        # Warm both paths (first batches pay one-time costs).
        chat_bench.alternate(
            1,
            lambda: chat_bench.run_direct(stack.engine, prompts[:4], 4),
            lambda: run_conveyor(stack.url, stack.key, prompts[:4], 4),
        )
        direct, ours = chat_bench.alternate(
            args.rounds,
            lambda: chat_bench.run_direct(stack.engine, prompts, args.max_tokens),
            lambda: run_conveyor(stack.url, stack.key, prompts, args.max_tokens),
        )
        if args.trace:
            TIMELINE.clear()
            cpu = time.process_time()
            asyncio.run(chat_bench.run_direct(stack.engine, prompts, args.max_tokens))
            cpu = (time.process_time() - cpu) / len(prompts) * 1000
            print(f"cpu per request: direct engine {cpu:.1f} ms")
            with chat_bench.cpu_per_request(stack, len(prompts)):
                asyncio.run(run_conveyor(stack.url, stack.key, prompts, args.max_tokens))
            trace()
    chat_bench.report(args, stack, direct, ours)


if __name__ == "__main__":
    main()

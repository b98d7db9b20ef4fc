"""Assistant WebSocket conversations through Conveyor vs the same requests straight to the
engine, same run; and the API process's memory per open idle socket.

Anchor: a ``TransformersEngine`` in this process, fed N concurrent streaming chat requests (the
same rendered conversation an instance sends: system prompt + the user's message).
Ours: N concurrent WebSocket conversations on one assistant instance (``team`` plan: no socket
cap) — API → ``assistant`` job on the ``inference`` queue → inference worker → the same model →
Redis relay → ``delta`` frames. Both use the same model, prompts and ``max_tokens``; the script
prints tokens/s and time to first delta for each, ``ratio=`` (Conveyor tokens/s ÷ direct) and the
first-delta overhead (p50 ours minus p50 direct). Then it opens ``--idle`` sockets that send nothing
and reports the API process's resident memory growth per socket.

    python benchmarks/assistant_ws.py                     # tiny GPT-2 on CPU, embedded store
    python benchmarks/assistant_ws.py --concurrency 100 --max-tokens 32 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = "You are a helpful assistant."


@dataclass
class RunStats:
    tokens: int
    seconds: float
    first: list[float]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def p50_ms(self) -> float:
        return statistics.median(self.first) * 1000

    def line(self, name: str) -> str:
        p95 = sorted(self.first)[int(0.95 * (len(self.first) - 1))] * 1000
        return (
            f"{name:>9}: {self.tokens} tokens in {self.seconds:.2f}s = "
            f"{self.tokens_per_s:.1f} tok/s, "
            f"first delta p50 {self.p50_ms():.0f} ms p95 {p95:.0f} ms"
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
        text = engine.render_chat(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
        )
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


async def run_conveyor(ws_url: str, prompts: list[str]) -> RunStats:
    from websockets.asyncio.client import connect

    async def one(i: int, prompt: str) -> tuple[int, float]:
        async with connect(ws_url, max_queue=None) as ws:
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "id": str(i), "content": prompt}))
            first = 0.0
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "delta" and not first:
                    first = time.perf_counter() - start
                elif frame["type"] == "done":
                    return int(frame["usage"]["completion_tokens"]), first
                elif frame["type"] == "error":
                    raise RuntimeError(frame)

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
    return RunStats(
        sum(t for t, _ in results), time.perf_counter() - start, [f for _, f in results]
    )


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def idle_socket_memory(ws_url: str, pid: int, count: int) -> float:
    """KiB of API resident memory per open idle socket (after a warm-up batch)."""
    from websockets.asyncio.client import connect

    async def open_many(n: int) -> list[object]:
        sockets = []
        for _ in range(n):
            ws = await connect(ws_url)
            await ws.send(json.dumps({"type": "ping"}))
            await ws.recv()
            sockets.append(ws)
        return sockets

    warm = await open_many(20)  # allocator arenas, lazily created clients
    await asyncio.sleep(1.0)
    before = rss_kib(pid)
    sockets = await open_many(count)
    await asyncio.sleep(1.0)
    after = rss_kib(pid)
    for ws in [*warm, *sockets]:
        await ws.close()  # type: ignore[attr-defined]
    return (after - before) / count


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a causal LM directory (default: build a tiny GPT-2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; medians")
    parser.add_argument("--idle", type=int, default=300, help="idle sockets for the memory figure")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    parser.add_argument("--broker-url", default="", help="default: the embedded Redis")
    return parser.parse_args()


def main() -> None:
    args = _parse()
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    sys.path.insert(0, str(ROOT))
    from inference.testing import Stack, build_tiny_model, free_port

    model = Path(args.model) if args.model else build_tiny_model(work / "tiny")
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
    import httpx

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
        created = httpx.post(
            f"{stack.url}/v1/instances",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "name": "bench",
                "model": "bench",
                "plan": "team",
                "system_prompt": SYSTEM,
                "temperature": 0.8,
                "max_tokens": args.max_tokens,
            },
        )
        created.raise_for_status()
        ws_url = stack.url.replace("http://", "ws://")
        ws_url += f"/v1/instances/{created.json()['id']}/ws?token={key}"
        # Warm both paths (first batches pay one-time costs).
        asyncio.run(run_direct(engine, prompts[:4], 4))
        asyncio.run(run_conveyor(ws_url, prompts[:4]))
        direct: list[RunStats] = []
        ours: list[RunStats] = []
        for _ in range(args.rounds):
            direct.append(asyncio.run(run_direct(engine, prompts, args.max_tokens)))
            ours.append(asyncio.run(run_conveyor(ws_url, prompts)))
        per_socket = asyncio.run(idle_socket_memory(ws_url, stack.api.pid, args.idle))
    finally:
        stack.stop()
        asyncio.run(engine.close())
        if not args.broker_url:
            stop_embedded_broker(settings.data_dir)

    print(
        f"model={model.name} device={args.device} concurrency={args.concurrency} "
        f"max_tokens={args.max_tokens} rounds={args.rounds}"
    )
    for d, o in zip(direct, ours, strict=True):
        print(d.line("direct"))
        print(o.line("conveyor"))
    direct_tps = statistics.median(d.tokens_per_s for d in direct)
    ours_tps = statistics.median(o.tokens_per_s for o in ours)
    overhead = statistics.median(o.p50_ms() for o in ours) - statistics.median(
        d.p50_ms() for d in direct
    )
    print(f"direct_tok_s={direct_tps:.1f} conveyor_tok_s={ours_tps:.1f}")
    print(f"ratio={ours_tps / direct_tps:.3f} (target >= 0.8)")
    print(f"first_delta_overhead_p50_ms={overhead:.0f} (target < 30)")
    print(f"api_memory_per_idle_socket_kib={per_socket:.1f} (target < 50 KB) over {args.idle}")


if __name__ == "__main__":
    main()

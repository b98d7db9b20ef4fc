"""Assistant WebSocket conversations through Conveyor vs the same requests straight to the
engine, same run; and the API process's memory per open idle socket.

Anchor: a ``TransformersEngine`` in this process, fed N concurrent streaming chat requests (the
same rendered conversation an instance sends: system prompt + the user's message).
Ours: N concurrent WebSocket conversations on one assistant instance (``team`` plan: no socket
cap) — API → ``assistant`` job on the ``inference`` queue → inference worker → the same model →
Redis relay → ``delta`` frames. Both use the same model, prompts and ``max_tokens``; the script
prints tokens/s and time to first delta for each, ``ratio=`` (Conveyor tokens/s ÷ direct, median
of the rounds with its spread), the first-delta overhead (p50 and p99, ours minus direct) and the
load average. Then it opens ``--idle`` sockets that send nothing and reports the API process's
resident memory growth per socket.

    python benchmarks/assistant_ws.py                     # tiny GPT-2 on CPU, embedded store
    python benchmarks/assistant_ws.py --concurrency 100 --max-tokens 32 --rounds 3

Shared parts (the stack, the anchor, the report): ``benchmarks/chat_bench.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import chat_bench
from benchmarks.chat_bench import RunStats

SYSTEM = "You are a helpful assistant."


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

    return await chat_bench.gather_stats(one, prompts)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def idle_socket_memory(ws_url: str, pid: int, count: int) -> float:
    """KiB of API resident memory per open idle socket (after a warm-up batch)."""
    from websockets.asyncio.client import connect

    async def open_many(n: int) -> list[object]:
        sockets: list[object] = []
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    chat_bench.add_arguments(parser, concurrency=100, max_tokens=32)
    parser.add_argument("--idle", type=int, default=300, help="idle sockets for the memory figure")
    args = parser.parse_args()
    import httpx

    prompts = chat_bench.prompts(args.concurrency)
    with chat_bench.chat_stack(args, args.concurrency) as stack:
        created = httpx.post(
            f"{stack.url}/v1/instances",
            headers={"Authorization": f"Bearer {stack.key}"},
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
        ws_url += f"/v1/instances/{created.json()['id']}/ws?token={stack.key}"
        # Warm both paths (first batches pay one-time costs).
        chat_bench.alternate(
            1,
            lambda: chat_bench.run_direct(stack.engine, prompts[:4], 4, SYSTEM),
            lambda: run_conveyor(ws_url, prompts[:4]),
        )
        direct, ours = chat_bench.alternate(
            args.rounds,
            lambda: chat_bench.run_direct(stack.engine, prompts, args.max_tokens, SYSTEM),
            lambda: run_conveyor(ws_url, prompts),
        )
        per_socket = asyncio.run(idle_socket_memory(ws_url, stack.api_pid, args.idle))
    chat_bench.report(args, stack, direct, ours)
    print(f"api_memory_per_idle_socket_kib={per_socket:.1f} (target < 50 KB) over {args.idle}")


if __name__ == "__main__":
    main()

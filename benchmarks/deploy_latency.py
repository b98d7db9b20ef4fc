"""Deploy latency: `POST /v1/deployments` → first successful completion through Conveyor (local
backend, a real deploy worker and API server) vs starting the same model server process directly
and waiting for its first completion. Then the proxy overhead: completions/s through Conveyor's
`/v1/completions` (model = the deployment's name) vs straight to the deployment's endpoint,
same concurrency, same run.

    .venv/bin/python benchmarks/deploy_latency.py [--concurrency 8] [--duration 10]

Needs PostgreSQL and Redis on 127.0.0.1; builds a tiny model (no download). Targets: startup
ratio ≤ 1.2, proxy throughput ratio ≥ 0.9. Last line: ``ratio=<startup conveyor ÷ direct>``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from benchmarks import harness

PROMPT = {"prompt": "Hello", "max_tokens": 8}


def first_completion(url: str, headers: dict[str, str], model: str, timeout: float) -> float:
    """Poll until a 1-token completion succeeds; return when it did (monotonic seconds)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30.0) as client:
        while time.monotonic() < deadline:
            try:
                reply = client.post(
                    url, json={"model": model, "prompt": "Hi", "max_tokens": 1}, headers=headers
                )
                if reply.status_code == 200:
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    raise TimeoutError(f"no completion from {url} within {timeout} s")


def direct_startup(bench: harness.Bench, model_dir: Path, run: int) -> float:
    port = harness.free_port()
    started = time.monotonic()
    proc = bench.start(
        f"direct-{run}",
        [
            sys.executable,
            "-m",
            "inference.server",
            "--model",
            f"tiny={model_dir}",
            "--port",
            str(port),
        ],
    )
    try:
        done = first_completion(f"http://127.0.0.1:{port}/v1/completions", {}, "tiny", 300)
    finally:
        bench.stop(proc)
    return done - started


async def throughput(
    url: str, headers: dict[str, str], model: str, concurrency: int, duration: float
) -> tuple[float, float]:
    """Completions per second and p50 latency (ms) with `concurrency` clients for `duration`."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.monotonic() + duration

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            reply = await client.post(url, json={"model": model, **PROMPT}, headers=headers)
            if reply.status_code == 200:
                latencies.append((time.perf_counter() - began) * 1000)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        began = time.monotonic()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    if errors:
        harness.log(f"  {errors} failed requests to {url}")
    return len(latencies) / elapsed, statistics.median(latencies) if latencies else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()

    with harness.services() as bench:
        from inference.testing import build_tiny_model

        model_dir = build_tiny_model(bench.data_dir / "tiny")
        env = {"CONVEYOR_MODELS": f"tiny={model_dir}", "CONVEYOR_DEPLOY_POLL_SECONDS": "0.1"}
        org = harness.make_org()
        api_port = harness.free_port()
        api = bench.start(
            "api",
            harness.uvicorn_command("api.app:create_app", api_port, 1, factory=True),
            env,
        )
        worker = bench.start(
            "worker",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-Q",
                "deploy,webhooks",
                "-P",
                "threads",
                "-c",
                "4",
                "--loglevel",
                "WARNING",
            ],
            env,
        )
        api_url = f"http://127.0.0.1:{api_port}"
        harness.wait_http(f"{api_url}/v1/health", proc=api)
        time.sleep(2.0)  # let the worker connect to the broker before the clock starts
        if worker.poll() is not None:
            raise RuntimeError(bench.log_tail("worker"))

        harness.log("direct start of the model server (run 1) …")
        direct = [direct_startup(bench, model_dir, 1)]
        harness.log(f"  {direct[0]:.2f} s")

        harness.log("POST /v1/deployments → first completion through Conveyor …")
        began = time.monotonic()
        created = httpx.post(
            f"{api_url}/v1/deployments",
            json={"name": "bench-tiny", "model": "tiny"},
            headers=org.headers,
            timeout=30,
        )
        created.raise_for_status()
        dep_id = created.json()["id"]
        done = first_completion(f"{api_url}/v1/completions", org.headers, "bench-tiny", 300)
        conveyor_startup = done - began
        harness.log(f"  {conveyor_startup:.2f} s")

        harness.log("direct start of the model server (run 2) …")
        direct.append(direct_startup(bench, model_dir, 2))
        harness.log(f"  {direct[1]:.2f} s")
        direct_startup_s = statistics.mean(direct)

        dep = httpx.get(f"{api_url}/v1/deployments/{dep_id}", headers=org.headers).json()
        endpoint = dep["endpoint"]
        harness.log(f"proxy overhead: {args.concurrency} clients x {args.duration:g} s each …")
        direct_rps, direct_p50 = asyncio.run(
            throughput(
                f"{endpoint}/v1/completions", {}, "bench-tiny", args.concurrency, args.duration
            )
        )
        proxied_rps, proxied_p50 = asyncio.run(
            throughput(
                f"{api_url}/v1/completions",
                org.headers,
                "bench-tiny",
                args.concurrency,
                args.duration,
            )
        )
        httpx.delete(f"{api_url}/v1/deployments/{dep_id}", headers=org.headers)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = httpx.get(f"{api_url}/v1/deployments/{dep_id}", headers=org.headers)
            if status.json()["status"] == "deleted":
                break
            time.sleep(0.2)

    startup_ratio = conveyor_startup / direct_startup_s
    proxy_ratio = proxied_rps / direct_rps
    print(
        f"startup  direct (anchor): {direct_startup_s:7.2f} s  (runs: "
        f"{', '.join(f'{d:.2f}' for d in direct)})"
    )
    print(
        f"startup  conveyor       : {conveyor_startup:7.2f} s  ratio {startup_ratio:.2f}"
        f" (target ≤ 1.2)"
    )
    print(f"proxy    direct (anchor): {direct_rps:7.1f} completions/s  p50 {direct_p50:.1f} ms")
    print(
        f"proxy    conveyor       : {proxied_rps:7.1f} completions/s  p50 {proxied_p50:.1f} ms"
        f"  ratio {proxy_ratio:.2f} (target ≥ 0.9)"
    )
    print(f"proxy_ratio={proxy_ratio:.3f}")
    print(f"ratio={startup_ratio:.3f}")


if __name__ == "__main__":
    main()

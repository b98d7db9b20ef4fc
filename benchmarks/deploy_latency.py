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
POLL_S = 0.2  # both ways poll for their first completion at this interval


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
            time.sleep(POLL_S)
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
) -> tuple[float, list[float]]:
    """Completions per second and latencies (ms) with `concurrency` clients for `duration`."""
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
    return len(latencies) / elapsed, latencies


def delete(api_url: str, headers: dict[str, str], dep_id: str) -> None:
    httpx.delete(f"{api_url}/v1/deployments/{dep_id}", headers=headers, timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = httpx.get(f"{api_url}/v1/deployments/{dep_id}", headers=headers, timeout=30)
        if status.json()["status"] == "deleted":
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per slice")
    parser.add_argument("--rounds", type=int, default=3)
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

        # Alternate the two ways (this machine is shared: interleaving spreads the noise).
        direct: list[float] = []
        conveyor: list[float] = []
        dep_ids: list[str] = []
        for run in range(1, args.rounds + 1):
            harness.log(f"round {run}: direct start of the model server …")
            direct.append(direct_startup(bench, model_dir, run))
            harness.log(f"  {direct[-1]:.2f} s; POST /v1/deployments → first completion …")
            began = time.monotonic()
            created = httpx.post(
                f"{api_url}/v1/deployments",
                json={"name": f"bench-{run}", "model": "tiny"},
                headers=org.headers,
                timeout=30,
            )
            created.raise_for_status()
            dep_ids.append(created.json()["id"])
            done = first_completion(f"{api_url}/v1/completions", org.headers, f"bench-{run}", 300)
            conveyor.append(done - began)
            harness.log(f"  {conveyor[-1]:.2f} s")
            if run < args.rounds:
                delete(api_url, org.headers, dep_ids[-1])
        direct_startup_s = statistics.median(direct)
        conveyor_startup = statistics.median(conveyor)

        dep_id, name = dep_ids[-1], f"bench-{args.rounds}"
        dep = httpx.get(f"{api_url}/v1/deployments/{dep_id}", headers=org.headers).json()
        endpoint = dep["endpoint"]
        harness.log(
            f"proxy overhead: {args.concurrency} clients, {args.rounds} alternating slices of "
            f"{args.duration:g} s each way …"
        )
        direct_done = proxied_done = 0.0
        direct_lat: list[float] = []
        proxied_lat: list[float] = []
        for _ in range(args.rounds):
            rate, lat = asyncio.run(
                throughput(f"{endpoint}/v1/completions", {}, name, args.concurrency, args.duration)
            )
            direct_done += rate
            direct_lat += lat
            rate, lat = asyncio.run(
                throughput(
                    f"{api_url}/v1/completions", org.headers, name, args.concurrency, args.duration
                )
            )
            proxied_done += rate
            proxied_lat += lat
        direct_rps, proxied_rps = direct_done / args.rounds, proxied_done / args.rounds
        direct_p50 = statistics.median(direct_lat)
        proxied_p50 = statistics.median(proxied_lat)
        delete(api_url, org.headers, dep_id)

    startup_ratio = conveyor_startup / direct_startup_s
    proxy_ratio = proxied_rps / direct_rps
    print(
        f"startup  direct (anchor): {direct_startup_s:7.2f} s median (runs: "
        f"{', '.join(f'{d:.2f}' for d in direct)})"
    )
    print(
        f"startup  conveyor       : {conveyor_startup:7.2f} s median (runs: "
        f"{', '.join(f'{d:.2f}' for d in conveyor)})  ratio {startup_ratio:.2f} (target ≤ 1.2)"
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

"""Deploy latency: `POST /v1/deployments` → first successful completion through Conveyor (local
backend, a real deploy worker and API server) vs starting the same model server process directly
and waiting for its first completion. Then the proxy overhead: completions/s through Conveyor's
`/v1/completions` (model = the deployment's name, proxied to its replica) vs straight to the
deployment's endpoint (the same replica process), same concurrency, same run.

    .venv/bin/python benchmarks/deploy_latency.py [--concurrency 8] [--duration 5] [--rounds 3]
        [--client auto|wrk|httpx] [--replica-threads 1]

Method of the proxy comparison (this machine has 2 cores, shared by the load generator, the API
and the replica): the load generator is `wrk` (C, one thread, a Lua script that POSTs the same
JSON body) when it is installed (`apt-get install wrk`), else an asyncio httpx client in this
process, whose own CPU competes with the servers; the same tool, concurrency and body serve both
ways, after a short unmeasured warm-up of each, in alternating slices of `--duration` seconds
(`--rounds` of each, the order flipped every round: A B, B A, …), and the ratio is of the mean
completions/s. The replica runs with `OMP_NUM_THREADS=--replica-threads` (default 1, set
through the deployment's env, so both ways hit the same replica with the same setting): with
torch's default of one intra-op thread per core the replica alone keeps both cores busy, so every
cycle the API process spends is taken from the model, and the ratio then measures two processes
sharing two cores rather than the proxy (in production the replica has its own GPU node).
`--replica-threads 0` keeps torch's default and shows that figure. Also printed: the CPU time
the API process and the replica spend per completion (per-process accounting: other users of the
machine do not blur it).

Needs PostgreSQL and Redis on 127.0.0.1; builds a tiny model (no download). Targets: startup
ratio ≤ 1.2, proxy throughput ratio ≥ 0.9. Prints the load average before and after. Last
lines: ``proxy_ratio=<proxied ÷ direct>`` and ``ratio=<startup conveyor ÷ direct>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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


def direct_startup(bench: harness.Bench, model_dir: Path, run: int, env: dict[str, str]) -> float:
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
        env,
    )
    try:
        done = first_completion(f"http://127.0.0.1:{port}/v1/completions", {}, "tiny", 300)
    finally:
        bench.stop(proc)
    return done - started


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    requests: int
    errors: int


async def _httpx_load(
    url: str, headers: dict[str, str], model: str, concurrency: int, duration: float
) -> Load:
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
    return Load(
        len(latencies) / elapsed,
        statistics.median(latencies) if latencies else float("nan"),
        len(latencies),
        errors,
    )


def httpx_load(
    url: str, headers: dict[str, str], model: str, concurrency: int, duration: float
) -> Load:
    return asyncio.run(_httpx_load(url, headers, model, concurrency, duration))


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_load(
    url: str, headers: dict[str, str], model: str, concurrency: int, duration: float
) -> Load:
    """`wrk` POSTing the same JSON body on `concurrency` keep-alive connections (one thread)."""
    lines = [
        'wrk.method = "POST"',
        f"wrk.body = {json.dumps(json.dumps({'model': model, **PROMPT}))}",
    ]
    for name, value in {"Content-Type": "application/json", **headers}.items():
        lines.append(f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        cmd = ["wrk", "-t", "1", "-c", str(concurrency), "-d", f"{duration:g}s", "--latency"]
        out = subprocess.run(
            [*cmd, "-s", script.name, url], capture_output=True, text=True, check=True
        ).stdout
    finally:
        os.unlink(script.name)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if not (rps and total and p50):
        raise RuntimeError(f"unparsed wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
        harness.log(f"  wrk socket errors ({url}): {socket_errors.group(1)}")
    if non2xx:
        harness.log(f"  wrk non-2xx answers ({url}): {non2xx.group(1)}")
    good = int(total.group(1)) - errors
    # Errors are not completions: count only the good answers.
    rate = float(rps.group(1)) * good / max(int(total.group(1)), 1)
    return Load(rate, float(p50.group(1)) * _UNIT_MS[p50.group(2)], good, errors)


def listening_pid(port: int) -> int:
    """The process listening on a local TCP port (the deployment's replica)."""
    import psutil

    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == "LISTEN" and conn.pid:
            return int(conn.pid)
    raise RuntimeError(f"no process listens on port {port}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} cores)"


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
    parser.add_argument("--client", choices=["auto", "wrk", "httpx"], default="auto")
    parser.add_argument(
        "--replica-threads", type=int, default=1, help="OMP_NUM_THREADS of the replica; 0: default"
    )
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "httpx"
    load = wrk_load if client == "wrk" else httpx_load
    replica_env = {"OMP_NUM_THREADS": str(args.replica_threads)} if args.replica_threads else {}
    load_before = load_average()

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
            harness.worker_command("deploy,webhooks", 4),
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
            direct.append(direct_startup(bench, model_dir, run, replica_env))
            harness.log(f"  {direct[-1]:.2f} s; POST /v1/deployments → first completion …")
            began = time.monotonic()
            created = httpx.post(
                f"{api_url}/v1/deployments",
                json={"name": f"bench-{run}", "model": "tiny", "env": replica_env},
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
        replica_pid = listening_pid(int(endpoint.rsplit(":", 1)[1]))
        harness.log(
            f"proxy overhead ({client}): {args.concurrency} connections, {args.rounds} "
            f"alternating slices of {args.duration:g} s each way …"
        )
        direct_loads: list[Load] = []
        proxied_loads: list[Load] = []
        cpu = {"direct": [0.0, 0.0], "proxied": [0.0, 0.0]}  # API s, replica s
        ways = [
            ("direct", f"{endpoint}/v1/completions", {}, direct_loads),
            ("proxied", f"{api_url}/v1/completions", org.headers, proxied_loads),
        ]
        for _, url, headers, _ in ways:  # warm both paths up (connections, caches); not counted
            load(url, headers, name, args.concurrency, min(2.0, args.duration))
        for round_ in range(args.rounds):
            # A B, then B A: neither way always runs first (drift in the machine's load).
            for way, url, headers, loads in ways if round_ % 2 == 0 else ways[::-1]:
                before = (harness.cpu_seconds(api.pid), harness.cpu_seconds(replica_pid))
                loads.append(load(url, headers, name, args.concurrency, args.duration))
                cpu[way][0] += harness.cpu_seconds(api.pid) - before[0]
                cpu[way][1] += harness.cpu_seconds(replica_pid) - before[1]
            harness.log(
                f"  direct {direct_loads[-1].rps:.1f}/s, proxied {proxied_loads[-1].rps:.1f}/s"
            )
        for way, loads in (("direct", direct_loads), ("proxied", proxied_loads)):
            failed = sum(x.errors for x in loads)
            if failed:
                harness.log(f"  {failed} failed requests {way}")
        direct_rps = statistics.fmean(x.rps for x in direct_loads)
        proxied_rps = statistics.fmean(x.rps for x in proxied_loads)
        direct_p50 = statistics.median(x.p50_ms for x in direct_loads)
        proxied_p50 = statistics.median(x.p50_ms for x in proxied_loads)
        completed = {
            "direct": sum(x.requests for x in direct_loads),
            "proxied": sum(x.requests for x in proxied_loads),
        }
        cpu_ms = {way: [t / max(completed[way], 1) * 1000 for t in cpu[way]] for way in cpu}
        delete(api_url, org.headers, dep_id)
    load_after = load_average()

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
    threads = args.replica_threads or "torch default"
    print(f"proxy    load generator: {client}, replica OMP_NUM_THREADS: {threads}")
    print(f"machine  before: {load_before}; after: {load_after}")
    print(
        f"proxy    CPU per completion: replica {cpu_ms['direct'][1]:.2f} ms direct, "
        f"{cpu_ms['proxied'][1]:.2f} ms proxied; API {cpu_ms['proxied'][0]:.2f} ms proxied"
    )
    print(f"proxy_ratio={proxy_ratio:.3f}")
    print(f"ratio={startup_ratio:.3f}")


if __name__ == "__main__":
    main()

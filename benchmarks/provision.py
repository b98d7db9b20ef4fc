"""Resources benchmark: shared PostgreSQL provision latency (submit → ready through the API and
a worker; target < 2 s), backup throughput against raw ``pg_dump -Fc`` on the same database in
the same run (target ratio ≥ 0.9), and PITR restore time against database size (the growth).

Conveyor dumps with ``-Fc -Z1`` (fast compression); the benchmark also times raw
``pg_dump -Fc -Z1``, so the fingerprint's own cost shows (``overhead_ratio``). Default sizes are
small so it runs in a few minutes on 2 cores: 100 MB for the backup and 20 MB / 100 MB for PITR.
``--full`` uses the issue's sizes (1 GB backup; PITR 100 MB and 1 GB), which takes much longer.
The final line is ``ratio=<backup throughput ours / raw pg_dump -Fc>``.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks import harness

PREFIX = "cvy_bench_"


def _fill(url: str, megabytes: int) -> None:
    """About ``megabytes`` of table data (rows of ~100 bytes with their overhead)."""
    rows = megabytes * 10_000
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS items (id bigint primary key, body text)")
        step = 500_000
        for start in range(1, rows + 1, step):
            conn.execute(
                "INSERT INTO items SELECT g, md5(g::text) || md5((g + 1)::text) "
                "FROM generate_series(%s::bigint, %s::bigint) g",
                (start, min(start + step - 1, rows)),
            )
        conn.execute("VACUUM ANALYZE items")


def provision_latency(bench: harness.Bench, runs: int) -> tuple[float, float]:
    """Median submit → ready (s) through the API + a provision worker, and the anchor: the same
    role + database created directly with psycopg."""
    org = harness.make_org()
    env = {"CONVEYOR_RESOURCES_NAME_PREFIX": PREFIX}
    api_port = harness.free_port()
    api = bench.start(
        "api", harness.uvicorn_command("api.app:create_app", api_port, 1, factory=True), env
    )
    worker = bench.start(
        "worker",
        harness.worker_command("provision", 2),
        env,
    )
    url = f"http://127.0.0.1:{api_port}"
    harness.wait_http(f"{url}/v1/health", proc=api)
    time.sleep(2.0)
    if worker.poll() is not None:
        raise RuntimeError(bench.log_tail("worker"))
    ours: list[float] = []
    with httpx.Client(base_url=url, headers=org.headers, timeout=30) as client:
        for i in range(runs):
            t0 = time.perf_counter()
            r = client.post("/v1/resources", json={"type": "postgres", "name": f"lat-{i}"})
            rid = r.json()["id"]
            while client.get(f"/v1/resources/{rid}").json()["status"] == "provisioning":
                time.sleep(0.01)
            ours.append(time.perf_counter() - t0)
            client.delete(f"/v1/resources/{rid}")
        time.sleep(2.0)  # let the delete jobs finish
    anchor: list[float] = []
    for _ in range(runs):
        name = f"{PREFIX}anchor_{secrets.token_hex(4)}"
        t0 = time.perf_counter()
        with psycopg.connect(harness.PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'x' CONNECTION LIMIT 20")
            conn.execute(f"CREATE DATABASE {name} OWNER {name}")
        anchor.append(time.perf_counter() - t0)
        with psycopg.connect(harness.PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")
            conn.execute(f"DROP ROLE {name}")
    bench.stop(worker)
    bench.stop(api)
    return statistics.median(ours), statistics.median(anchor)


def backup_throughput(settings: object, megabytes: int, rounds: int) -> dict[str, Any]:
    """Seconds for raw ``pg_dump -Fc`` (the anchor, default compression), raw pg_dump with
    Conveyor's flags (``-Fc -Z1``: what Conveyor itself adds), and Conveyor's backup (that
    dump plus the per-table fingerprint from the same snapshot). The order rotates each round
    so cache warmth and load drift hit every side alike; ratios are medians of the rounds."""
    from resources.backends import pg
    from resources.backends.postgres_shared import PostgresShared

    backend = PostgresShared(settings)  # type: ignore[arg-type]
    handle = backend.provision(secrets.token_hex(5), {})
    try:
        harness.log(f"filling {megabytes} MB …")
        _fill(handle.env["DATABASE_URL"], megabytes)
        db = handle.state["database"]
        size = pg.database_metrics(backend.admin_dsn, db)["size_bytes"]
        raw_dir = Path(backend.settings.data_dir) / "raw"
        raw_dir.mkdir(parents=True, exist_ok=True)
        dsn = f"--dbname={pg.dsn_for(backend.admin_dsn, db)}"
        dump = str(backend.settings.pg_bin_dir / "pg_dump")
        commands = {
            "raw": [dump, "-Fc", "-f", str(raw_dir / "d"), dsn],
            "same_flags": [
                dump,
                "-Fc",
                f"-Z{backend.settings.pg_dump_compression}",
                "-f",
                str(raw_dir / "d1"),
                dsn,
            ],
        }
        times: dict[str, list[float]] = {"raw": [], "same_flags": [], "ours": []}
        sides = list(times)
        for i in range(rounds):
            for side in sides[i % 3 :] + sides[: i % 3]:
                t0 = time.perf_counter()
                if side == "ours":
                    backend.backup(handle, f"b{i}")
                else:
                    subprocess.run(commands[side], check=True)
                times[side].append(time.perf_counter() - t0)
            harness.log(
                f"  round {i + 1}: pg_dump {times['raw'][-1]:.2f} s, pg_dump -Z1 "
                f"{times['same_flags'][-1]:.2f} s, conveyor {times['ours'][-1]:.2f} s"
            )
        ours_size = (backend.settings.backups_dir / db / "b0" / "backup.dump").stat().st_size
        return {
            "bytes": size,
            "raw": statistics.median(times["raw"]),
            "same_flags": statistics.median(times["same_flags"]),
            "ours": statistics.median(times["ours"]),
            "ratio": statistics.median(
                r / o for r, o in zip(times["raw"], times["ours"], strict=True)
            ),
            "overhead_ratio": statistics.median(
                r / o for r, o in zip(times["same_flags"], times["ours"], strict=True)
            ),
            "raw_size": (raw_dir / "d").stat().st_size,
            "ours_size": ours_size,
        }
    finally:
        backend.deprovision(handle)


def pitr_time(settings: object, megabytes: int) -> float:
    """Seconds to restore a dedicated instance of ~``megabytes`` to a point in time."""
    from resources.backends.postgres_dedicated import PostgresDedicated

    backend = PostgresDedicated(settings)  # type: ignore[arg-type]
    ident = secrets.token_hex(5)
    handle = backend.provision(ident, {})
    try:
        url = handle.env["DATABASE_URL"]
        harness.log(f"PITR {megabytes} MB: filling …")
        _fill(url, megabytes)
        base = backend.backup(handle, "base")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE marker (id int)")
            conn.execute("INSERT INTO marker VALUES (1)")
        time.sleep(0.2)
        target = datetime.now(UTC)
        time.sleep(0.2)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO marker VALUES (2)")
        deadline = time.monotonic() + 60
        while (backend.last_archived_commit(handle.state["archive_dir"]) or target) <= target:
            if time.monotonic() > deadline:
                raise RuntimeError("the archive did not catch up")
            time.sleep(0.5)
        t0 = time.perf_counter()
        restored = backend.pitr(handle, [base], target, ident + "p")
        elapsed = time.perf_counter() - t0
        with psycopg.connect(restored.env["DATABASE_URL"]) as conn:
            marks = conn.execute("SELECT count(*) FROM marker").fetchone()
        if marks != (1,):
            raise RuntimeError(f"PITR restored the wrong data: {marks}")
        backend.deprovision(restored)
        return elapsed
    finally:
        backend.deprovision(handle)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="1 GB backup; PITR 100 MB and 1 GB")
    parser.add_argument("--runs", type=int, default=5, help="provision latency runs")
    parser.add_argument("--rounds", type=int, default=5, help="backup rounds (median)")
    args = parser.parse_args()
    backup_mb = 1024 if args.full else 100
    pitr_sizes = (100, 1024) if args.full else (20, 100)

    with harness.services() as bench:
        from resources.settings import ResourceSettings

        data_dir = Path(f"/tmp/{PREFIX}{secrets.token_hex(4)}")
        data_dir.mkdir(mode=0o755)
        settings = ResourceSettings(data_dir=data_dir, name_prefix=PREFIX, pg_archive_timeout_s=1)
        try:
            harness.log("provision latency (API + worker) …")
            ours_lat, anchor_lat = provision_latency(bench, args.runs)
            harness.log(f"backup throughput on {backup_mb} MB …")
            bk = backup_throughput(settings, backup_mb, args.rounds)
            pitr = {mb: min(pitr_time(settings, mb) for _ in range(2)) for mb in pitr_sizes}
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)

    mb = bk["bytes"] / 1e6
    ratio = bk["ratio"]
    small, large = pitr_sizes
    print(f"provision  direct CREATE ROLE+DATABASE (anchor): {anchor_lat * 1000:7.1f} ms")
    print(f"provision  conveyor submit → ready             : {ours_lat * 1000:7.1f} ms (< 2000)")
    print(f"backup     database {mb:.0f} MB")
    print(
        f"backup     raw pg_dump -Fc (anchor)   : {bk['raw']:6.2f} s {mb / bk['raw']:6.1f} MB/s"
        f"  file {bk['raw_size'] / 1e6:.0f} MB"
    )
    print(
        f"backup     raw pg_dump -Fc -Z1        : {bk['same_flags']:6.2f} s"
        f" {mb / bk['same_flags']:6.1f} MB/s"
    )
    print(
        f"backup     conveyor (-Z1 + fingerprint): {bk['ours']:6.2f} s {mb / bk['ours']:6.1f} MB/s"
        f"  file {bk['ours_size'] / 1e6:.0f} MB"
    )
    print(
        f"backup     ratio vs anchor {ratio:.2f} (target ≥ 0.9); vs the same pg_dump flags"
        f" {bk['overhead_ratio']:.2f} (what the fingerprint costs)"
    )
    for size_mb, seconds in pitr.items():
        print(
            f"pitr       {size_mb:5d} MB restore to a point in time: {seconds:6.2f} s (best of 2)"
        )
    print(f"pitr growth: {pitr[large] / pitr[small]:.2f}x time for {large / small:.1f}x data")
    print(f"provision_ms={ours_lat * 1000:.1f}")
    print(f"overhead_ratio={bk['overhead_ratio']:.3f}")
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()

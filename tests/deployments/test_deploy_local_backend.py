"""The local backend supervising real processes (a stdlib stand-in server, real ports, signals)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from deployments.backends.base import BackendState, DeploymentSpec, Observation, derive_status
from deployments.backends.local import (
    LocalBackend,
    LocalBackendConfig,
    process_matches,
    replica_ids,
)
from deployments.masking import mask_secrets

STUB = str(Path(__file__).with_name("stub_server.py"))
SECRET = "hf_abcdefghijklmnopqrstuvwxyz"


def make_backend(tmp_path: Path, *extra: str, **overrides: float) -> LocalBackend:
    command = [sys.executable, STUB, "--port", "{port}", "--name", "{name}", *extra]
    options: dict[str, float] = {
        "stop_grace_s": 2.0,
        "backoff_base_s": 0.2,
        "backoff_max_s": 1.0,
        "health_timeout_s": 5.0,
        "orphan_grace_s": 0.0,
        "startup_timeout_s": 20.0,
    }
    options.update(overrides)
    config = LocalBackendConfig(runtime_dir=tmp_path / "rt", command=command, **options)  # type: ignore[arg-type]
    return LocalBackend(config)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[LocalBackend]]:
    created: list[LocalBackend] = []
    yield created
    for backend in created:
        backend.sweep_orphans(set())
        backend.close()


def spec(**overrides: object) -> DeploymentSpec:
    values: dict[str, object] = {
        "id": "dep_test",
        "name": "tiny",
        "model": "tiny",
        "model_path": "/nonexistent",
        "env": {"HF_TOKEN": SECRET},
    }
    values.update(overrides)
    return DeploymentSpec.model_validate(values)


def reconcile_until(
    backend: LocalBackend,
    s: DeploymentSpec,
    state: BackendState | None,
    done: Callable[[Observation], bool],
    timeout: float = 20.0,
) -> Observation:
    deadline = time.monotonic() + timeout
    while True:
        obs = backend.reconcile(s, state)
        state = obs.state
        if done(obs):
            return obs
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting; last observation {obs}")
        time.sleep(0.1)


def pids(obs: Observation) -> list[int]:
    return [int(r["pid"]) for r in obs.state.data["replicas"]]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_replica_is_running_only_after_a_real_request_passes(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path, "--startup-delay", "0.5")
    backends.append(backend)
    first = backend.reconcile(spec(), None)
    assert first.status == "deploying"
    assert first.endpoints == []
    obs = reconcile_until(backend, spec(), first.state, lambda o: o.status == "running")
    assert obs.ready_replicas == 1 and obs.endpoint is not None
    reply = httpx.post(f"{obs.endpoint}/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert reply.status_code == 200
    logs = backend.read_logs(spec(), obs.state)
    assert any("stub server pid=" in line for line in logs)
    assert all(SECRET not in line for line in logs)
    assert any("token=****" in line for line in logs)
    assert any("POST /v1/completions" in line for line in logs)


def test_never_healthy_replica_stays_deploying_with_a_reason(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path, "--unhealthy")
    backends.append(backend)
    obs = reconcile_until(
        backend, spec(), None, lambda o: "answered 500" in (o.reason or ""), timeout=10
    )
    assert obs.status == "deploying"
    assert obs.reason is not None and obs.reason.startswith("replicas_not_ready")


def test_stop_sends_sigterm_then_sigkill_after_the_grace(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path, "--ignore-sigterm", stop_grace_s=0.5)
    backends.append(backend)
    obs = reconcile_until(backend, spec(), None, lambda o: o.status == "running")
    (pid,) = pids(obs)
    port = obs.state.data["replicas"][0]["port"]
    started = time.monotonic()
    stopped = backend.stop(spec(), obs.state)
    assert time.monotonic() - started >= 0.5
    assert stopped.status == "stopped" and stopped.state.data["replicas"] == []
    assert not psutil.pid_exists(pid)  # stopped and reaped: not even a zombie
    assert port_is_free(port)
    assert any("ignoring SIGTERM" in line for line in backend.read_logs(spec(), None))


def test_killed_replica_is_detected_and_restarted(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path)
    backends.append(backend)
    obs = reconcile_until(backend, spec(), None, lambda o: o.status == "running")
    (pid,) = pids(obs)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    after_kill = backend.reconcile(spec(), obs.state)
    assert after_kill.status == "deploying" and after_kill.ready_replicas == 0
    assert derive_status("running", after_kill) == "degraded"
    assert any("crashed" in event for event in after_kill.events)
    back = reconcile_until(backend, spec(), after_kill.state, lambda o: o.status == "running")
    (new_pid,) = pids(back)
    assert new_pid != pid
    assert back.state.data["replicas"][0]["restarts"] == 1


def test_repeated_crashes_fail_with_the_last_log_lines(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path, "--exit-after", "0")
    backends.append(backend)
    obs = reconcile_until(backend, spec(), None, lambda o: o.status == "failed")
    assert obs.reason is not None
    assert obs.reason.startswith("replica_crashed")
    assert "simulated crash" in obs.reason
    assert SECRET not in obs.reason
    assert obs.state.data["replicas"][0]["crashes"] == 3
    # A failed deployment stays failed and starts nothing new.
    again = backend.reconcile(spec(), obs.state)
    assert again.status == "failed" and pids(again) == pids(obs)
    # An explicit retry (start, update) forgets the crash count and starts the replica again.
    retried = backend.reconcile(spec(), backend.reset_failures(again.state))
    assert retried.status == "deploying" and pids(retried) != pids(obs)


def test_state_survives_a_restart_and_pids_are_verified(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    first = make_backend(tmp_path)
    backends.append(first)
    obs = reconcile_until(first, spec(), None, lambda o: o.status == "running")
    stored = BackendState.model_validate_json(obs.state.model_dump_json())

    restarted = make_backend(tmp_path)  # a new API/worker process reading the store
    backends.append(restarted)
    again = restarted.reconcile(spec(), stored)
    assert again.status == "running" and pids(again) == pids(obs)

    # A pid whose start time does not match is not ours: never signalled, replica replaced.
    stranger = psutil.Process(os.getpid())
    forged = stored.model_copy(deep=True)
    forged.data["replicas"][0]["pid"] = stranger.pid
    forged.data["replicas"][0]["start_time"] = stranger.create_time() + 1000
    replaced = restarted.reconcile(spec(), forged)
    assert psutil.pid_exists(stranger.pid)
    assert replaced.state.data["replicas"][0]["status"] in ("starting", "crashed")
    restarted.stop(spec(), stored)  # the real replica, which the forged record no longer names
    assert not process_matches(pids(obs)[0], stored.data["replicas"][0]["start_time"])


def test_scale_and_roll_a_new_revision(tmp_path: Path, backends: list[LocalBackend]) -> None:
    backend = make_backend(tmp_path)
    backends.append(backend)
    two = reconcile_until(backend, spec(replicas=2), None, lambda o: o.status == "running")
    assert len(set(two.endpoints)) == 2
    texts = {
        httpx.post(f"{url}/v1/completions", json={"prompt": "x"}).json()["choices"][0]["text"]
        for url in two.endpoints
    }
    assert len(texts) == 2

    rolled = reconcile_until(
        backend, spec(replicas=2, revision=2), two.state, lambda o: o.status == "running"
    )
    assert {r["revision"] for r in rolled.state.data["replicas"]} == {2}
    assert all(not psutil.pid_exists(pid) for pid in pids(two))

    one = backend.reconcile(spec(replicas=1, revision=2), rolled.state)
    assert one.status == "running" and len(one.endpoints) == 1


def test_delete_leaves_no_process_and_frees_the_port(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path)
    backends.append(backend)
    obs = reconcile_until(backend, spec(replicas=2), None, lambda o: o.status == "running")
    ports = [int(r["port"]) for r in obs.state.data["replicas"]]
    backend.delete(spec(), obs.state)
    backend.delete(spec(), obs.state)  # idempotent
    assert all(not psutil.pid_exists(pid) for pid in pids(obs))
    assert all(port_is_free(port) for port in ports)
    assert not (tmp_path / "rt" / "dep_test").exists()


def test_orphans_unknown_to_the_store_are_killed(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    backend = make_backend(tmp_path)
    backends.append(backend)
    kept = reconcile_until(backend, spec(), None, lambda o: o.status == "running")
    orphan = reconcile_until(backend, spec(id="dep_lost"), None, lambda o: o.status == "running")
    killed = backend.sweep_orphans(replica_ids(kept.state))
    assert killed == [orphan.state.data["replicas"][0]["id"]]
    assert not psutil.pid_exists(pids(orphan)[0])
    assert psutil.pid_exists(pids(kept)[0])


def test_mask_secrets_hides_known_values_and_token_shapes() -> None:
    line = (
        "HF_TOKEN=abc123secret url=postgresql://u:pw@db/x Authorization: Bearer sk-ABCDEFGHIJKLMNOP"
    )
    masked = mask_secrets(line, ["abc123secret"])
    assert "abc123secret" not in masked
    assert "pw@" not in masked
    assert "ABCDEFGHIJKLMNOP" not in masked
    assert "postgresql://u:****@db/x" in masked


WORKER_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from deployments.backends.base import DeploymentSpec
from deployments.backends.local import LocalBackend, LocalBackendConfig
config = LocalBackendConfig(runtime_dir=Path(sys.argv[1]), command=json.loads(sys.argv[2]))
backend = LocalBackend(config)
spec = DeploymentSpec(id="dep_worker", name="tiny", model="tiny", model_path="/nonexistent")
state = None
while True:
    obs = backend.reconcile(spec, state)
    state = obs.state
    if obs.status == "running":
        break
    time.sleep(0.1)
print(state.model_dump_json(), flush=True)
os._exit(0)  # the worker dies without cleaning up
"""


def test_replicas_outlive_the_worker_that_started_them_and_are_adopted(
    tmp_path: Path, backends: list[LocalBackend]
) -> None:
    import json
    import subprocess

    command = [sys.executable, STUB, "--port", "{port}", "--name", "{name}"]
    worker = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT, str(tmp_path / "rt"), json.dumps(command)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
        check=True,
    )
    stored = BackendState.model_validate_json(worker.stdout.strip().splitlines()[-1])
    replica = stored.data["replicas"][0]
    assert process_matches(replica["pid"], replica["start_time"])  # survived its worker

    successor = make_backend(tmp_path)  # the restarted worker, reading the store
    backends.append(successor)
    s = spec(id="dep_worker", env={})
    adopted = successor.reconcile(s, stored)
    assert adopted.status == "running" and pids(adopted) == [replica["pid"]]
    successor.stop(s, adopted.state)
    assert not process_matches(replica["pid"], replica["start_time"])
    assert successor.sweep_orphans(set()) == []  # nothing left behind


def test_replicas_do_not_inherit_control_plane_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from deployments.runtime import replica_base_env

    monkeypatch.setenv("CONVEYOR_DATABASE_URL", "postgresql://admin:pw@db/conveyor")
    monkeypatch.setenv("CONVEYOR_WEBHOOK_SECRETS_KEYS", "k1")
    monkeypatch.setenv("CONVEYOR_INFERENCE_DEVICE", "cpu")
    env = replica_base_env()
    assert "CONVEYOR_DATABASE_URL" not in env and "CONVEYOR_WEBHOOK_SECRETS_KEYS" not in env
    assert env["CONVEYOR_INFERENCE_DEVICE"] == "cpu" and "PATH" in env

"""The Kubernetes backend observed through watches: the fake API streams pod, event and
Deployment changes; `KubeWatcher` keeps the cache; each batch of changes is reconciled from the
cache (no re-listing) and ends in the right status and reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from kubernetes import client as k8s

from deployments.backends.base import BackendState, DeploymentSpec, Observation, derive_status
from deployments.backends.kubernetes import (
    KubernetesBackend,
    KubernetesBackendConfig,
    id_slug,
    object_name,
)
from deployments.backends.kubernetes_watch import KubeWatcher, reconcile_changed
from tests.deployments.fake_kube import FakeKube, running_fake_kube
from tests.deployments.test_deploy_kubernetes_backend import spec


@dataclass
class Reconciler:
    """What the reconciler would store: the last state and status of one deployment."""

    backend: KubernetesBackend
    spec: DeploymentSpec
    state: BackendState | None = None
    status: str | None = None
    history: list[Observation] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def reconcile(self, deployment_id: str) -> int:
        assert deployment_id == self.spec.id
        obs = self.backend.reconcile(self.spec, self.state)
        with self.changed:
            self.state, self.status = obs.state, derive_status(self.status, obs)
            self.history.append(obs)
            self.changed.notify_all()
        return 1

    @property
    def last(self) -> Observation:
        return self.history[-1]

    def statuses(self) -> list[str]:
        return [o.status for o in self.history]


@dataclass
class Cluster:
    fake: FakeKube
    backend: KubernetesBackend
    reconciler: Reconciler
    watcher: KubeWatcher

    def drive(self, until: Callable[[Reconciler], bool], ticks: int = 40) -> Reconciler:
        """Let the cluster's controllers step until `until` holds for what the watch delivered."""
        rec = self.reconciler
        for _ in range(ticks):
            with rec.changed:
                if rec.history and until(rec):
                    return rec
                seen = len(rec.history)
            self.fake.tick()
            with rec.changed:
                rec.changed.wait_for(lambda n=seen: len(rec.history) > n, timeout=0.15)
        raise AssertionError(f"never reached; statuses {rec.statuses()}, last {rec.last}")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with running_fake_kube() as (fake, url):
        fake.tick_on_read = False  # only the test's ticks move the cluster
        configuration = k8s.Configuration()
        configuration.host = url
        api = k8s.ApiClient(configuration)
        backend = KubernetesBackend(KubernetesBackendConfig(namespace="models"), api_client=api)
        rec = Reconciler(backend, spec())
        watcher = KubeWatcher(
            api,
            "models",
            reconcile_changed(rec.reconcile, lambda: [rec.spec.id]),
            timeout_s=1,
            debounce_s=0.01,
        )
        backend.attach(watcher.cache)
        yield Cluster(fake, backend, rec, watcher)
        fake.close()  # open watches end at once
        watcher.stop()
        backend.close()
        assert fake.bad_requests == []


def start(c: Cluster, scenario: str) -> None:
    """The deploy job applies the objects; the watch process then observes them."""
    c.fake.scenario = scenario
    c.reconciler.reconcile(c.reconciler.spec.id)  # applies (the cache is not synced yet)
    c.watcher.start()
    deadline = time.monotonic() + 5
    while not c.watcher.cache.synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert c.watcher.cache.synced


def test_success_is_observed_from_the_watch_without_relisting(cluster: Cluster) -> None:
    start(cluster, "success")
    lists = dict(cluster.fake.lists)
    rec = cluster.drive(lambda r: r.status == "running")
    assert rec.last.ready_replicas == 1 and rec.last.reason is None
    assert "deploying" in rec.statuses()[:-1]
    assert cluster.fake.lists == lists  # every observation after the sync came from the watch
    assert cluster.fake.watch_requests.get("pods", 0) >= 1
    assert cluster.fake.watch_requests.get("events", 0) >= 1


def test_unschedulable_reports_insufficient_gpus_then_the_rollout_deadline_fails_it(
    cluster: Cluster,
) -> None:
    start(cluster, "unschedulable")
    rec = cluster.drive(lambda r: (r.last.reason or "").startswith("unschedulable:"))
    assert rec.status == "deploying"
    assert "Insufficient nvidia.com/gpu" in (rec.last.reason or "")
    cluster.fake.deadline_exceeded = True  # progressDeadlineSeconds passed: Deployment changes
    rec = cluster.drive(lambda r: r.status == "failed")
    assert (rec.last.reason or "").startswith("rollout_timeout:")
    assert "unschedulable" in (rec.last.reason or "")


@pytest.mark.parametrize(
    ("scenario", "code", "detail"),
    [
        ("image_pull", "image_pull_failed:", "pulling image"),
        ("oom", "oom_killed:", "exit code 137"),
        ("crash_loop", "crash_loop:", "keeps crashing"),
    ],
)
def test_failures_end_failed_with_a_clear_reason(
    cluster: Cluster, scenario: str, code: str, detail: str
) -> None:
    start(cluster, scenario)
    rec = cluster.drive(lambda r: r.status == "failed")
    reason = rec.last.reason or ""
    assert reason.startswith(code) and detail in reason, reason


def test_slow_start_stays_deploying_until_ready(cluster: Cluster) -> None:
    start(cluster, "slow")
    rec = cluster.drive(lambda r: r.status == "running")
    deploying = [o for o in rec.history if o.status == "deploying"]
    assert deploying and all(
        (o.reason or "").startswith("replicas_not_ready") for o in deploying[1:]
    )


def test_a_running_deployment_that_is_oom_killed_later_fails(cluster: Cluster) -> None:
    start(cluster, "ready_then_oom")
    cluster.drive(lambda r: r.status == "running")
    rec = cluster.drive(lambda r: r.status == "failed")
    assert (rec.last.reason or "").startswith("oom_killed:")


def test_pod_deleted_behind_our_back_degrades_then_runs_again(cluster: Cluster) -> None:
    start(cluster, "success")
    cluster.drive(lambda r: r.status == "running")
    cluster.fake.delete_pod_behind_our_back(object_name(cluster.reconciler.spec))
    rec = cluster.drive(lambda r: r.status == "degraded")
    assert rec.last.ready_replicas == 0
    rec = cluster.drive(lambda r: r.status == "running")
    assert rec.last.ready_replicas == 1


def test_deployment_deleted_behind_our_back_is_reapplied_from_the_watch(cluster: Cluster) -> None:
    start(cluster, "success")
    cluster.drive(lambda r: r.status == "running")
    name = object_name(cluster.reconciler.spec)
    cluster.fake.delete("deployments", "models", name)
    cluster.drive(lambda r: any("re-applied" in e for e in r.last.events))
    assert cluster.fake.kinds("deployments") == [name]
    cluster.drive(lambda r: r.status == "running")


def test_410_gone_relists_and_stream_end_reconnects(cluster: Cluster) -> None:
    start(cluster, "slow")
    pods = next(s for s in cluster.watcher.streams if s.kind == "pods")
    lists = pods.lists
    cluster.fake.compact()  # the versions the streams hold are now too old
    deadline = time.monotonic() + 5  # (nothing changes, so their 1 s streams end and resume)
    while (pods.gone == 0 or pods.lists == lists) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pods.gone >= 1 and cluster.fake.gone_sent >= 1
    assert pods.lists > lists  # 410 → a fresh list
    assert pods.reconnects >= 1  # the 1 s streams ended and were resumed
    rec = cluster.drive(lambda r: r.status == "running", ticks=60)
    assert rec.last.ready_replicas == 1


def test_changes_of_unknown_deployments_are_ignored() -> None:
    seen: list[str] = []
    on_change = reconcile_changed(lambda i: seen.append(i) or 1, lambda: ["dep_A1", "dep_b2"])
    on_change({id_slug("dep_A1"), id_slug("dep_gone")})
    assert seen == ["dep_A1"]


# ------------------------------------------------- the watch process, store included ---
@pytest.fixture
def kube_runtime(deploy_settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKube]:
    """This process's deployments backend is the Kubernetes one, talking to the fake API."""
    from deployments import runtime

    with running_fake_kube() as (fake, url):
        configuration = k8s.Configuration()
        configuration.host = url
        backend = KubernetesBackend(
            KubernetesBackendConfig(namespace="models"), api_client=k8s.ApiClient(configuration)
        )
        runtime.reset_backend()
        runtime._backend = backend
        monkeypatch.setattr(deploy_settings, "kube_namespace", "models")
        monkeypatch.setattr(deploy_settings, "kube_watch_timeout_seconds", 1)
        yield fake
        fake.close()
        runtime.reset_backend()


def test_kube_watch_process_keeps_the_stored_status_true(
    client: Any, org: Any, worker: Any, kube_runtime: FakeKube
) -> None:
    """A deploy job brings the deployment up; then `conveyor kube-watch` (serve_watch with the
    reconciler's step) sees its pod vanish and its replacement get OOM-killed, and the stored
    status follows: degraded, then failed with oom_killed."""
    from deployments.jobs import reconcile_one
    from deployments.watch import serve_watch
    from tests.deployments.test_deploy_api import create, wait_status

    fake = kube_runtime
    created = create(client, org, name="kchat")
    running = wait_status(client, created["id"], org.headers, ("running", "failed"))
    assert running["status"] == "running", running
    assert running["endpoint"].endswith(".models.svc.cluster.local:8000")

    fake.tick_on_read = False
    lists = fake.lists.get("pods", 0)
    stop = threading.Event()
    thread = threading.Thread(target=serve_watch, args=(reconcile_one, stop), daemon=True)
    thread.start()
    try:
        fake.replacement_scenario = "oom"
        name = f"cv-{id_slug(created['id'])}"
        fake.delete_pod_behind_our_back(name)
        degraded = wait_status(client, created["id"], org.headers, ("degraded", "failed"), 10)
        assert degraded["status"] == "degraded", degraded
        deadline = time.monotonic() + 20
        body = degraded
        while body["status"] != "failed" and time.monotonic() < deadline:
            fake.tick()  # the replacement pod: pending, starting, OOM-killed
            time.sleep(0.2)
            body = client.get(f"/v1/deployments/{created['id']}", headers=org.headers).json()
        assert body["status"] == "failed", body
        assert body["status_reason"].startswith("oom_killed:"), body
        assert fake.lists["pods"] == lists + 1  # the watcher's first list; then only its watch
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()

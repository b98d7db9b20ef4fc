"""The Kubernetes backend: manifests validate; a stateful fake API plays each failure mode."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
from kubernetes import client as k8s

from deployments.backends.base import DeploymentSpec, Observation, derive_status
from deployments.backends.kubernetes import (
    KubernetesBackend,
    KubernetesBackendConfig,
    ManifestRenderer,
    object_name,
)
from deployments.rollout import wait_for_rollout
from tests.deployments.fake_kube import K8S_VERSION, FakeKube, running_fake_kube

SECRET = "hf_abcdefghijklmnopqrstuvwxyz"


def spec(**overrides: Any) -> DeploymentSpec:
    values: dict[str, Any] = {
        "id": "dep_K8s_1",
        "name": "llama-chat",
        "model": "llama",
        "model_path": "meta-llama/Llama-3.1-8B-Instruct",
        "runtime": "vllm",
        "gpu_type": "NVIDIA-A100-SXM4-80GB",
        "gpu_count": 2,
        "replicas": 1,
        "env": {"HF_TOKEN": SECRET},
        "runtime_options": {"max_model_len": 8192},
    }
    values.update(overrides)
    return DeploymentSpec.model_validate(values)


@pytest.fixture
def cluster() -> Iterator[tuple[FakeKube, KubernetesBackend]]:
    with running_fake_kube() as (fake, url):
        configuration = k8s.Configuration()
        configuration.host = url
        backend = KubernetesBackend(
            KubernetesBackendConfig(namespace="models"), api_client=k8s.ApiClient(configuration)
        )
        yield fake, backend
        backend.close()
        assert fake.bad_requests == []


def rollout(backend: KubernetesBackend, s: DeploymentSpec, deadline: float = 5.0) -> Observation:
    return wait_for_rollout(backend, s, None, deadline_s=deadline, poll_s=0.01)


@pytest.mark.parametrize(
    "variant",
    [
        {},
        {"gpu_count": 0, "gpu_type": None, "env": {}, "runtime_options": {}},
        {"replicas": 3, "runtime_options": {"extra_args": ["--enable-prefix-caching"]}},
    ],
)
def test_every_rendered_manifest_validates(variant: dict[str, Any]) -> None:
    renderer = ManifestRenderer(KubernetesBackendConfig(cache_storage_class="fast"))
    manifests = renderer.render(spec(**variant), owner_uid="0b6c6d6e-0000-4000-8000-000000000001")
    assert [m["kind"] for m in manifests] == [
        "Deployment",
        "Secret",
        "PersistentVolumeClaim",
        "Service",
    ]
    for manifest in manifests:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    for manifest in manifests[1:]:
        assert manifest["metadata"]["ownerReferences"][0]["kind"] == "Deployment"


def test_deployment_manifest_carries_gpus_probes_cache_and_secret() -> None:
    config = KubernetesBackendConfig(startup_budget_s=600, startup_period_s=10)
    deployment = ManifestRenderer(config).deployment(spec())
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    assert container["args"][:3] == [
        "meta-llama/Llama-3.1-8B-Instruct",
        "--served-model-name",
        "llama-chat",
    ]
    assert "--tensor-parallel-size" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "model-cache", "mountPath": "/models"} in container["volumeMounts"]
    assert container["envFrom"][0]["secretRef"]["name"] == f"{object_name(spec())}-env"
    assert SECRET not in str(deployment)  # the token lives only in the Secret


def test_success_applies_everything_server_side_and_runs(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    obs = rollout(backend, spec())
    assert obs.status == "running" and obs.ready_replicas == 1
    assert obs.endpoint == f"http://{object_name(spec())}.models.svc.cluster.local:8000"
    name = object_name(spec())
    assert fake.kinds("deployments") == [name]
    assert fake.kinds("services") == [name]
    assert fake.kinds("secrets") == [f"{name}-env"]
    assert fake.kinds("persistentvolumeclaims") == [f"{name}-cache"]
    uid = fake.objects[("deployments", "models", name)]["metadata"]["uid"]
    secret = fake.objects[("secrets", "models", f"{name}-env")]
    assert secret["metadata"]["ownerReferences"][0]["uid"] == uid

    assert fake.watches > 0  # the rollout waited on a watch of its pods, not a blind sleep
    applied = len(fake.applied)
    again = backend.reconcile(spec(), obs.state)
    assert again.status == "running" and len(fake.applied) == applied  # nothing to re-apply


def test_unschedulable_stays_deploying_then_fails_at_the_deadline(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    fake.scenario = "unschedulable"
    first = backend.reconcile(spec(), None)
    second = backend.reconcile(spec(), first.state)
    assert second.status == "deploying"
    assert second.reason is not None and second.reason.startswith("unschedulable:")
    assert "Insufficient nvidia.com/gpu" in second.reason
    final = rollout(backend, spec(), deadline=0.3)
    assert final.status == "failed"
    assert final.reason is not None and final.reason.startswith("rollout_timeout")
    assert "unschedulable" in final.reason


def test_image_pull_failure_fails_with_a_clear_reason(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    fake.scenario = "image_pull"
    obs = rollout(backend, spec())
    assert obs.status == "failed"
    assert obs.reason is not None and obs.reason.startswith("image_pull_failed:")


def test_oom_killed_is_reported_before_crash_loop(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    fake.scenario = "oom"
    obs = rollout(backend, spec())
    assert obs.status == "failed"
    assert obs.reason is not None and obs.reason.startswith("oom_killed:")
    assert "exit code 137" in obs.reason


def test_crash_loop_is_reported(cluster: tuple[FakeKube, KubernetesBackend]) -> None:
    fake, backend = cluster
    fake.scenario = "crash_loop"
    obs = rollout(backend, spec())
    assert obs.status == "failed"
    assert obs.reason is not None and obs.reason.startswith("crash_loop:")


def test_slow_start_waits_within_budget(cluster: tuple[FakeKube, KubernetesBackend]) -> None:
    fake, backend = cluster
    fake.scenario = "slow"
    seen: list[Observation] = []
    obs = wait_for_rollout(
        backend, spec(), None, deadline_s=10, poll_s=0.01, on_observation=seen.append
    )
    assert obs.status == "running"
    starting = [o for o in seen if o.status == "deploying"]
    assert len(starting) >= 5  # each poll and each watch advances the fake by one step
    assert all((o.reason or "").startswith("replicas_not_ready") for o in starting)


def test_slow_start_past_the_rollout_deadline_fails(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    fake.scenario = "slow"
    fake.deadline_exceeded = True  # the Deployment controller's progressDeadlineSeconds
    obs = rollout(backend, spec())
    assert obs.status == "failed"
    assert obs.reason is not None and obs.reason.startswith("rollout_timeout")


def test_pod_deleted_behind_our_back_degrades_then_recovers(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    obs = rollout(backend, spec())
    assert obs.status == "running"
    fake.delete_pod_behind_our_back(object_name(spec()))
    lost = backend.reconcile(spec(), obs.state)
    assert lost.ready_replicas == 0
    assert derive_status("running", lost) == "degraded"
    back = wait_for_rollout(backend, spec(), lost.state, deadline_s=5, poll_s=0.01)
    assert back.status == "running"


def test_deployment_deleted_behind_our_back_is_reapplied(
    cluster: tuple[FakeKube, KubernetesBackend],
) -> None:
    fake, backend = cluster
    obs = rollout(backend, spec())
    fake.delete("deployments", "models", object_name(spec()))
    again = backend.reconcile(spec(), obs.state)
    assert any("re-applied" in event for event in again.events)
    assert fake.kinds("deployments") == [object_name(spec())]


def test_scale_stop_and_delete(cluster: tuple[FakeKube, KubernetesBackend]) -> None:
    fake, backend = cluster
    obs = rollout(backend, spec())
    two = wait_for_rollout(backend, spec(replicas=2), obs.state, deadline_s=5, poll_s=0.01)
    assert two.status == "running" and two.ready_replicas == 2
    name = object_name(spec())
    stopped = backend.stop(spec(), two.state)
    assert stopped.status == "stopped"
    assert fake.objects[("deployments", "models", name)]["spec"]["replicas"] == 0
    restarted = wait_for_rollout(backend, spec(), stopped.state, deadline_s=5, poll_s=0.01)
    assert restarted.status == "running"
    assert fake.objects[("deployments", "models", name)]["spec"]["replicas"] == 1

    logs = backend.read_logs(spec(), restarted.state)
    assert logs and all(line.startswith(f"[{name}-") for line in logs)
    follower = backend.follow_logs(spec(), restarted.state)
    assert follower.poll() == []  # only lines written after it started
    fake.log(name, f"INFO request served token={SECRET}")
    fake.log(name, "INFO second line")
    fresh = follower.poll()
    assert [line.split("] ", 1)[1] for line in fresh] == [
        "INFO request served token=****",
        "INFO second line",
    ]
    assert follower.poll() == []  # nothing seen twice

    backend.delete(spec(), restarted.state)
    backend.delete(spec(), restarted.state)  # idempotent
    for plural in ("deployments", "services", "secrets", "persistentvolumeclaims"):
        assert fake.kinds(plural) == []

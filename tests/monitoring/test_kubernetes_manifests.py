"""deploy/kubernetes: both overlays render with ``kubectl kustomize``; every object validates
(built-in kinds with kubernetes-validate, strict, at the deployments backend's cluster version;
KEDA ScaledObjects against KEDA's published CRD models, unknown fields refused); and the
rendered YAML keeps the operational invariants: one worker Deployment and one ScaledObject per
queue, grace periods at least the queue's longest soft time limit, one beat, probes, the
migration step, Flower's basic auth and the GPU queue scaling to zero."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject

from config.queues import KINDS, QUEUES
from tests.deployments.fake_kube import K8S_VERSION

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
KEDA_API = "keda.sh/v1alpha1"
# Keys KEDA's redis (list length) scaler reads; trigger metadata is free-form in the CRD.
REDIS_TRIGGER_KEYS = {
    "address",
    "addressFromEnv",
    "host",
    "hostFromEnv",
    "port",
    "portFromEnv",
    "username",
    "usernameFromEnv",
    "passwordFromEnv",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    "listName",
    "listLength",
    "activationListLength",
}


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI", "").lower() == "true":
            raise RuntimeError("kubectl is needed to render the kustomize overlays")
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module", params=["dev", "production"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Worker Deployments by queue."""
    out = {}
    for deployment in by_kind(objects, "Deployment").values():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if labels.get("app.kubernetes.io/component") == "worker":
            out[labels["conveyor.io/queue"]] = deployment
    return out


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"])


def test_every_object_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    assert objects
    for obj in objects:
        if obj["apiVersion"] == KEDA_API:
            assert obj["kind"] == "ScaledObject"
            model = ScaledObject.model_validate(obj)
            # The models ignore unknown fields: a round trip that loses one shows it.
            assert model.model_dump(by_alias=True, exclude_unset=True) == obj, obj
            for trigger in obj["spec"]["triggers"]:
                assert trigger["type"] == "redis"
                assert set(trigger["metadata"]) <= REDIS_TRIGGER_KEYS, trigger
                assert all(isinstance(v, str) for v in trigger["metadata"].values())
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == "conveyor"


def test_validation_catches_a_broken_object() -> None:
    """The checks above can fail: a typo in a Deployment and in a ScaledObject."""
    objects = render("dev")
    api = dict(by_kind(objects, "Deployment")["conveyor-api"])
    api["spec"] = {**api["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(api, K8S_VERSION, strict=True)
    scaled = dict(by_kind(objects, "ScaledObject")["conveyor-worker-crawl"])
    scaled["spec"] = {**scaled["spec"], "minReplicas": 1}
    assert ScaledObject.model_validate(scaled).model_dump(by_alias=True, exclude_unset=True) != (
        scaled
    )


def test_one_worker_deployment_and_scaled_object_per_queue(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    queue_workers = workers(objects)
    assert set(queue_workers) == set(QUEUES)
    scaled = by_kind(objects, "ScaledObject")
    targets = {s["spec"]["scaleTargetRef"]["name"]: s for s in scaled.values()}
    assert len(targets) == len(scaled) == len(QUEUES)
    for queue, deployment in queue_workers.items():
        name = deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replicas"
        args = pod(deployment)["containers"][0]["args"]
        assert args[0] == "worker"
        consumed = args[args.index("--queues") + 1] if "--queues" in args else None
        group = args[args.index("--group") + 1] if "--group" in args else None
        assert queue in (consumed, group), args
        obj = targets[name]
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["metadata"]["listName"] == queue
        assert 0 <= obj["spec"]["minReplicaCount"] <= obj["spec"]["maxReplicaCount"]


def test_grace_period_covers_the_longest_soft_time_limit(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    for queue, deployment in workers(objects).items():
        longest = max((k.soft_time_limit for k in KINDS.values() if k.queue == queue), default=0)
        assert pod(deployment)["terminationGracePeriodSeconds"] >= longest, queue


def test_beat_api_flower_and_migrations(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployments = by_kind(objects, "Deployment")
    beat = deployments["conveyor-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    assert "conveyor-beat" not in {
        s["spec"]["scaleTargetRef"]["name"] for s in by_kind(objects, "ScaledObject").values()
    }

    api = pod(deployments["conveyor-api"])["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/v1/health/status"
    assert api["livenessProbe"]["httpGet"]["path"] == "/v1/health"
    service = by_kind(objects, "Service")["conveyor-api"]
    assert (
        service["spec"]["selector"]
        == deployments["conveyor-api"]["spec"]["selector"]["matchLabels"]
    )

    (job,) = by_kind(objects, "Job").values()
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]
    store_users = [
        "conveyor-api",
        "conveyor-beat",
        *(d["metadata"]["name"] for d in workers(objects).values()),
    ]
    for name in store_users:
        (init,) = pod(deployments[name])["initContainers"]
        assert init["command"][-2:] == ["store.migrate", "--wait"], name

    flower = pod(deployments["conveyor-flower"])["containers"][0]
    env = {e["name"]: e for e in flower["env"]}
    for key in ("CONVEYOR_FLOWER_USER", "CONVEYOR_FLOWER_PASSWORD"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == "conveyor-secrets"


def test_disruption_budgets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    budgets = by_kind(objects, "PodDisruptionBudget")
    assert budgets["conveyor-api"]["spec"]["minAvailable"] >= 1
    for deployment in workers(objects).values():
        name = deployment["metadata"]["name"]
        assert budgets[name]["spec"]["selector"] == deployment["spec"]["selector"]


def test_gpu_queue_scales_to_zero_and_requests_a_gpu_in_production() -> None:
    objects = render("production")
    inference = workers(objects)["inference"]
    resources = pod(inference)["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    scaled = by_kind(objects, "ScaledObject")["conveyor-worker-inference"]
    assert scaled["spec"]["minReplicaCount"] == 0
    assert scaled["spec"]["triggers"][0]["metadata"]["activationListLength"] == "0"
    # No other worker asks for a GPU.
    for queue, deployment in workers(objects).items():
        if queue != "inference":
            assert "nvidia.com/gpu" not in str(pod(deployment)), queue
    assert by_kind(objects, "Deployment")["conveyor-api"]["spec"]["replicas"] >= 2


def test_dev_runs_its_own_backing_services() -> None:
    objects = render("dev")
    assert {"redis", "postgres"} <= set(by_kind(objects, "Deployment"))
    assert "nvidia.com/gpu" not in str(objects)


def test_the_init_containers_wait_returns_once_migrated(migrated: dict[str, object]) -> None:
    """What the init containers run: ``python -m store.migrate --wait`` exits 0 at once on a
    migrated store (the session's) and the check it polls says so."""
    import sys

    from store.migrate import is_current

    assert is_current()
    result = subprocess.run(
        [sys.executable, "-m", "store.migrate", "--wait"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr

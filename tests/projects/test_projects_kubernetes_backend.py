"""The app projects' Kubernetes backend: every rendered manifest validates (core kinds with
kubernetes-validate, HTTPRoute against the Gateway API schema kept here), and the logic runs
against the stateful fake API server: rollouts, Kaniko builds, image pull failures, crash loops,
readiness that never passes, pods and Deployments deleted behind our back, rollback, TCP proxy
NetworkPolicies, logs and teardown."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from kubernetes import client as k8s

from config import Settings
from projects import kubernetes as render
from projects.backends.base import (
    Artifact,
    BuildSpec,
    EnvironmentRef,
    LogQuery,
    Observation,
    ProjectBackendError,
    ReleaseSpec,
    ServiceSpec,
    SourceSpec,
    TcpProxySpec,
    UnsupportedBuild,
    VolumeSpec,
)
from projects.backends.kubernetes import KubernetesProjectBackend, KubernetesProjectsConfig
from tests.deployments.fake_kube import K8S_VERSION, running_fake_kube
from tests.projects.fake_kube_projects import (
    DIGEST,
    HTTPROUTE_SCHEMA,
    ProjectsFakeKube,
    projects_handler,
)

SECRET = "s3cr3t-value-for-the-app"
SHA_A = "a" * 40
SHA_B = "b" * 40
ENV = EnvironmentRef(
    org_id="org_1",
    project_id="prj_1",
    project_slug="shop",
    environment_id="env_1",
    environment="production",
    domain="shop.example.com",
)
Cluster = tuple[ProjectsFakeKube, KubernetesProjectBackend]


def validate(manifest: dict[str, Any]) -> None:
    if manifest["apiVersion"] == render.GATEWAY_API:
        jsonschema.validate(manifest, HTTPROUTE_SCHEMA)
    else:
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)


def release(
    deployment_id: str = "dep_1",
    image: str = f"registry.test/apps/shop:{SHA_A}",
    env_vars: dict[str, str] | None = None,
    **overrides: Any,
) -> ReleaseSpec:
    values: dict[str, Any] = {
        "deployment_id": deployment_id,
        "env": ENV,
        "artifact": Artifact.model_validate(
            {"kind": "image", "image": image, "git_commit": image.rsplit(":", 1)[-1]}
        ),
        "services": [
            ServiceSpec(name="web", port=8080, replicas=2),
            ServiceSpec(name="worker", command="python worker.py", replicas=1),
        ],
        "env_vars": {"GREETING": "hello", "API_TOKEN": SECRET} if env_vars is None else env_vars,
        "secret_keys": ["API_TOKEN"],
        "health_check_path": "/healthz",
        "volumes": [VolumeSpec(id="vol_1", name="data", mount_path="/data", size_gb=2)],
        "tcp_proxies": [
            TcpProxySpec(id="tcp_1", service="web", external_port=31000, target_port=9000, allow=[])
        ],
    }
    values.update(overrides)
    return ReleaseSpec.model_validate(values)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    fake = ProjectsFakeKube()
    with running_fake_kube(fake, projects_handler) as (_, url):
        configuration = k8s.Configuration()
        configuration.host = url
        backend = KubernetesProjectBackend(
            KubernetesProjectsConfig(poll_s=0.01, registry="registry.test/apps"),
            api_client=k8s.ApiClient(configuration),
        )
        yield fake, backend
        backend.close()
        assert fake.bad_requests == []


def ns() -> str:
    return render.environment_namespace("cv-app", "prj_1", "shop", "production")


def live(fake: ProjectsFakeKube, plural: str, name: str) -> dict[str, Any]:
    return fake.objects[(plural, ns(), name)]


def deploy(backend: KubernetesProjectBackend, spec: ReleaseSpec, state: Any = None) -> Observation:
    """A rollout; the deploy job passes no state (the previous release is read back from the
    cluster), so most tests do too."""
    return backend.rollout(spec, state, timeout_s=5)


# ------------------------------------------------------------------------- rendering ---
def test_every_rendered_manifest_validates_and_the_route_schema_can_fail() -> None:
    scope = render.Scope(ns(), "prj_1", "production")
    work = render.Workload(
        service="web",
        deployment_id="dep_1",
        image="registry.test/apps/shop:abc",
        env_secret="env-dep-1",
        replicas=2,
        port=8080,
        command="gunicorn app:app --bind 0.0.0.0:$PORT",
        health_check_path="/healthz",
        volumes=(("vol-data", "/data"),),
        git_commit=SHA_A,
        pull_secret="regcred",
    )
    worker = render.Workload("worker", "dep_1", "img:1", "env-dep-1", command="python w.py")
    build = render.Build("dep_1", "https://git.example.com/shop.git", SHA_A, "r/shop:" + SHA_A)
    manifests = [
        render.namespace(scope, "shop"),
        render.env_secret(scope, "env-dep-1", "dep_1", {"A": "1", "API_TOKEN": SECRET}),
        render.deployment(scope, work),
        render.deployment(scope, worker),
        render.deployment(scope, render.Workload("tcp", "dep_1", "img", "env", port=5432)),
        render.service(scope, "web"),
        render.http_route(scope, ["Shop.Example.com."], "web", "conveyor", "gw"),
        render.volume_claim(scope, "data", 2, "fast"),
        render.volume_claim(scope, "cache", 1),
        render.tcp_proxy_service(scope, "web", 31000, 9000, "NodePort"),
        render.tcp_proxy_service(scope, "web", 5432, 5432, "LoadBalancer"),
        render.tcp_proxy_policy(scope, "web", 9000, ["203.0.113.0/24"], 8080, "gw"),
        render.tcp_proxy_policy(scope, "web", 9000, [], 8080, "gw"),
        render.tcp_proxy_policy(scope, "web", 8080, ["198.51.100.7/32"], 8080, "gw"),
        render.build_job(scope, build),
        render.build_job(scope, render.Build("d", "r", SHA_B, "i:b", push_secret="regcred")),
    ]
    for manifest in manifests:
        validate(manifest)
    route = render.http_route(scope, ["shop.example.com"], "web", "conveyor", "gw")
    broken = {**route, "spec": {**route["spec"], "hostnames": ["Bad_Host!"]}}
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        validate({**route, "spec": {**route["spec"], "rules": [{"backendRefs": [{"port": 80}]}]}})


def test_the_deployment_rolls_without_downtime_and_keeps_secrets_out() -> None:
    scope = render.Scope(ns(), "prj_1", "production")
    work = render.Workload(
        "web", "dep_9", "img:9", "env-dep-9", replicas=3, port=8080, health_check_path="/up"
    )
    manifest = render.deployment(scope, work)
    spec = manifest["spec"]
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = spec["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/up", "port": "http"}
    assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    assert container["envFrom"] == [{"secretRef": {"name": "env-dep-9"}}]
    assert {"name": "PORT", "value": "8080"} in container["env"]
    assert spec["template"]["metadata"]["labels"][render.DEPLOYMENT_LABEL] == "dep_9"
    assert render.DEPLOYMENT_LABEL not in spec["selector"]["matchLabels"]  # selector is stable
    worker = render.deployment(scope, render.Workload("w", "d", "i", "e", port=7000, http=False))
    probe = worker["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["tcpSocket"] == {"port": "http"}
    job = render.build_job(scope, render.Build("d", "https://g/x.git", SHA_A, "r/x:" + SHA_A))
    assert "envFrom" not in str(job) and "secretRef" not in str(job)  # no app env in builds


def test_tcp_proxy_network_policy_allows_only_the_allow_list() -> None:
    scope = render.Scope(ns(), "prj_1", "production")
    allowed = render.tcp_proxy_policy(
        scope, "db", 5432, ["203.0.113.0/24", "198.51.100.7/32"], None, "gw"
    )
    assert allowed["spec"]["policyTypes"] == ["Ingress"]
    assert allowed["spec"]["ingress"] == [
        {
            "from": [
                {"ipBlock": {"cidr": "203.0.113.0/24"}},
                {"ipBlock": {"cidr": "198.51.100.7/32"}},
            ],
            "ports": [{"port": 5432, "protocol": "TCP"}],
        }
    ]
    nobody = render.tcp_proxy_policy(scope, "db", 5432, [], None, "gw")
    assert nobody["spec"]["ingress"] == []  # selected for Ingress, no rule: nobody gets in
    # The HTTP port stays reachable by the Gateway; when the proxy targets the HTTP port
    # itself, only the Gateway's namespace (not everyone) reaches it besides the allow-list.
    other_port = render.tcp_proxy_policy(scope, "web", 9000, [], 8080, "gw")
    assert other_port["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    same_port = render.tcp_proxy_policy(scope, "web", 8080, [], 8080, "gw")
    assert same_port["spec"]["ingress"] == [
        {
            "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}}],
            "ports": [{"port": 8080, "protocol": "TCP"}],
        }
    ]
    proxy = render.tcp_proxy_service(scope, "db", 31000, 5432, "NodePort")
    assert proxy["spec"]["externalTrafficPolicy"] == "Local"  # ipBlocks see the client address
    assert proxy["spec"]["ports"][0]["nodePort"] == 31000


def test_namespaces_are_unique_per_project_and_dns_safe() -> None:
    a = render.environment_namespace("cv-app", "prj_1", "Shop_App" * 10, "Production")
    b = render.environment_namespace("cv-app", "prj_2", "Shop_App" * 10, "Production")
    assert a != b and len(a) <= 63
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": a}}, K8S_VERSION, strict=True
    )


def test_settings_select_and_configure_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PROJECTS_KUBE_REGISTRY", "ghcr.io/acme")
    monkeypatch.setenv("CONVEYOR_PROJECTS_KUBE_TCP_SERVICE_TYPE", "NodePort")
    monkeypatch.setenv("CONVEYOR_PROJECTS_KUBE_MEMORY_LIMIT", "1Gi")
    config = KubernetesProjectsConfig.from_settings(Settings())
    assert config.registry == "ghcr.io/acme"
    assert config.tcp_service_type == "NodePort"
    assert config.resources.memory_limit == "1Gi"
    assert KubernetesProjectsConfig().registry_secret is None


# ----------------------------------------------------------------------------- builds ---
def git_repo(tmp_path: Path) -> tuple[str, str]:
    repo = tmp_path / "app"
    repo.mkdir()
    run = {"cwd": repo, "check": True, "capture_output": True}
    subprocess.run(["git", "init", "-q", "-b", "main"], **run)  # type: ignore[call-overload]
    (repo / "Dockerfile").write_text("FROM python:3.11-slim\nCMD python -m http.server $PORT\n")
    subprocess.run(["git", "add", "."], **run)  # type: ignore[call-overload]
    subprocess.run(  # type: ignore[call-overload]
        ["git", "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "one"], **run
    )
    head = subprocess.run(  # type: ignore[call-overload]
        ["git", "rev-parse", "HEAD"], text=True, **run
    ).stdout.strip()
    return f"file://{repo}", head


def build_spec(repository: str, commit: str | None, deployment_id: str = "dep_b1") -> BuildSpec:
    return BuildSpec(
        deployment_id=deployment_id,
        env=ENV,
        source=SourceSpec(
            git_repository=repository, git_branch="main", git_commit=commit, build_pack="dockerfile"
        ),
        build_env={"API_TOKEN": SECRET},
        secret_keys=["API_TOKEN"],
    )


def test_a_dockerfile_build_runs_kaniko_at_the_branch_head_and_is_reused(
    cluster: Cluster, tmp_path: Path
) -> None:
    fake, backend = cluster
    repository, head = git_repo(tmp_path)
    seen: list[str] = []
    artifact = backend.build(build_spec(repository, None), seen.append)
    tag = f"registry.test/apps/shop:{head}"
    assert artifact.kind == "image" and artifact.git_commit == head
    assert artifact.image == f"{tag}@{DIGEST}"  # by digest, from Kaniko's termination message
    assert "Cloning into '/workspace'..." in seen
    assert seen.index("INFO[0004] RUN pip install -r requirements.txt") < seen.index("INFO done")
    job = next(m for m in fake.applied if m["kind"] == "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--destination={tag}" in args
    checkout = job["spec"]["template"]["spec"]["initContainers"][0]["env"]
    assert {"name": "GIT_COMMIT", "value": head} in checkout
    assert SECRET not in str(job)  # the build never sees the app's env
    jobs = len(fake.kinds("jobs"))
    again = backend.build(build_spec(repository, head, "dep_b2"), seen.append)
    assert again.reused and again.image == artifact.image
    assert len(fake.kinds("jobs")) == jobs  # no second Kaniko job for the same source


def test_a_failed_kaniko_job_fails_the_build_with_its_log(cluster: Cluster) -> None:
    fake, backend = cluster
    fake.build_scenario = "failure"
    seen: list[str] = []
    with pytest.raises(ProjectBackendError) as failed:
        backend.build(build_spec("https://git.example.com/shop.git", SHA_A), seen.append)
    assert failed.value.code == "build_failed"
    assert "BackoffLimitExceeded" in failed.value.message
    assert "No matching distribution found for nosuchpackage==9.9" in failed.value.message
    assert any("exit status 1" in line for line in seen)
    assert fake.kinds("jobs") == []  # a failed build's Job is removed


def test_an_image_source_needs_no_build_and_procfile_names_the_local_backend(
    cluster: Cluster,
) -> None:
    fake, backend = cluster
    source = SourceSpec(docker_image="nginx:1.27")
    spec = BuildSpec(deployment_id="dep_i", env=ENV, source=source)
    artifact = backend.build(spec, lambda line: None)
    assert artifact.image == "nginx:1.27" and fake.kinds("jobs") == []
    with pytest.raises(UnsupportedBuild, match="`local` backend"):
        backend.check_source(SourceSpec(git_repository="https://g/x.git", build_pack="procfile"))
    with pytest.raises(ProjectBackendError, match="no service to run"):
        deploy(backend, release(services=[]))
    assert fake.kinds("deployments") == []
    web = ServiceSpec(name="web", port=80)  # no command: the image's own entrypoint
    assert deploy(backend, release(services=[web], tcp_proxies=[])).status == "running"
    container = live(fake, "deployments", "svc-web")["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and "args" not in container
    with pytest.raises(UnsupportedBuild, match="nixpacks"):
        backend.check_source(SourceSpec(git_repository="https://g/x.git", build_pack="nixpacks"))


# --------------------------------------------------------------------------- rollouts ---
def test_a_rollout_applies_everything_and_status_is_read_from_the_cluster(
    cluster: Cluster,
) -> None:
    fake, backend = cluster
    state = backend.provision_environment(ENV, None)
    assert fake.kinds("namespaces") == [ns()]
    assert fake.kinds("httproutes") == ["route"]
    obs = deploy(backend, release(), state)
    assert obs.status == "running", obs.reason
    assert obs.active_deployment_id == "dep_1"
    assert obs.url == "https://shop.example.com"
    assert {(s.name, s.ready, s.desired) for s in obs.services} == {("web", 2, 2), ("worker", 1, 1)}
    assert fake.kinds("deployments") == ["svc-web", "svc-worker"]
    assert fake.kinds("services") == ["svc-web", "tcp-web"]
    assert fake.kinds("persistentvolumeclaims") == ["vol-data"]
    assert fake.kinds("networkpolicies") == ["tcp-web"]
    secret = live(fake, "secrets", "env-dep-1")
    assert secret["stringData"] == {"GREETING": "hello", "API_TOKEN": SECRET}
    web = live(fake, "deployments", "svc-web")["spec"]["template"]["spec"]
    assert web["containers"][0]["volumeMounts"] == [{"name": "vol-data", "mountPath": "/data"}]
    route = live(fake, "httproutes", "route")["spec"]
    assert route["hostnames"] == ["shop.example.com"]
    assert route["rules"][0]["backendRefs"] == [{"name": "svc-web", "port": 80}]
    for manifest in fake.applied:
        validate(manifest)  # what reached the API server, not only what we render in tests

    status = backend.status(ENV, obs.state)
    assert (status.status, status.ready_replicas, status.desired_replicas) == ("running", 3, 3)
    unknown = backend.status(ENV, None)  # no stored state: all of it read from the cluster
    assert (unknown.status, unknown.active_deployment_id) == ("running", "dep_1")

    # A second release: new pods, the old ones drained, the old env Secret pruned.
    second = deploy(backend, release("dep_2", f"registry.test/apps/shop:{SHA_B}"), obs.state)
    assert second.status == "running" and second.active_deployment_id == "dep_2"
    pods = fake.pods_of(ns(), "svc-web")
    assert pods and {p.labels[render.DEPLOYMENT_LABEL] for p in pods} == {"dep_2"}
    assert fake.kinds("secrets") == ["env-dep-2"]


def test_image_pull_failure_fails_and_the_old_release_keeps_serving(cluster: Cluster) -> None:
    fake, backend = cluster
    deploy(backend, release())
    serving = {p.name for p in fake.pods_of(ns(), "svc-web")}
    fake.scenario = "image_pull"
    failed = deploy(backend, release("dep_2", "registry.test/apps/shop:missing"))
    assert failed.status == "failed"
    assert failed.reason is not None and failed.reason.startswith("image_pull_failed:")
    assert "ErrImagePull" in failed.reason
    assert failed.active_deployment_id == "dep_1"
    assert serving <= {p.name for p in fake.pods_of(ns(), "svc-web")}  # never stopped
    web = live(fake, "deployments", "svc-web")
    assert web["spec"]["template"]["spec"]["containers"][0]["image"].endswith(SHA_A)
    status = backend.status(ENV, failed.state)
    assert status.status == "running" and status.active_deployment_id == "dep_1"
    assert {p.labels[render.DEPLOYMENT_LABEL] for p in fake.pods_of(ns(), "svc-web")} == {"dep_1"}


def test_crash_loop_fails_with_the_last_log_lines_and_masks_secrets(cluster: Cluster) -> None:
    fake, backend = cluster
    deploy(backend, release())
    fake.scenario = "crash_loop"
    failed = deploy(backend, release("dep_2", env_vars={"API_TOKEN": SECRET}))
    assert failed.status == "failed"
    assert failed.reason is not None and failed.reason.startswith("crash_loop:")
    assert "last lines: INFO starting vLLM API server" in failed.reason  # the pod's log
    assert failed.active_deployment_id == "dep_1"
    assert backend.status(ENV, failed.state).status == "running"


def test_a_first_release_that_crashes_is_removed(cluster: Cluster) -> None:
    fake, backend = cluster
    fake.scenario = "crash_loop"
    failed = deploy(backend, release())
    assert failed.status == "failed" and failed.active_deployment_id is None
    assert fake.kinds("deployments") == [] and fake.pods_of(ns(), "svc-web") == []
    assert "active" not in failed.state.data


def test_readiness_that_never_passes_fails_at_the_deadline_with_old_pods_serving(
    cluster: Cluster,
) -> None:
    fake, backend = cluster
    deploy(backend, release())
    serving = {p.name for p in fake.pods_of(ns(), "svc-web")}
    fake.scenario = "never_ready"
    started = time.monotonic()
    failed = backend.rollout(release("dep_2"), None, timeout_s=0.5)
    assert time.monotonic() - started >= 0.5
    assert failed.status == "failed"
    assert failed.reason is not None and failed.reason.startswith("health_check_failed:")
    assert "GET /healthz" in failed.reason and "0/2 ready" in failed.reason
    assert serving <= {p.name for p in fake.pods_of(ns(), "svc-web")}  # never stopped
    status = backend.status(ENV, failed.state)
    assert status.status == "running" and status.active_deployment_id == "dep_1"
    assert status.ready_replicas == 3


def test_a_pod_deleted_behind_our_back_is_replaced_and_observed(cluster: Cluster) -> None:
    fake, backend = cluster
    obs = deploy(backend, release())
    fake.delete_pod_behind_our_back("svc-web")
    lost = backend.status(ENV, obs.state)
    assert lost.status == "degraded" and lost.ready_replicas < lost.desired_replicas
    assert lost.reason is not None and "service web" in lost.reason
    for _ in range(50):
        back = backend.status(ENV, lost.state)
        if back.status == "running":
            break
    assert back.status == "running" and back.ready_replicas == 3

    fake.delete("deployments", ns(), "svc-worker")  # a Deployment too
    again = backend.status(ENV, back.state)
    assert any("svc-worker missing" in e for e in again.events)
    assert "svc-worker" in fake.kinds("deployments")


def test_stop_removes_the_workloads_only_and_a_rollout_brings_them_back(cluster: Cluster) -> None:
    fake, backend = cluster
    obs = deploy(backend, release())
    stopped = backend.stop(ENV, obs.state)
    assert stopped.status == "stopped" and stopped.active_deployment_id is None
    assert fake.kinds("deployments") == [] and fake.pods_of(ns(), "svc-web") == []
    # Never deleted: the namespace, its secret, services, route and volume claim stay.
    assert fake.kinds("persistentvolumeclaims") == ["vol-data"]
    assert fake.kinds("secrets") == ["env-dep-1"] and fake.kinds("httproutes") == ["route"]
    assert fake.kinds("services") == ["svc-web", "tcp-web"]
    seen = backend.status(ENV, stopped.state)  # observing does not re-apply what was stopped
    assert seen.status == "stopped" and fake.kinds("deployments") == [] and not seen.events
    assert backend.stop(ENV, seen.state).status == "stopped"  # idempotent
    again = deploy(backend, release("dep_2", f"registry.test/apps/shop:{SHA_B}"), seen.state)
    assert again.status == "running" and fake.kinds("deployments") == ["svc-web", "svc-worker"]


def test_a_container_restart_is_reported_as_a_crash(cluster: Cluster) -> None:
    fake, backend = cluster
    obs = deploy(backend, release())
    for pod in fake.pods_of(ns(), "svc-worker"):
        pod.script = ["ready", "oom"]  # the worker gets OOM-killed after serving
        pod.step = 0
    crashed = backend.status(ENV, obs.state)
    assert crashed.status == "degraded"
    assert crashed.reason is not None and crashed.reason.startswith("oom_killed:")
    assert [(c.service, c.exit_code, c.deployment_id) for c in crashed.crashes] == [
        ("worker", 137, "dep_1")
    ]
    assert backend.status(ENV, crashed.state).crashes == []  # each restart reported once


def test_rollback_reapplies_the_old_image_and_env_snapshot(cluster: Cluster) -> None:
    fake, backend = cluster
    one = release("dep_1", f"registry.test/apps/shop:{SHA_A}", {"GREETING": "one"})
    first = deploy(backend, one)
    second = deploy(
        backend,
        release("dep_2", f"registry.test/apps/shop:{SHA_B}", {"GREETING": "two"}),
        first.state,
    )
    assert second.active_deployment_id == "dep_2"
    jobs = len(fake.applied)
    back = backend.rollback(
        one.model_copy(update={"deployment_id": "dep_3", "rollback_of": "dep_1"}),
        second.state,
        timeout_s=5,
    )
    assert back.status == "running" and back.active_deployment_id == "dep_3"
    assert not [m for m in fake.applied[jobs:] if m["kind"] == "Job"]  # no rebuild
    pod = live(fake, "deployments", "svc-web")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == f"registry.test/apps/shop:{SHA_A}"
    secret_name = pod["containers"][0]["envFrom"][0]["secretRef"]["name"]
    assert live(fake, "secrets", secret_name)["stringData"] == {"GREETING": "one"}
    assert {p.labels[render.DEPLOYMENT_LABEL] for p in fake.pods_of(ns(), "svc-web")} == {"dep_3"}


def test_tcp_proxy_allow_list_becomes_network_policy_ip_blocks(cluster: Cluster) -> None:
    fake, backend = cluster
    obs = deploy(backend, release())
    policy = live(fake, "networkpolicies", "tcp-web")["spec"]
    assert policy["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]  # 9000: nobody
    proxy = TcpProxySpec(
        id="tcp_1", service="web", external_port=31000, target_port=9000, allow=["203.0.113.0/24"]
    )
    applied = len(fake.applied)
    assert backend.apply_tcp_proxies(ENV, [proxy], obs.state) == obs.state  # no rollout
    assert {m["kind"] for m in fake.applied[applied:]} == {"Service", "NetworkPolicy"}
    rules = live(fake, "networkpolicies", "tcp-web")["spec"]["ingress"]
    assert rules[0] == {
        "from": [{"ipBlock": {"cidr": "203.0.113.0/24"}}],
        "ports": [{"port": 9000, "protocol": "TCP"}],
    }
    service = live(fake, "services", "tcp-web")["spec"]
    assert service["type"] == "LoadBalancer" and service["ports"][0]["targetPort"] == 9000
    deploy(backend, release("dep_3", tcp_proxies=[]))
    assert fake.kinds("networkpolicies") == [] and fake.kinds("services") == ["svc-web"]


def test_logs_tail_and_follow(cluster: Cluster) -> None:
    fake, backend = cluster
    obs = deploy(backend, release())
    follower = backend.follow_logs(ENV, obs.state, LogQuery(service="web"))
    assert next(follower) == []  # only what is written after it started
    fake.log("svc-web", "INFO GET / 200")
    fake.log("svc-web", "ERROR boom")
    fresh = next(follower)
    assert [(line.service, line.msg, line.level) for line in fresh] == [
        ("web", "INFO GET / 200", "info"),
        ("web", "INFO GET / 200", "info"),  # from each of the two web replicas
        ("web", "ERROR boom", "error"),
        ("web", "ERROR boom", "error"),
    ]
    assert next(follower) == []  # nothing twice
    tail = backend.logs(ENV, obs.state, LogQuery(tail=3, deployment_id="dep_1"))
    assert len(tail) == 3 and tail[-1].msg == "ERROR boom" and tail[-1].deployment_id == "dep_1"
    assert backend.logs(ENV, obs.state, LogQuery(tail=50, deployment_id="dep_0")) == []


def test_teardown_removes_the_namespace_and_everything_in_it(cluster: Cluster) -> None:
    fake, backend = cluster
    obs = deploy(backend, release())
    staging = ENV.model_copy(update={"environment": "staging", "environment_id": "env_2"})
    other = backend.provision_environment(staging, None)
    assert fake.namespace_objects(ns())
    backend.teardown(ENV, obs.state)
    backend.teardown(ENV, obs.state)  # idempotent
    assert fake.namespace_objects(ns()) == []
    assert fake.kinds("namespaces") == [other.data["namespace"]]  # other environments stay
    gone = backend.status(ENV, obs.state)
    assert gone.status == "stopped" and gone.reason is not None and "namespace" in gone.reason


def test_the_registry_secret_is_copied_into_each_environment(cluster: Cluster) -> None:
    fake, plain = cluster
    backend = KubernetesProjectBackend(
        KubernetesProjectsConfig(poll_s=0.01, registry_secret="regcred"), api_client=plain.api
    )
    with pytest.raises(ProjectBackendError, match="conveyor/regcred not found"):
        backend.provision_environment(ENV, None)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "conveyor"}}
    fake.apply("namespaces", "", "conveyor", namespace)
    config = {".dockerconfigjson": "eyJhdXRocyI6e319"}
    fake.apply(
        "secrets",
        "conveyor",
        "regcred",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "regcred", "namespace": "conveyor"},
            "type": "kubernetes.io/dockerconfigjson",
            "data": config,
        },
    )
    obs = deploy(backend, release())
    assert obs.status == "running"
    copied = live(fake, "secrets", "regcred")
    assert copied["data"] == config and copied["type"] == "kubernetes.io/dockerconfigjson"
    pod = live(fake, "deployments", "svc-web")["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    backend.build(build_spec("https://git.example.com/shop.git", SHA_A), lambda line: None)
    job = live(fake, "jobs", render.build_job_name("dep_b1"))["spec"]["template"]["spec"]
    assert {"name": "registry", "mountPath": "/kaniko/.docker"} in job["containers"][0][
        "volumeMounts"
    ]


def test_resolving_a_branch_refuses_the_ext_transport(cluster: Cluster, tmp_path: Path) -> None:
    _, backend = cluster
    marker = tmp_path / "ran"
    source = SourceSpec(
        git_repository=f"ext::sh -c touch% {marker}", git_branch="main", build_pack="dockerfile"
    )
    with pytest.raises(ProjectBackendError) as failed:
        backend.resolve_commit(source)
    assert failed.value.code == "build_failed" and not marker.exists()
    missing = SourceSpec(git_repository=git_repo(tmp_path)[0], git_branch="nope")
    with pytest.raises(ProjectBackendError, match="refs/heads/nope not found"):
        backend.resolve_commit(missing)


def test_status_during_a_rollout_is_deploying_with_the_old_release_active(
    cluster: Cluster,
) -> None:
    fake, backend = cluster
    first = deploy(backend, release())
    fake.scenario = "never_ready"
    other = KubernetesProjectBackend(
        backend.config, api_client=k8s.ApiClient(backend.api.configuration)
    )
    outcome: list[Observation] = []
    rolling = threading.Thread(
        target=lambda: outcome.append(other.rollout(release("dep_2"), None, timeout_s=1.5))
    )
    rolling.start()
    try:
        seen = backend.status(ENV, first.state)
        for _ in range(100):
            if seen.status == "deploying":
                break
            time.sleep(0.01)
            seen = backend.status(ENV, first.state)
        assert seen.status == "deploying" and seen.active_deployment_id == "dep_1"
    finally:
        rolling.join()
        other.close()
    assert outcome[0].status == "failed"
    assert backend.status(ENV, outcome[0].state).status == "running"

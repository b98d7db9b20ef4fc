"""Kubernetes manifests of app projects (pure: rendering only, no API calls).

An environment is a Namespace. A deployment of it renders, per service: a Secret with the
deployment's env snapshot (immutable, one per deployment, so a rollback re-applies exactly the
snapshot it names and old pods keep their own env while they drain), a Deployment (rolling
update with ``maxUnavailable: 0`` and ``maxSurge: 1``, a readiness probe on the health path,
resource requests and limits, labelled with the deployment id) and, for a service with a port,
a ClusterIP Service. The environment's domain is a Gateway API ``HTTPRoute`` to the ``web``
service; volumes are PVCs. A TCP proxy is a NodePort/LoadBalancer Service (source addresses
kept: ``externalTrafficPolicy: Local``) plus a NetworkPolicy whose ``ipBlock`` entries are the
allow-list: nothing else reaches the target port, and an empty allow-list lets nobody in. A
``dockerfile`` build is a Kaniko Job: a git init container checks the commit out, Kaniko builds
and pushes ``<registry>/<project>:<commit sha>``.

Core kinds are validated offline with ``kubernetes-validate``; ``HTTPRoute`` against the Gateway
API schema kept in the tests.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]

GATEWAY_API = "gateway.networking.k8s.io/v1"
MANAGED_BY = "app.kubernetes.io/managed-by"
PROJECT_LABEL = "conveyor.dev/project"
ENVIRONMENT_LABEL = "conveyor.dev/environment"
SERVICE_LABEL = "conveyor.dev/service"
DEPLOYMENT_LABEL = "conveyor.dev/deployment-id"
COMPONENT_LABEL = "app.kubernetes.io/component"
BUILD_KEY_LABEL = "conveyor.dev/build-key"
IMAGE_ANNOTATION = "conveyor.dev/image"
APPLIED_ANNOTATION = "conveyor.dev/applied"
COMMIT_ANNOTATION = "conveyor.dev/git-commit"
APP_CONTAINER = "app"
BUILD_CONTAINER = "kaniko"
WORKSPACE = "/workspace"


def dns_label(text: str, limit: int = 63) -> str:
    """``text`` as a DNS-1123 label (lower case, ``[a-z0-9-]``, at most ``limit`` long)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return slug[:limit].strip("-") or "x"


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:8]


def environment_namespace(prefix: str, project_id: str, slug: str, environment: str) -> str:
    """The environment's Namespace: readable (prefix, slug, environment) and unique (a hash of
    the project id, since slugs are unique only per organisation)."""
    tail = _hash(project_id, environment)
    head = dns_label(f"{prefix}-{dns_label(slug, 24)}-{dns_label(environment, 16)}", 63 - 9)
    return f"{head}-{tail}"


def label_value(text: str) -> str:
    """``text`` as a label value (``[A-Za-z0-9._-]``, at most 63, alphanumeric at both ends)."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return value.strip("-._") or "x"


def deployment_tag(deployment_id: str) -> str:
    """The short name of a deployment's objects (its Secret, its build Job)."""
    return dns_label(deployment_id, 40)


@dataclass(frozen=True)
class Scope:
    """Whose objects these are: one environment of one project."""

    namespace: str
    project_id: str
    environment: str

    def labels(self, **extra: str) -> dict[str, str]:
        out = {
            MANAGED_BY: "conveyor",
            PROJECT_LABEL: label_value(self.project_id),
            ENVIRONMENT_LABEL: label_value(self.environment),
        }
        out.update({key: label_value(value) for key, value in extra.items()})
        return out

    def meta(self, name: str, **extra: str) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": self.labels(**extra)}


@dataclass(frozen=True)
class Resources:
    """Container requests and limits (Kubernetes quantities)."""

    cpu_request: str = "100m"
    cpu_limit: str = "1"
    memory_request: str = "128Mi"
    memory_limit: str = "512Mi"

    def render(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {"cpu": self.cpu_request, "memory": self.memory_request},
            "limits": {"cpu": self.cpu_limit, "memory": self.memory_limit},
        }


@dataclass(frozen=True)
class Workload:
    """One service of one deployment, as its Deployment needs it."""

    service: str
    deployment_id: str
    image: str
    env_secret: str
    replicas: int = 1
    port: int | None = None
    command: str | None = None
    health_check_path: str = "/"
    http: bool = True  # readiness: GET the health path (else: the port accepts connections)
    resources: Resources = field(default_factory=Resources)
    volumes: tuple[tuple[str, str], ...] = ()  # (claim name, mount path)
    git_commit: str | None = None
    pull_secret: str | None = None
    image_pull_policy: str = "IfNotPresent"
    rollout_deadline_s: int = 600


def namespace(scope: Scope, project_slug: str) -> Manifest:
    labels = scope.labels()
    labels["app.kubernetes.io/part-of"] = label_value(project_slug)
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": scope.namespace, "labels": labels},
    }


def env_secret(scope: Scope, name: str, deployment_id: str, env: dict[str, str]) -> Manifest:
    """A deployment's env snapshot. Immutable: a new deployment gets a new Secret."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": scope.meta(name, **{DEPLOYMENT_LABEL: deployment_id}),
        "type": "Opaque",
        "immutable": True,
        "stringData": dict(env),
    }


def service_name(service: str) -> str:
    return dns_label(f"svc-{service}")


def deployment(scope: Scope, work: Workload) -> Manifest:
    name = service_name(work.service)
    selector = {
        SERVICE_LABEL: label_value(work.service),
        PROJECT_LABEL: label_value(scope.project_id),
    }
    pod_labels = scope.labels(**{SERVICE_LABEL: work.service, DEPLOYMENT_LABEL: work.deployment_id})
    container: dict[str, Any] = {
        "name": APP_CONTAINER,
        "image": work.image,
        "imagePullPolicy": work.image_pull_policy,
        "envFrom": [{"secretRef": {"name": work.env_secret}}],
        "resources": work.resources.render(),
    }
    if work.command:
        # A Procfile-style command line, run by the image's shell (``$PORT`` expands).
        container["command"] = ["/bin/sh", "-c", work.command]
    if work.port is not None:
        container["ports"] = [{"name": "http", "containerPort": work.port, "protocol": "TCP"}]
        container["env"] = [{"name": "PORT", "value": str(work.port)}]
        check: dict[str, Any] = (
            {"httpGet": {"path": work.health_check_path, "port": "http"}}
            if work.http
            else {"tcpSocket": {"port": "http"}}
        )
        container["readinessProbe"] = {
            **check,
            "periodSeconds": 5,
            "failureThreshold": 3,
            "timeoutSeconds": 3,
        }
    pod: dict[str, Any] = {"containers": [container]}
    if work.volumes:
        container["volumeMounts"] = [
            {"name": dns_label(claim), "mountPath": path} for claim, path in work.volumes
        ]
        pod["volumes"] = [
            {"name": dns_label(claim), "persistentVolumeClaim": {"claimName": claim}}
            for claim, _path in work.volumes
        ]
    if work.pull_secret:
        pod["imagePullSecrets"] = [{"name": work.pull_secret}]
    annotations = {COMMIT_ANNOTATION: work.git_commit} if work.git_commit else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            **scope.meta(
                name, **{SERVICE_LABEL: work.service, DEPLOYMENT_LABEL: work.deployment_id}
            ),
            "annotations": {DEPLOYMENT_LABEL: work.deployment_id, **annotations},
        },
        "spec": {
            "replicas": work.replicas,
            "progressDeadlineSeconds": work.rollout_deadline_s,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": selector},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": pod,
            },
        },
    }


SERVICE_PORT = 80


def recorded(manifest: Manifest) -> Manifest:
    """``manifest`` carrying itself as an annotation (like kubectl's last-applied
    configuration): what a failed rollout restores, read back from the cluster."""
    clean = copy.deepcopy(manifest)
    clean["metadata"].setdefault("annotations", {}).pop(APPLIED_ANNOTATION, None)
    out = copy.deepcopy(clean)
    out["metadata"]["annotations"][APPLIED_ANNOTATION] = json.dumps(
        clean, sort_keys=True, separators=(",", ":")
    )
    return out


def service(scope: Scope, service: str) -> Manifest:
    """The service's ClusterIP Service: every ready pod of the service, old or new revision
    (with ``maxUnavailable: 0`` the old pods serve until the new ones pass readiness)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": scope.meta(service_name(service), **{SERVICE_LABEL: service}),
        "spec": {
            "type": "ClusterIP",
            "selector": {
                SERVICE_LABEL: label_value(service),
                PROJECT_LABEL: label_value(scope.project_id),
            },
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def http_route(
    scope: Scope,
    hostnames: list[str],
    service: str,
    gateway: str,
    gateway_namespace: str,
) -> Manifest:
    """The environment's domain(s) routed to ``service`` through the cluster's Gateway."""
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": scope.meta("route"),
        "spec": {
            "parentRefs": [{"name": gateway, "namespace": gateway_namespace}],
            "hostnames": [h.lower().rstrip(".") for h in hostnames],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"name": service_name(service), "port": SERVICE_PORT}],
                }
            ],
        },
    }


def volume_claim_name(volume: str) -> str:
    return dns_label(f"vol-{volume}")


def volume_claim(
    scope: Scope,
    volume: str,
    size_gb: int,
    storage_class: str | None = None,
    access_mode: str = "ReadWriteOnce",
) -> Manifest:
    spec: dict[str, Any] = {
        "accessModes": [access_mode],
        "resources": {"requests": {"storage": f"{size_gb}Gi"}},
    }
    if storage_class:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": scope.meta(volume_claim_name(volume), **{"conveyor.dev/volume": volume}),
        "spec": spec,
    }


NODE_PORTS = range(30000, 32768)


def tcp_proxy_name(service: str) -> str:
    return dns_label(f"tcp-{service}")


def tcp_proxy_service(
    scope: Scope, service: str, external_port: int, target_port: int, service_type: str
) -> Manifest:
    """The proxy's Service. ``externalTrafficPolicy: Local`` keeps the client's address (no
    SNAT), which the NetworkPolicy's ``ipBlock`` entries match against. On ``NodePort`` the
    external port is the node port when it is in the node-port range."""
    port: dict[str, Any] = {
        "name": "tcp",
        "port": external_port,
        "targetPort": target_port,
        "protocol": "TCP",
    }
    if service_type == "NodePort" and external_port in NODE_PORTS:
        port["nodePort"] = external_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": scope.meta(tcp_proxy_name(service), **{SERVICE_LABEL: service}),
        "spec": {
            "type": service_type,
            "externalTrafficPolicy": "Local",
            "selector": {
                SERVICE_LABEL: label_value(service),
                PROJECT_LABEL: label_value(scope.project_id),
            },
            "ports": [port],
        },
    }


def tcp_proxy_policy(
    scope: Scope,
    service: str,
    target_port: int,
    allow: list[str],
    http_port: int | None,
    gateway_namespace: str,
) -> Manifest:
    """Who may reach the service's pods once a TCP proxy exposes them.

    The target port admits the allow-list's CIDRs only (an empty list: no rule for it, so
    nobody). The service's HTTP port stays open to the cluster's Gateway: to everyone in the
    cluster when it is another port, and only to the Gateway's namespace when the proxy
    targets the HTTP port itself (else the allow-list would be bypassed through it).
    """
    rules: list[dict[str, Any]] = []
    target = [{"port": target_port, "protocol": "TCP"}]
    if allow:
        rules.append({"from": [{"ipBlock": {"cidr": cidr}} for cidr in allow], "ports": target})
    if http_port is not None:
        http = [{"port": http_port, "protocol": "TCP"}]
        if http_port != target_port:
            rules.append({"ports": http})
        else:
            gateway = {"kubernetes.io/metadata.name": gateway_namespace}
            rules.append({"from": [{"namespaceSelector": {"matchLabels": gateway}}], "ports": http})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": scope.meta(tcp_proxy_name(service), **{SERVICE_LABEL: service}),
        "spec": {
            "podSelector": {
                "matchLabels": {
                    SERVICE_LABEL: label_value(service),
                    PROJECT_LABEL: label_value(scope.project_id),
                }
            },
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


@dataclass(frozen=True)
class Build:
    """A ``dockerfile`` build of one commit."""

    deployment_id: str
    git_repository: str
    git_commit: str
    image: str  # the destination, tagged with the commit SHA
    dockerfile_path: str = "Dockerfile"
    kaniko_image: str = "gcr.io/kaniko-project/executor:v1.23.2"
    git_image: str = "alpine/git:2.47.2"
    push_secret: str | None = None  # a dockerconfigjson Secret for the registry
    timeout_s: int = 1800
    resources: Resources = field(default_factory=lambda: Resources("500m", "2", "1Gi", "4Gi"))

    @property
    def key(self) -> str:
        """What makes two builds the same (a finished one is reused for the other)."""
        return _hash(self.git_repository, self.git_commit, self.dockerfile_path, self.image)


def build_job_name(deployment_id: str) -> str:
    return dns_label(f"build-{deployment_tag(deployment_id)}")


def image_reference(registry: str, project_slug: str, git_commit: str) -> str:
    return f"{registry.rstrip('/')}/{dns_label(project_slug)}:{git_commit}"


def build_job(scope: Scope, build: Build) -> Manifest:
    """A Kaniko Job: clone and check out the commit (init container), build, push. The env
    vars are not given to the build, so no secret can reach its log."""
    clone = (
        'git clone --quiet -- "$GIT_REPOSITORY" /workspace '
        '&& git -C /workspace checkout --quiet --detach "$GIT_COMMIT"'
    )
    volumes: list[dict[str, Any]] = [{"name": "workspace", "emptyDir": {}}]
    mounts = [{"name": "workspace", "mountPath": WORKSPACE}]
    kaniko_mounts = list(mounts)
    if build.push_secret:
        volumes.append(
            {
                "name": "registry",
                "secret": {
                    "secretName": build.push_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
        kaniko_mounts.append({"name": "registry", "mountPath": "/kaniko/.docker"})
    labels = scope.labels(**{DEPLOYMENT_LABEL: build.deployment_id, COMPONENT_LABEL: "build"})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            **scope.meta(
                build_job_name(build.deployment_id),
                **{DEPLOYMENT_LABEL: build.deployment_id, BUILD_KEY_LABEL: build.key},
            ),
            "annotations": {COMMIT_ANNOTATION: build.git_commit},
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": build.timeout_s,
            "ttlSecondsAfterFinished": 24 * 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "initContainers": [
                        {
                            "name": "checkout",
                            "image": build.git_image,
                            "command": ["/bin/sh", "-c", clone],
                            "env": [
                                {"name": "GIT_REPOSITORY", "value": build.git_repository},
                                {"name": "GIT_COMMIT", "value": build.git_commit},
                            ],
                            "volumeMounts": mounts,
                        }
                    ],
                    "containers": [
                        {
                            "name": BUILD_CONTAINER,
                            "image": build.kaniko_image,
                            "args": [
                                f"--context=dir://{WORKSPACE}",
                                f"--dockerfile={WORKSPACE}/{build.dockerfile_path.lstrip('/')}",
                                f"--destination={build.image}",
                                f"--label=org.opencontainers.image.revision={build.git_commit}",
                                "--push-retry=2",
                                # The image digest, read back from the pod's status.
                                "--digest-file=/dev/termination-log",
                            ],
                            "resources": build.resources.render(),
                            "volumeMounts": kaniko_mounts,
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }

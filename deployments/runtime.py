"""The backend this process uses (`CONVEYOR_DEPLOY_BACKEND`): one per process, held by
``BACKEND`` (a ``common.process.ProcessResource``) that the worker's lifecycle hooks start and
close."""

from __future__ import annotations

import json

from common.process import ProcessResource
from config.environment import child_environment
from config.settings import Settings, get_settings
from deployments.backends.base import Backend
from deployments.backends.local import LocalBackend, LocalBackendConfig

#: A backend set here directly (tests: ``runtime._backend = fake``) wins over ``BACKEND``'s.
_backend: Backend | None = None


def replica_base_env() -> dict[str, str]:
    """The environment a local replica inherits: this process's, minus control-plane secrets."""
    return child_environment()


def local_config(settings: Settings) -> LocalBackendConfig:
    return LocalBackendConfig(
        runtime_dir=settings.deploy_runtime_dir or (settings.data_dir / "deployments"),
        host=settings.deploy_local_host,
        startup_timeout_s=settings.deploy_startup_timeout_seconds,
        stop_grace_s=settings.deploy_stop_grace_seconds,
        max_crashes=settings.deploy_max_crashes,
        backoff_base_s=settings.deploy_backoff_base_seconds,
        backoff_max_s=settings.deploy_backoff_max_seconds,
        health_timeout_s=settings.deploy_health_timeout_seconds,
        orphan_grace_s=settings.deploy_orphan_grace_seconds,
        stable_s=settings.deploy_stable_seconds,
        base_env=replica_base_env(),
        command=json.loads(settings.deploy_local_command)
        if settings.deploy_local_command
        else None,
    )


def build_backend(settings: Settings) -> Backend:
    if settings.deploy_backend == "kubernetes":
        from deployments.backends.kubernetes import KubernetesBackend, KubernetesBackendConfig

        selectors = (
            json.loads(settings.kube_gpu_node_selectors) if settings.kube_gpu_node_selectors else {}
        )
        return KubernetesBackend(
            KubernetesBackendConfig(
                namespace=settings.kube_namespace,
                image=settings.kube_image,
                image_pull_policy=settings.kube_image_pull_policy,
                gpu_node_selectors=selectors,
                gpu_product_label=settings.kube_gpu_product_label,
                cache_size=settings.kube_cache_size,
                cache_storage_class=settings.kube_cache_storage_class or None,
                cache_access_mode=settings.kube_cache_access_mode,
                startup_budget_s=settings.kube_startup_budget_seconds,
                startup_initial_delay_s=settings.kube_startup_initial_delay_seconds,
                startup_period_s=settings.kube_startup_period_seconds,
                rollout_deadline_s=int(settings.deploy_rollout_deadline_seconds),
                shm_size=settings.kube_shm_size,
                service_domain=settings.kube_service_domain,
                kubeconfig=settings.kube_config or None,
                context=settings.kube_context or None,
                in_cluster=settings.kube_in_cluster,
            )
        )
    return LocalBackend(local_config(settings))


def _build() -> Backend:
    return build_backend(get_settings())


BACKEND: ProcessResource[Backend] = ProcessResource("deploy backend", _build, Backend.close)


def get_backend() -> Backend:
    return _backend if _backend is not None else BACKEND.get()


def reset_backend() -> None:
    """Close and forget this process's backend (worker shutdown, tests)."""
    global _backend
    installed, _backend = _backend, None
    if installed is not None:
        installed.close()
    BACKEND.close()

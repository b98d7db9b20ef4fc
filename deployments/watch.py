"""The `conveyor kube-watch` process: one per cluster, it keeps deployments' observed status
true from watch events (``deployments.backends.kubernetes_watch``), reconciling each change.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from config import get_settings
from deployments import repository
from deployments.backends.kubernetes import KubernetesBackend
from deployments.backends.kubernetes_watch import KubeWatcher, reconcile_changed
from deployments.runtime import get_backend
from store.db import session_scope

log = logging.getLogger(__name__)


def serve_watch(reconcile: Callable[[str], int], stop: threading.Event | None = None) -> None:
    """`conveyor kube-watch`: keep observed status true from watch events until interrupted
    (or until `stop` is set).

    `reconcile` is the reconciler's per-deployment step (`deployments.jobs.reconcile_one`); it
    uses this process's backend, which reads the watch cache once the watcher has synced.
    """
    backend = get_backend()
    if not isinstance(backend, KubernetesBackend):
        raise SystemExit("kube-watch needs CONVEYOR_DEPLOY_BACKEND=kubernetes")

    def live_ids() -> list[str]:
        with session_scope() as session:
            return list(repository.to_reconcile(session, limit=10_000))

    watcher = KubeWatcher(
        backend.api,
        get_settings().kube_namespace,
        reconcile_changed(reconcile, live_ids),
        timeout_s=get_settings().kube_watch_timeout_seconds,
    )
    backend.attach(watcher.cache)
    watcher.start()
    log.info("watching deployments, pods and events in namespace %s", backend.config.namespace)
    stop = stop or threading.Event()
    try:
        while not stop.is_set() and all(thread.is_alive() for thread in watcher.threads):
            stop.wait(0.5)
    finally:
        watcher.stop()
        backend.cache = None

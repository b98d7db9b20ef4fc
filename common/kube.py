"""One raw call to the Kubernetes API through the official client (shared by the deployments
and resources backends, which apply manifests server-side and read objects as plain dicts)."""

from __future__ import annotations

from typing import Any, cast


def call_api(
    api: Any,
    method: str,
    path: str,
    *,
    query: list[tuple[str, Any]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """``api`` is a ``kubernetes.client.ApiClient``; returns the decoded JSON object."""
    data = api.call_api(
        path,
        method,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        response_type="object",
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _request_timeout=30,
    )
    return cast(dict[str, Any], data or {})


def new_api_client(
    kubeconfig: str | None = None, context: str | None = None, in_cluster: bool = False
) -> Any:
    """A ``kubernetes.client.ApiClient`` from the pod's service account (``in_cluster``) or a
    kubeconfig file (default ``~/.kube/config``) and context."""
    from kubernetes import client, config

    if in_cluster:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    return config.new_client_from_config(config_file=kubeconfig, context=context)


def object_path(api_version: str, plural: str, namespace: str | None, name: str | None) -> str:
    """The REST path of a kind's collection (``name`` None) or of one object; ``namespace``
    None for a cluster-scoped kind (a Namespace)."""
    group = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    base = f"{group}/namespaces/{namespace}/{plural}" if namespace else f"{group}/{plural}"
    return f"{base}/{name}" if name else base


def server_side_apply(api: Any, path: str, manifest: Any, field_manager: str) -> dict[str, Any]:
    """Create or update the object at ``path`` by server-side apply, conflicts forced to
    ``field_manager`` (the typed ``*Api.patch_*`` methods cannot send apply patches)."""
    return call_api(
        api,
        "PATCH",
        path,
        query=[("fieldManager", field_manager), ("force", "true")],
        body=manifest,
        content_type="application/apply-patch+yaml",
    )

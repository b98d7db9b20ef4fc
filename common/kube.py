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

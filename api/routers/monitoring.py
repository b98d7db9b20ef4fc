"""Operations: ``/v1/health/status``, ``/v1/health/runners``, ``/v1/queues`` and ``/metrics``.

Every answer comes from ``monitoring.service`` (cached checks, heartbeats, one queue snapshot);
none of them broadcasts to the workers or waits on them.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from api import access
from api.deps import CurrentPrincipal
from api.errors import REQUEST_ID_HEADER, request_id_of
from api.schemas import ERROR_RESPONSES
from common.errors import Forbidden
from monitoring import service
from monitoring.metrics import CONTENT_TYPE, render
from monitoring.schemas import HealthStatus, QueuesReport, RunnersReport
from monitoring.settings import get_monitoring_settings

router = APIRouter(tags=["operations"])


@router.get(
    "/v1/health/status",
    dependencies=[access.public_route()],
    response_model=HealthStatus,
    summary="Health of every dependency (no key; 503 when the store or the broker is down)",
    responses={503: {"description": "unhealthy: the same body, plus the error envelope"}},
)
def health_status(request: Request) -> JSONResponse:
    report = service.health_status()
    body: dict[str, Any] = report.model_dump(mode="json")
    if report.status != "unhealthy":
        return JSONResponse(body)
    down = [name for name, s in report.services.items() if s.status == "down"]
    request_id = request_id_of(request)
    body["error"] = {
        "code": "unavailable",
        "message": f"Unavailable: {', '.join(down)} down.",
        "details": {name: report.services[name].message for name in down},
        "request_id": request_id,
    }
    return JSONResponse(
        body, status_code=503, headers={"Retry-After": "5", REQUEST_ID_HEADER: request_id}
    )


@router.get(
    "/v1/health/runners",
    dependencies=[access.requires("jobs:read")],
    response_model=RunnersReport,
    summary="The worker pool, from heartbeats",
    responses=ERROR_RESPONSES,
)
def health_runners(principal: CurrentPrincipal) -> RunnersReport:
    return service.runners_report()


@router.get(
    "/v1/queues",
    dependencies=[access.requires("jobs:read")],
    response_model=QueuesReport,
    summary="Per queue: depth, oldest queued job, consumers, running, completed last minute",
    responses=ERROR_RESPONSES,
)
def queues(principal: CurrentPrincipal) -> QueuesReport:
    return QueuesReport(data=service.queue_stats())


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@router.get(
    "/metrics",
    dependencies=[access.public_route()],  # its own token (CONVEYOR_METRICS_TOKEN) or loopback
    summary="Prometheus metrics (bearer CONVEYOR_METRICS_TOKEN, or loopback clients only)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}}, 403: ERROR_RESPONSES[401]},
)
def metrics(request: Request) -> Response:
    token = get_monitoring_settings().metrics_token.get_secret_value()
    if token:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Forbidden("GET /metrics needs `Authorization: Bearer <CONVEYOR_METRICS_TOKEN>`.")
    elif not _is_loopback(request.client.host if request.client else None):
        raise Forbidden("GET /metrics answers loopback clients only unless a token is set.")
    return Response(render(service.PlatformCollector()), media_type=CONTENT_TYPE)

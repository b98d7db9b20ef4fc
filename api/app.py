"""The FastAPI application: routers under /v1, the error envelope, request ids."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from api.access import install_access
from api.contract import install_contract
from api.errors import RequestIdMiddleware, install_error_handlers
from api.openapi_docs import document_contract
from common import redis_clients
from config import get_settings
from monitoring.metrics import HttpMetricsMiddleware

# Router modules, each exposing ``router`` (add one line per resource group).
ROUTERS: list[str] = [
    "api.routers.health",
    "api.routers.jobs",
    "api.routers.diagnostics",
    "api.routers.keys",
    "api.routers.usage",
    "api.routers.webhooks",
    "api.routers.crawls",
    "api.routers.firecrawl",
    "api.routers.resources",
    "api.routers.deployments",
    "api.routers.openai",
    "api.routers.monitoring",
    "api.routers.batches",
    "api.routers.projects",
    "api.routers.assistants",
    "api.routers.rag",
    "api.routers.billing",
    "api.routers.alerts",
    "api.routers.organizations",
    "api.routers.audit",
]


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The API's Redis clients are created on first use; shutdown closes them."""
    yield
    await redis_clients.aclose_clients()
    redis_clients.close_clients()


def create_app() -> FastAPI:
    settings = get_settings()
    logging.basicConfig(level=settings.log_level)
    # Swagger UI and ReDoc are served from the package's own files: /docs works offline.
    app = FastAPIOffline(
        title="Conveyor",
        version="0.1.0",
        description=(
            "Every request becomes a job on a Celery queue: submit, poll `GET /v1/jobs/{id}`, "
            "download `GET /v1/jobs/{id}/result` (kept 24 h). Auth: `Authorization: Bearer`."
        ),
        docs_url="/docs",
        redoc_url="/redoc",
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    # Register every job kind's task now (not on the first submit), so a healthy API is ready.
    from workers.app import celery_app

    celery_app.loader.import_default_modules()
    install_error_handlers(app)
    for module in ROUTERS:
        app.include_router(importlib.import_module(module).router)
    install_access(app)  # every route's declared scope: checks, audit, OpenAPI
    from api.routers.jobs import PollFastPath
    from api.routers.openai import DeploymentFastPath

    # Innermost: polls and completions for a deployment skip the routing (every contract
    # middleware applies).
    app.add_middleware(PollFastPath, api=app)
    app.add_middleware(DeploymentFastPath)
    install_contract(app)  # rate limits, body limits, idempotency, CORS
    document_contract(app)  # the contract in the OpenAPI document
    from api.routers.projects import AppRouter

    app.add_middleware(AppRouter)  # app traffic (/apps/…, an environment's Host) skips the API
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(HttpMetricsMiddleware)  # outermost: times everything, 4xx/5xx included
    return app

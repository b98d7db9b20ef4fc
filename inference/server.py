"""Standalone OpenAI-compatible model server (one process serving local model directories).

    python -m inference.server --model NAME=PATH [--model NAME=PATH …] [--host H] [--port N]

Serves ``/v1/models``, ``/v1/chat/completions`` (with SSE streaming), ``/v1/completions``,
``/v1/embeddings`` and ``/health`` straight from in-process engines. Local deployments run it as
a replica; the Conveyor API itself never loads a model (it queues jobs for inference workers).
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from inference import service
from inference.engines import EngineOptions, create_engine
from inference.errors import InferenceError
from inference.registry import ModelPool, ModelSpec, configured_models, parse_models
from inference.schemas import (
    SSE_DONE,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    openai_error_body,
    sse_event,
)

logger = logging.getLogger(__name__)


def _request_id(request: Request) -> str:
    rid: str | None = getattr(request.state, "request_id", None)
    return rid or "req_unknown"


def _error(request: Request, status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    rid = _request_id(request)
    return JSONResponse(
        openai_error_body(code=code, message=message, request_id=rid, **extra),
        status_code=status,
        headers={"X-Request-ID": rid},
    )


async def sse_stream(chunks: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    """Frame chunks as SSE; an engine failure mid-stream becomes a final error frame."""
    try:
        async for chunk in chunks:
            yield sse_event(chunk)
    except InferenceError as exc:
        yield sse_event({"error": exc.to_error_object()})
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    yield SSE_DONE


def create_app(pool: ModelPool) -> FastAPI:
    """The model server's FastAPI app; the pool is started and closed with the app."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.start()
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="Conveyor model server", lifespan=lifespan)

    @app.middleware("http")
    async def request_ids(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        request.state.request_id = "req_" + uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    @app.exception_handler(InferenceError)
    async def inference_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, InferenceError)
        return _error(
            request,
            exc.status_code,
            exc.code,
            exc.message,
            type_=exc.openai_type,
            param=exc.param,
            details=exc.details,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(request, 400, "validation_error", "The request body is not valid JSON.")
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in errors
        ]
        param = ".".join(str(p) for p in details[0]["loc"][1:]) if details else None
        message = details[0]["msg"] if details else "Invalid request."
        return _error(
            request, 422, "validation_error", message, param=param or None, details=details
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}
        return _error(
            request, exc.status_code, codes.get(exc.status_code, "error"), str(exc.detail)
        )

    @app.get("/health")
    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": pool.names()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.list_models(pool).model_dump(exclude_none=True)

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        for card in service.list_models(pool).data:
            if card.id == model_id:
                return card.model_dump(exclude_none=True)
        from inference.errors import ModelNotFoundError

        raise ModelNotFoundError(model_id)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatCompletionRequest) -> Any:
        if body.stream:
            chunks = await service.chat_completion_stream(pool, body)
            return StreamingResponse(sse_stream(chunks), media_type="text/event-stream")
        return (await service.chat_completion(pool, body)).model_dump()

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        if body.stream:
            chunks = await service.completion_stream(pool, body)
            return StreamingResponse(sse_stream(chunks), media_type="text/event-stream")
        return (await service.completion(pool, body)).model_dump()

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> dict[str, Any]:
        return (await service.embeddings(pool, body)).model_dump()

    return app


def build_pool(specs: Sequence[ModelSpec], options: EngineOptions) -> ModelPool:
    return ModelPool(create_engine(spec, options) for spec in specs)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m inference.server", description=__doc__)
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a model to serve (repeatable); default: CONVEYOR_MODELS",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--engine", choices=["auto", "transformers", "vllm"], default=None)
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--default-embedding",
        action="store_true",
        help="also serve the packaged all-MiniLM-L6-v2 embedding model",
    )
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from config.settings import get_settings

    args = _parse_args(argv)
    settings = get_settings()
    models_value = ",".join(args.model) if args.model else settings.models
    specs = (
        configured_models(models_value, default_embedding=True)
        if args.default_embedding
        else parse_models(models_value)
    )
    if not specs:
        raise SystemExit("no models: pass --model NAME=PATH or set CONVEYOR_MODELS")
    options = EngineOptions.from_settings(
        settings, engine=args.engine or None, device=args.device or None
    )
    logging.basicConfig(level=args.log_level.upper())
    logger.info("serving %s", json.dumps({s.name: str(s.path) for s in specs}))
    app = create_app(build_pool(specs, options))
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()

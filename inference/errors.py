"""Errors raised by the inference domain (subclasses of ``common.errors.ConveyorError``).

Hierarchy (every error a user can see carries an HTTP status, a Conveyor ``code`` and the
OpenAI ``type``/``param`` so both kinds of client can parse it):

    InferenceError                      500 internal_error / server_error
    ├── ModelNotFoundError              404 model_not_found / invalid_request_error
    ├── ContextLengthError              400 context_length_exceeded / invalid_request_error
    ├── InvalidRequestError             400 validation_error / invalid_request_error
    ├── EngineUnavailableError          503 unavailable / server_error
    └── RequestCancelledError           499 cancelled (client went away; never rendered)
"""

from __future__ import annotations

from typing import Any, ClassVar

from common.errors import ConveyorError, ErrorCode


class InferenceError(ConveyorError):
    """Base class of inference errors; carries both Conveyor's and OpenAI's error fields."""

    status_code = 500
    code: str = ErrorCode.INTERNAL_ERROR
    openai_type: ClassVar[str] = "server_error"

    def __init__(self, message: str, *, param: str | None = None, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.param = param

    def to_error_object(self, request_id: str | None = None) -> dict[str, Any]:
        """The ``error`` object holding both shapes (code/message/request_id + type/param)."""
        return {
            "code": self.code,
            "message": self.message,
            "details": self.details,
            "request_id": request_id,
            "type": self.openai_type,
            "param": self.param,
        }


class ModelNotFoundError(InferenceError):
    status_code = 404
    code = ErrorCode.MODEL_NOT_FOUND
    openai_type = "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or is not served here.", param="model"
        )
        self.model = model


class ContextLengthError(InferenceError):
    status_code = 400
    code = ErrorCode.CONTEXT_LENGTH_EXCEEDED
    openai_type = "invalid_request_error"

    def __init__(self, *, limit: int, prompt_tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, "
            f"{max_tokens} for the completion). Please reduce the prompt or max_tokens.",
            param="messages",
            details={"limit": limit, "prompt_tokens": prompt_tokens, "max_tokens": max_tokens},
        )
        self.limit = limit


class InvalidRequestError(InferenceError):
    status_code = 400
    code = ErrorCode.VALIDATION_ERROR
    openai_type = "invalid_request_error"


class EngineUnavailableError(InferenceError):
    status_code = 503
    code = ErrorCode.UNAVAILABLE
    openai_type = "server_error"


class RequestCancelledError(InferenceError):
    status_code = 499
    code = ErrorCode.CANCELLED
    openai_type = "invalid_request_error"

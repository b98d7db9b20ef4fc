"""The one error hierarchy of Conveyor.

Every error a user can see is a ``ConveyorError`` (or a subclass) carrying an HTTP status and a
code from ``ErrorCode``. Domain code raises them; ``api.errors`` turns any of them into the error
envelope ``{"error": {"code", "message", "details", "request_id"}}``; the job runner records
them as the job's ``error`` (``{code, message}``).

    ConveyorError                 base: status 500, code internal_error
    ├── ValidationFailed          422 validation_error
    ├── NotFound                  404 not_found
    ├── NotReady                  409 not_ready
    ├── Gone                      410 gone
    ├── Conflict                  409 conflict
    ├── Unauthorized              401 unauthorized
    ├── Forbidden                 403 forbidden
    ├── UnsafeURL                 422 unsafe_url
    ├── QuotaExceeded             402 quota_exceeded
    ├── RateLimited               429 rate_limited
    ├── Unavailable               503 unavailable
    ├── BackendError              500 internal_error: a backend (Kubernetes, a database
    │                             server, a binary) did not do what was asked
    └── JobFailed                 a job's own failure (code chosen by the domain)

Domain packages subclass these in their ``errors.py`` (``resources.errors.ResourceError``,
``inference.errors.InferenceError``); a code is always an ``ErrorCode`` value
(``tests/common/test_error_codes.py`` walks the code to keep it so).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """Every code an error envelope can carry: the OpenAPI document's ``ErrorBody.code`` enum
    (``tests/api_contract/test_error_codes.py`` checks that every code raised is one)."""

    VALIDATION_ERROR = "validation_error"
    INVALID_JSON = "invalid_json"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    NOT_READY = "not_ready"
    GONE = "gone"
    CONFLICT = "conflict"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSAFE_URL = "unsafe_url"
    QUOTA_EXCEEDED = "quota_exceeded"
    RATE_LIMITED = "rate_limited"
    MODEL_NOT_FOUND = "model_not_found"
    UNAVAILABLE = "unavailable"
    DNS_ERROR = "dns_error"
    INTERNAL_ERROR = "internal_error"
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    SCRAPE_FAILED = "scrape_failed"
    BACKEND_ERROR = "backend_error"
    # Job error codes (the ``error.code`` of a failed job).
    WORKER_LOST = "worker_lost"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    DIAGNOSTICS_FAILURE = "diagnostics_failure"
    # A crawl that produced no page: ``no_pages``, or the first page's reason.
    NO_PAGES = "no_pages"
    CRAWL_FAILED = "crawl_failed"
    HTTP_ERROR = "http_error"
    TOO_LARGE = "too_large"
    REDIRECT_LOOP = "redirect_loop"
    TOO_MANY_REDIRECTS = "too_many_redirects"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    RENDER_FAILED = "render_failed"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    ROBOTS_BLOCKED = "robots_blocked"
    DUPLICATE_CONTENT = "duplicate_content"
    OUT_OF_SCOPE = "out_of_scope"
    # A deployment that failed (``deployments.backends.base.ReasonCode``).
    ROLLOUT_TIMEOUT = "rollout_timeout"
    UNSCHEDULABLE = "unschedulable"
    IMAGE_PULL_FAILED = "image_pull_failed"
    OOM_KILLED = "oom_killed"
    CRASH_LOOP = "crash_loop"
    REPLICA_CRASHED = "replica_crashed"
    HEALTH_CHECK_FAILED = "health_check_failed"
    REPLICAS_NOT_READY = "replicas_not_ready"
    # A failed backup (``error.code`` of a resource backup).
    VERIFICATION_FAILED = "verification_failed"
    JOB_FAILED = "job_failed"
    JOB_CANCELLED = "job_cancelled"
    JOB_MISSING = "job_missing"
    # App projects (a failed project deployment's reason code).
    BUILD_FAILED = "build_failed"
    UNSUPPORTED_BUILD = "unsupported_build"


class ConveyorError(Exception):
    """Base of every user-visible error."""

    status_code: int = 500
    code: str = ErrorCode.INTERNAL_ERROR

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status_code: int | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.details = details
        self.headers = headers or {}


class ValidationFailed(ConveyorError):
    status_code = 422
    code = ErrorCode.VALIDATION_ERROR


class NotFound(ConveyorError):
    status_code = 404
    code = ErrorCode.NOT_FOUND


class NotReady(ConveyorError):
    status_code = 409
    code = ErrorCode.NOT_READY


class Gone(ConveyorError):
    status_code = 410
    code = ErrorCode.GONE


class Conflict(ConveyorError):
    status_code = 409
    code = ErrorCode.CONFLICT


class Unauthorized(ConveyorError):
    status_code = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(ConveyorError):
    status_code = 403
    code = ErrorCode.FORBIDDEN


class UnsafeURL(ConveyorError):
    status_code = 422
    code = ErrorCode.UNSAFE_URL


class QuotaExceeded(ConveyorError):
    status_code = 402
    code = ErrorCode.QUOTA_EXCEEDED


class RateLimited(ConveyorError):
    status_code = 429
    code = ErrorCode.RATE_LIMITED


class Unavailable(ConveyorError):
    status_code = 503
    code = ErrorCode.UNAVAILABLE


class BackendError(ConveyorError):
    """A backend did not do what was asked; the message says what failed (never a secret)."""


class JobFailed(ConveyorError):
    """Raised by domain code inside a job: the job ends ``failed`` with this code and message."""

    status_code = 500

"""Errors raised by the deployments domain.

Hierarchy (each carries an HTTP status and a code from the API's error enum):

    DeploymentError                 500 internal_error
    ├── DeploymentNotFoundError     404 not_found
    ├── DeploymentConflictError     409 conflict
    ├── DeploymentUnavailableError  503 unavailable (carries retry_after seconds)
    ├── InvalidDeploymentError      422 validation_error
    └── BackendError                502 backend_error (the backend failed to act)
"""

from __future__ import annotations

from typing import Any, ClassVar


class DeploymentError(Exception):
    """Base class of deployment errors."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class DeploymentNotFoundError(DeploymentError):
    status_code = 404
    code = "not_found"


class DeploymentConflictError(DeploymentError):
    status_code = 409
    code = "conflict"


class InvalidDeploymentError(DeploymentError):
    status_code = 422
    code = "validation_error"


class DeploymentUnavailableError(DeploymentError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class BackendError(DeploymentError):
    status_code = 502
    code = "backend_error"

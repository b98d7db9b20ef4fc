"""Errors of the projects domain (each a ``ConveyorError`` with a declared code)."""

from __future__ import annotations

from common.errors import Conflict, ErrorCode, NotFound, ValidationFailed


class ProjectNotFound(NotFound):
    pass


class DeployInProgress(Conflict):
    """Another deployment of the environment is queued or running."""


class UnsupportedOnBackend(ValidationFailed):
    """The source needs a backend other than the configured one (422 naming it)."""

    code = ErrorCode.VALIDATION_ERROR

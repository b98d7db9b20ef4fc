"""Errors raised by the resources domain.

Hierarchy (each carries an HTTP status and a code from the API's error enum):

- ``ResourceError`` (500 ``internal_error``, a ``common.errors.ConveyorError``): base of
  every resources error.
  - ``BackendError`` (500 ``internal_error``, also a ``common.errors.BackendError``): a
    server/binary did not do what was asked; the message says which command failed and the
    tail of its output (never a secret).
  - ``NotSupported`` (422 ``validation_error``): the operation does not exist for this
    type/tier (e.g. PITR on the shared tier).
  - ``OutsideWindow`` (422 ``validation_error``): a PITR target outside the restorable window;
    the message names the window.
  - ``SourceBusy`` (409 ``conflict``): another operation holds the source.
  - ``VerificationFailed`` (500 ``internal_error``): a backup did not restore to the same data.
  - ``MachineNotReady`` (503 ``unavailable``): this machine cannot run the resource as
    configured (e.g. the server's OS user cannot reach the data dir); the message says what to
    change. Raised before any resource or job is created.
"""

from __future__ import annotations

from common import errors
from common.errors import ConveyorError, ErrorCode


class ResourceError(ConveyorError):
    status_code = 500
    code = ErrorCode.INTERNAL_ERROR


class BackendError(ResourceError, errors.BackendError):
    pass


class NotSupported(ResourceError):
    status_code = 422
    code = ErrorCode.VALIDATION_ERROR


class OutsideWindow(ResourceError):
    status_code = 422
    code = ErrorCode.VALIDATION_ERROR


class SourceBusy(ResourceError):
    status_code = 409
    code = ErrorCode.CONFLICT


class VerificationFailed(ResourceError):
    pass


class MachineNotReady(ResourceError):
    status_code = 503
    code = ErrorCode.UNAVAILABLE

"""Errors raised by the alerts domain.

Hierarchy (each carries an HTTP status and a code from the API's error enum):

- ``AlertError`` (422 ``validation_error``, a ``common.errors.ValidationFailed``): a rule that
  cannot work as given; ``details`` is a list of ``{loc, msg, type}`` like any 422.
  - ``UnknownSubject``: a ``deployment_status`` condition names no subject of the organisation.
  - ``EmailNotConfigured``: an ``email`` channel while the platform has no SMTP server.
- ``ConditionUnavailable`` (503 ``unavailable``): a condition that cannot be measured on this
  platform now (raised during evaluation; the rule keeps its state and the run logs why).
"""

from __future__ import annotations

from common.errors import ErrorCode, Unavailable, ValidationFailed


class AlertError(ValidationFailed):
    code = ErrorCode.VALIDATION_ERROR


class UnknownSubject(AlertError):
    pass


class EmailNotConfigured(AlertError):
    pass


class ConditionUnavailable(Unavailable):
    code = ErrorCode.UNAVAILABLE

"""Errors raised by the RAG domain.

Hierarchy (each carries an HTTP status and a code from the API's error enum):

- ``RagError`` (500 ``internal_error``, a ``common.errors.ConveyorError``): base of every RAG error.
  - ``BadFile`` (422 ``validation_error``): an uploaded file is empty, or its content is not what
    a dataset can hold (a PDF without text, JSONL whose lines are not objects); the message says
    which file and why.
  - ``UnsupportedFile`` (415 ``unsupported_media_type``): the content, sniffed (never the name),
    is not Markdown, text, HTML, PDF or JSONL (a binary disguised as ``.md``).
  - ``FileTooLarge`` (413 ``payload_too_large``): a file over ``CONVEYOR_RAG_MAX_FILE_BYTES``.
  - ``AccessDenied`` (403 ``forbidden``): an endpoint's access policy refuses the caller.
  - ``EndpointRateLimited`` (429 ``rate_limited``, ``Retry-After``): a rate-limit policy.
  - ``BudgetExceeded`` (429 ``quota_exceeded``): the caller's daily token budget is spent.
  - ``ModelCallFailed`` (503 ``unavailable``): the model behind an endpoint did not
    answer (the inference queue timed out, a provider refused).
"""

from __future__ import annotations

from common.errors import ConveyorError, ErrorCode


class RagError(ConveyorError):
    status_code = 500
    code = ErrorCode.INTERNAL_ERROR


class BadFile(RagError):
    status_code = 422
    code = ErrorCode.VALIDATION_ERROR


class UnsupportedFile(RagError):
    status_code = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class FileTooLarge(RagError):
    status_code = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE


class AccessDenied(RagError):
    status_code = 403
    code = ErrorCode.FORBIDDEN


class EndpointRateLimited(RagError):
    status_code = 429
    code = ErrorCode.RATE_LIMITED


class BudgetExceeded(RagError):
    status_code = 429
    code = ErrorCode.QUOTA_EXCEEDED


class ModelCallFailed(RagError):
    status_code = 503
    code = ErrorCode.UNAVAILABLE

"""Errors raised by the billing domain.

Hierarchy (each a ``common.errors.ConveyorError`` with an HTTP status and a code):

- ``InsufficientCredits`` (402 ``quota_exceeded``, a ``common.errors.QuotaExceeded``): work
  that would spend beyond the organisation's credits and plan allowance; ``details`` carries
  ``{needed, balance}`` (micro-units), the reference's ``INSUFFICIENT_CREDITS``.
- ``OperatorOnly`` (403 ``forbidden``): an operator action (granting credits) asked with an
  organisation's key.
- ``InvoiceStateError`` (409 ``conflict``): paying a void invoice, voiding a paid one.
"""

from __future__ import annotations

from common.errors import Conflict, Forbidden, QuotaExceeded


class InsufficientCredits(QuotaExceeded):
    pass


class OperatorOnly(Forbidden):
    pass


class InvoiceStateError(Conflict):
    pass

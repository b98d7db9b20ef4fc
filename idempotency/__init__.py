"""Idempotency keys: the same ``Idempotency-Key`` and body within 24 h replays the original answer.

A unique constraint on (org_id, key) decides which of several concurrent duplicates runs; the
others get the stored response (or 409 while the first is still running, or when the body
differs). The HTTP side is ``api/contract.py``'s ``IdempotencyMiddleware``.
"""

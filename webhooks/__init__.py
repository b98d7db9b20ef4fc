"""Outgoing webhooks: Standard Webhooks signing, receiver-side verification, delivery with retries.

Domain code only (no HTTP routes, no Celery): ``api/routers/webhooks.py`` and
``tasks/webhooks.py`` call into it.
"""

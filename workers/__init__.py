"""The Celery app, queue routing, worker/beat entry points and the embedded broker."""

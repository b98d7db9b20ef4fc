"""Code shared by every layer that is neither HTTP nor Celery: the error hierarchy, time helpers."""

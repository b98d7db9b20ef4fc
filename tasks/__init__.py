"""Celery tasks: thin functions that load a job, call the domain code, record the outcome."""

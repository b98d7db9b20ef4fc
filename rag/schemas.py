"""Request and job-input models of the RAG routes (Syft Space's field names, Conveyor's rules)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DatasetType = Literal["local_file", "crawl", "pgvector", "remote_vector_store"]
ProviderKind = Literal["conveyor", "openai_compatible"]
ResponseType = Literal["answer", "search"]
PolicyType = Literal["access", "rate_limit", "budget"]
SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"

#: Syft Space's defaults for a rate-limit policy that names no figure.
DEFAULT_REQUESTS_PER_HOUR = 1000
DEFAULT_REQUESTS_PER_MINUTE = 100

DEFAULT_PROMPT = (
    "Answer the question using only the numbered sources below, and cite them as [n].\n\n"
    "{context}\n\nQuestion: {question}"
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    dtype: DatasetType = "local_file"
    configuration: dict[str, Any] = Field(default_factory=dict)
    summary: str = ""
    embedding_model: str | None = None
    chunk_size: int | None = Field(default=None, ge=16, le=8192)
    chunk_overlap: int | None = Field(default=None, ge=0, le=4096)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> DatasetCreate:
        if self.chunk_size and self.chunk_overlap and self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


class DatasetPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    summary: str | None = None
    configuration: dict[str, Any] | None = None


class CrawlSource(_Body):
    """``dtype: crawl``: a finished crawl's job, or a crawl to run first (``url``, ``mode`` …:
    the fields of ``POST /v1/crawl``)."""

    model_config = ConfigDict(extra="allow")
    job_id: str | None = None
    url: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CrawlSource:
        if (self.job_id is None) == (self.url is None):
            raise ValueError("give exactly one of job_id (a finished crawl) or url (crawl first)")
        return self


IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
TABLE = r"^([A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}$"


class PgVectorTableSource(_Body):
    """``dtype: pgvector``: an existing table with a pgvector column in someone's PostgreSQL,
    searched in place (Conveyor writes nothing there). ``url`` is ``postgresql://user:password@
    host:port/db`` over TCP (no Unix socket; the host passes the SSRF guard)."""

    url: str = Field(min_length=1, max_length=2000)
    table: str = Field(pattern=TABLE, description="table or schema.table")
    id_column: str = Field(default="id", pattern=IDENTIFIER)
    embedding_column: str = Field(default="embedding", pattern=IDENTIFIER)
    text_column: str = Field(default="text", pattern=IDENTIFIER)
    source_column: str | None = Field(default=None, pattern=IDENTIFIER)
    heading_column: str | None = Field(default=None, pattern=IDENTIFIER)
    text_search: bool = Field(default=True, description="hybrid: full text over text_column")


class RemoteVectorStoreSource(_Body):
    """``dtype: remote_vector_store``: a collection of a vector store that speaks Qdrant's REST
    search (``POST {url}/collections/{collection}/points/search``), its points' payload holding
    the chunk's text (and optionally its source and heading)."""

    url: str = Field(min_length=1, max_length=2000, description="http(s) base URL")
    collection: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    api_key: str | None = Field(default=None, max_length=2000)
    vector_name: str | None = Field(default=None, max_length=255)
    text_field: str = Field(default="text", min_length=1, max_length=255)
    source_field: str = Field(default="source", min_length=1, max_length=255)
    heading_field: str = Field(default="heading", min_length=1, max_length=255)


class IngestJobInput(_Body):
    """The input of an ``ingest`` job: index a dataset's pending files, or a crawl's pages."""

    dataset_id: str
    file_ids: list[str] = Field(default_factory=list)
    crawl_job_id: str | None = None


class ProviderCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    kind: ProviderKind
    base_url: str | None = None
    api_key: str | None = None
    models: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _url_for_remote(self) -> ProviderCreate:
        if self.kind == "openai_compatible" and not self.base_url:
            raise ValueError("an openai_compatible provider needs base_url")
        return self


class ProviderPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    base_url: str | None = None
    api_key: str | None = None
    models: list[str] | None = None


class EndpointCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    slug: str = Field(pattern=SLUG)
    dataset_ids: list[str] = Field(min_length=1)
    model: str | None = None
    provider: str | None = Field(default=None, description="A provider id; none: Conveyor.")
    prompt_template: str | None = None
    top_k: int = Field(default=5, ge=1, le=50)
    response_type: ResponseType = "answer"
    policy_ids: list[str] = Field(default_factory=list)
    summary: str = ""

    @model_validator(mode="after")
    def _model_for_answers(self) -> EndpointCreate:
        if self.response_type == "answer" and not self.model:
            raise ValueError("an endpoint with response_type answer needs a model")
        return self

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, value: str | None) -> str | None:
        if value is not None and ("{context}" not in value or "{question}" not in value):
            raise ValueError("prompt_template must contain {context} and {question}")
        return value


class EndpointPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    dataset_ids: list[str] | None = Field(default=None, min_length=1)
    model: str | None = None
    provider: str | None = None
    prompt_template: str | None = None
    top_k: int | None = Field(default=None, ge=1, le=50)
    response_type: ResponseType | None = None
    policy_ids: list[str] | None = None
    summary: str | None = None


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class QueryRequest(_Body):
    query: str | None = Field(default=None, min_length=1, max_length=8000)
    messages: list[ChatMessage] | None = None
    top_k: int | None = Field(default=None, ge=1, le=50)
    filters: dict[str, Any] | None = Field(
        default=None, description="`dataset_id` or `source` (exact) narrows the search."
    )
    stream: bool = False
    max_tokens: int = Field(default=128, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)

    @model_validator(mode="after")
    def _a_question(self) -> QueryRequest:
        if not self.query and not any(m.role == "user" for m in self.messages or []):
            raise ValueError("give query, or messages with a user message")
        return self

    def question(self) -> str:
        if self.query:
            return self.query
        return [m.content for m in self.messages or [] if m.role == "user"][-1]


class AccessConfig(_Body):
    public: bool = False
    organizations: list[str] = Field(default_factory=list)
    key_ids: list[str] = Field(default_factory=list)


class RateLimitConfig(_Body):
    requests_per_minute: int = Field(default=DEFAULT_REQUESTS_PER_MINUTE, ge=1)
    requests_per_hour: int = Field(default=DEFAULT_REQUESTS_PER_HOUR, ge=1)


class BudgetConfig(_Body):
    tokens_per_day: int = Field(ge=1)


POLICY_CONFIGS: dict[str, type[_Body]] = {
    "access": AccessConfig,
    "rate_limit": RateLimitConfig,
    "budget": BudgetConfig,
}


class PolicyCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    type: PolicyType
    config: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _valid_config(self) -> PolicyCreate:
        self.config = POLICY_CONFIGS[self.type].model_validate(self.config).model_dump()
        return self


class PolicyPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    config: dict[str, Any] | None = None


class SyftListQuery(_Body):
    """Conveyor's cursor list parameters, and Syft Space's ``skip``/``limit``."""

    limit: int = Field(default=20, ge=1, le=100)
    cursor: str | None = None
    skip: int | None = Field(default=None, ge=0)
    created_after: datetime | None = None
    created_before: datetime | None = None
    sort: Literal["-created_at", "created_at"] = "-created_at"

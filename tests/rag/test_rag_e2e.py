"""End to end with real processes (API, inference worker with the tiny chat model and MiniLM,
ingest worker) on the embedded index and on PostgreSQL + pgvector (``pgserver``): upload
Markdown and a PDF, ingest with exact counters, query, sources at the right file and heading,
dedup, delete, policies, bad files."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from inference.testing import Stack
from tests.conftest import OrgKey, make_org
from tests.rag.files import GUIDE_MD, pdf_with_text, pdf_without_text
from tests.rag.servers import QdrantStore, serve, slow_provider, tcp_to_unix

pytestmark = pytest.mark.parametrize("rag_stack", ["embedded", "pgvector"], indirect=True)

PDF_TEXT = "The basalt lighthouse keeper logs every storm in a green leather ledger."


def _wait(api: httpx.Client, job_id: str, headers: dict[str, str], timeout: float = 300) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def _dataset(api: httpx.Client, org: OrgKey, name: str = "garden") -> str:
    r = api.post("/v1/datasets", json={"name": name, "dtype": "local_file"}, headers=org.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _upload(
    api: httpx.Client, org: OrgKey, ds: str, files: list[tuple[str, bytes]]
) -> httpx.Response:
    return api.post(
        f"/v1/datasets/{ds}/files",
        files=[("files", (name, data)) for name, data in files],
        headers=org.headers,
    )


def _endpoint(api: httpx.Client, org: OrgKey, ds: str, **extra: Any) -> str:
    slug = f"ep-{time.monotonic_ns() % 10**12}"
    body = {"name": "garden help", "slug": slug, "dataset_ids": [ds], "model": "tiny", **extra}
    r = api.post("/v1/endpoints", json=body, headers=org.headers)
    assert r.status_code == 201, r.text
    return slug


def test_ingest_query_dedup_delete(rag_stack: Stack) -> None:
    org = make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    ds = _dataset(api, org)
    r = _upload(
        api, org, ds, [("guide.md", GUIDE_MD.encode()), ("lighthouse.pdf", pdf_with_text(PDF_TEXT))]
    )
    assert r.status_code == 202, r.text
    job = _wait(api, r.json()["id"], org.headers)
    assert job["status"] == "completed", job
    assert job["kind"] == "ingest"
    progress = job["progress"]
    assert progress["files_total"] == 2 and progress["files_done"] == 2
    assert progress["files_failed"] == 0
    # Four Markdown sections + the PDF's one paragraph.
    assert progress["chunks_indexed"] == 5
    assert api.get(f"/v1/datasets/{ds}", headers=org.headers).json()["chunks"] == 5

    slug = _endpoint(api, org, ds)
    r = api.post(
        f"/v1/endpoints/{slug}/query",
        json={"query": "How often should the zephyr orchid be watered?", "top_k": 3},
        headers=org.headers,
    )
    assert r.status_code == 200, r.text
    answer = r.json()
    top = answer["sources"][0]
    assert top["source"] == "guide.md"
    assert top["heading"] == "Zephyr Garden Guide > Watering"
    assert "rainwater" in top["text"] and top["dataset_id"] == ds
    assert answer["answer"] and "[0]" in answer["answer"]
    assert answer["usage"]["completion_tokens"] > 0

    r = api.post(
        f"/v1/endpoints/{slug}/query",
        json={"query": "who writes storms in a leather ledger", "top_k": 2},
        headers=org.headers,
    )
    assert r.json()["sources"][0]["source"] == "lighthouse.pdf"

    # search-only endpoints answer only the sources
    search = _endpoint(api, org, ds, response_type="search", model=None)
    r = api.post(
        f"/v1/endpoints/{search}/query",
        json={"query": "snails lettuce copper"},
        headers=org.headers,
    )
    assert r.json()["answer"] is None
    assert r.json()["sources"][0]["heading"] == "Zephyr Garden Guide > Pests"

    # streaming: the worker's tokens relayed as OpenAI chunk events, ending with [DONE]
    events = _stream(api, slug, org, {"query": "pruning shears", "max_tokens": 12})
    assert events[0][0]["object"] == "chat.completion.chunk"
    assert events[0][0]["sources"][0]["heading"] == "Zephyr Garden Guide > Pruning"
    deltas = [e[1] for e in events[1:-1] if e[1]]
    assert len(deltas) >= 3, events  # one event a generated piece, not one at the end
    last = events[-1][0]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    # each delta is at most one token (a citation suffix may follow when none was cited)
    assert len(deltas) <= last["usage"]["completion_tokens"] + 1

    # unchanged file: skipped, no job; changed file: its chunks replaced
    r = _upload(api, org, ds, [("guide.md", GUIDE_MD.encode())])
    assert r.status_code == 200 and r.json()["files"][0]["unchanged"] is True
    changed = GUIDE_MD.replace("## Pests\n", "## Harvest\n\nPick figs at dawn.\n\n## Pests\n")
    r = _upload(api, org, ds, [("guide.md", changed.encode())])
    assert r.status_code == 202
    job = _wait(api, r.json()["id"], org.headers)
    assert job["progress"]["chunks_indexed"] == 5
    deadline = time.monotonic() + 15  # the index's count, read by the API process
    while api.get(f"/v1/datasets/{ds}", headers=org.headers).json()["chunks"] != 6:
        assert time.monotonic() < deadline, "the changed file's chunks did not replace its old ones"
        time.sleep(0.5)

    # delete a file: its chunks leave the index
    files = api.get(f"/v1/datasets/{ds}/files", headers=org.headers).json()["data"]
    pdf = next(f for f in files if f["name"] == "lighthouse.pdf")
    assert (
        api.delete(f"/v1/datasets/{ds}/files/{pdf['id']}", headers=org.headers).status_code == 204
    )
    assert api.get(f"/v1/datasets/{ds}", headers=org.headers).json()["chunks"] == 5
    r = api.post(
        f"/v1/endpoints/{search}/query",
        json={"query": "basalt lighthouse ledger", "top_k": 10},
        headers=org.headers,
    )
    assert all(s["source"] != "lighthouse.pdf" for s in r.json()["sources"])

    # Syft Space's skip/limit lists
    page = api.get("/v1/endpoints", params={"skip": 0, "limit": 1}, headers=org.headers).json()
    assert page["total"] == 2 and len(page["items"]) == 1 and page["skip"] == 0


def _stream(api: httpx.Client, slug: str, org: OrgKey | None, body: dict[str, Any]) -> list[Any]:
    """The SSE events of a streamed query, each as ``(event, delta text, arrival time)``."""
    headers = org.headers if org else {}
    events: list[Any] = []
    with api.stream(
        "POST", f"/v1/endpoints/{slug}/query", json={**body, "stream": True}, headers=headers
    ) as response:
        assert response.status_code == 200, response.read()
        lines = [
            (line, time.monotonic()) for line in response.iter_lines() if line.startswith("data: ")
        ]
    assert lines[-1][0] == "data: [DONE]"
    for line, arrived in lines[:-1]:
        event = json.loads(line.removeprefix("data: "))
        assert "error" not in event, event
        events.append((event, event["choices"][0]["delta"].get("content"), arrived))
    return events


def test_answer_streams_while_the_provider_generates(rag_stack: Stack) -> None:
    """An ``openai_compatible`` provider that sends a word every 0.4 s: the query's deltas
    arrive as the words are generated (spread over the generation), not together at the end."""
    org = make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    ds = _dataset(api, org)
    _wait(api, _upload(api, org, ds, [("guide.md", GUIDE_MD.encode())]).json()["id"], org.headers)
    words = ["Rain", "water", " every", " nine", " days", " [0]"]
    with serve(slow_provider(words, gap=0.4)) as base:
        r = api.post(
            "/v1/models/providers",
            json={"name": "slow", "kind": "openai_compatible", "base_url": f"{base}/v1",
                  "models": ["m"]},
            headers=org.headers,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        slug = _endpoint(api, org, ds, model="m", provider=r.json()["id"])
        events = _stream(api, slug, org, {"query": "watering the orchid"})
    assert events[0][0]["sources"][0]["heading"] == "Zephyr Garden Guide > Watering"
    deltas = events[1:-1]
    assert [d[1] for d in deltas] == words
    assert deltas[-1][2] - deltas[0][2] > 1.2  # five gaps of 0.4 s between first and last
    assert events[-1][0]["usage"]["completion_tokens"] == len(words)


def test_bad_files_fail_clearly_and_the_worker_survives(rag_stack: Stack) -> None:
    org = make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    ds = _dataset(api, org)
    r = _upload(
        api, org, ds, [("notes.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))]
    )
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    r = _upload(api, org, ds, [("empty.md", b"")])
    assert r.status_code == 422 and "empty" in r.json()["error"]["message"]
    r = _upload(api, org, ds, [("big.md", b"word " * (2 * 1024 * 1024 + 1))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    r = _upload(api, org, ds, [("scan.pdf", pdf_without_text())])
    assert r.status_code == 202
    job = _wait(api, r.json()["id"], org.headers)
    assert job["status"] == "failed"
    assert "without text" in job["error"]["message"]
    files = api.get(f"/v1/datasets/{ds}/files", headers=org.headers).json()["data"]
    assert files[0]["status"] == "failed" and files[0]["error"]["code"] == "validation_error"
    # the worker still ingests
    r = _upload(api, org, ds, [("ok.txt", b"Plain text about the violet kettle.")])
    assert _wait(api, r.json()["id"], org.headers)["status"] == "completed"


def test_policies(rag_stack: Stack) -> None:
    owner, other = make_org(), make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    ds = _dataset(api, owner)
    r = _upload(api, owner, ds, [("guide.md", GUIDE_MD.encode())])
    _wait(api, r.json()["id"], owner.headers)
    slug = _endpoint(api, owner, ds, response_type="search", model=None)
    q = {"query": "watering the orchid"}
    r = api.post(f"/v1/endpoints/{slug}/query", json=q, headers=other.headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = api.post(f"/v1/endpoints/{slug}/query", json=q)
    assert r.status_code == 403

    def policy(type_: str, config: dict[str, Any]) -> str:
        r = api.post(
            "/v1/policies",
            json={"name": type_, "type": type_, "config": config},
            headers=owner.headers,
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    access = policy("access", {"organizations": [other.name]})
    rate = policy("rate_limit", {"requests_per_minute": 2})
    r = api.patch(
        f"/v1/endpoints/{slug}", json={"policy_ids": [access, rate]}, headers=owner.headers
    )
    assert r.status_code == 200, r.text
    assert r.json()["policy_ids"] == [access, rate]
    assert api.post(f"/v1/endpoints/{slug}/query", json=q, headers=other.headers).status_code == 200
    assert api.post(f"/v1/endpoints/{slug}/query", json=q, headers=other.headers).status_code == 200
    r = api.post(f"/v1/endpoints/{slug}/query", json=q, headers=other.headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1
    assert api.post(f"/v1/endpoints/{slug}/query", json=q).status_code == 403  # not public

    public = policy("access", {"public": True})
    budget = policy("budget", {"tokens_per_day": 10})
    api.patch(f"/v1/endpoints/{slug}", json={"policy_ids": [public, budget]}, headers=owner.headers)
    r = api.post(
        f"/v1/endpoints/{slug}/query", json={"query": "orchid rainwater watering schedule"}
    )
    assert r.status_code == 200, r.text  # anonymous caller, public endpoint
    used = r.json()["usage"]["total_tokens"]
    assert used > 0
    for _ in range(10):
        r = api.post(
            f"/v1/endpoints/{slug}/query", json={"query": "orchid rainwater watering schedule"}
        )
        if r.status_code != 200:
            break
    assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"


def test_crawl_datasets(rag_stack: Stack) -> None:
    from tests.sites.site import GeneratedSite

    org = make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    with GeneratedSite(pages=6, traps=False) as site:
        config = {"url": site.base, "mode": "full", "max_pages": 4, "render": "never"}
        r = api.post(
            "/v1/datasets", json={"name": "site", "dtype": "crawl", "configuration": config},
            headers=org.headers,
        )  # fmt: skip
        assert r.status_code == 201, r.text
        created = r.json()
        crawl_job = created["configuration"]["job_id"]
        job = _wait(api, created["job"]["id"], org.headers)
    assert job["status"] == "completed", job
    crawl = api.get(f"/v1/jobs/{crawl_job}", headers=org.headers).json()
    pages = crawl["progress"]["pages_crawled"]
    assert pages >= 2
    assert job["progress"]["files_total"] == pages == job["progress"]["files_done"]
    assert job["progress"]["chunks_indexed"] >= pages
    files = api.get(f"/v1/datasets/{created['id']}/files", headers=org.headers).json()["data"]
    assert len(files) == pages
    assert all(f["source"].startswith(site.base) and f["status"] == "indexed" for f in files)

    # a dataset over the finished crawl's job: the same pages, searchable by their URLs
    body = {"name": "again", "dtype": "crawl", "configuration": {"job_id": crawl_job}}
    r = api.post("/v1/datasets", json=body, headers=org.headers)
    assert r.status_code == 201, r.text
    again = r.json()
    job = _wait(api, again["job"]["id"], org.headers)
    files = api.get(f"/v1/datasets/{again['id']}/files", headers=org.headers).json()["data"]
    assert job["progress"]["files_done"] == pages, (job, files)
    slug = _endpoint(api, org, again["id"], response_type="search", model=None)
    r = api.post(
        f"/v1/endpoints/{slug}/query", json={"query": "crawler queue"}, headers=org.headers
    )
    sources = r.json()["sources"]
    assert sources and all(s["source"].startswith(site.base) for s in sources)


PASSAGES = [
    (
        "https://docs.test/tides",
        "Tides",
        "The harbour gate closes before the spring tide.",
    ),
    ("https://docs.test/bees", "Bees", "The apiary moves the hives to the heather in August."),
    ("https://docs.test/forge", "Forge", "The blacksmith tempers the quench oil at sixty degrees."),
]


def _embed(api: httpx.Client, org: OrgKey, texts: list[str]) -> list[list[float]]:
    r = api.post(
        "/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": texts}, headers=org.headers
    )
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]]


def _search(api: httpx.Client, org: OrgKey, slug: str, body: dict[str, Any]) -> httpx.Response:
    return api.post(f"/v1/endpoints/{slug}/query", json=body, headers=org.headers)


def test_pgvector_table_dataset(rag_stack: Stack, pgvector_url: str) -> None:
    """``dtype: pgvector``: someone's table (own column names) in a real PostgreSQL + pgvector
    reached over TCP, searched in place with the endpoint's question."""
    import psycopg

    org = make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    name = f"ext_{time.monotonic_ns() % 10**9}"
    folder = pgvector_url.split("host=")[1]
    with psycopg.connect(pgvector_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    vectors = _embed(api, org, [text for _, _, text in PASSAGES])
    with psycopg.connect(pgvector_url.replace("/rag_index?", f"/{name}?"), autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")
        c.execute(
            "CREATE TABLE kb (pk serial PRIMARY KEY, body text, url text, section text,"
            " emb vector(384))"
        )
        for (url, section, text), vector in zip(PASSAGES, vectors, strict=True):
            c.execute(
                "INSERT INTO kb (body, url, section, emb) VALUES (%s, %s, %s, %s::vector)",
                (text, url, section, str(vector)),
            )
    with tcp_to_unix(f"{folder}/.s.PGSQL.5432") as port:
        config = {
            "url": f"postgresql://postgres:hunter2@127.0.0.1:{port}/{name}",
            "table": "kb", "id_column": "pk", "embedding_column": "emb", "text_column": "body",
            "source_column": "url", "heading_column": "section",
        }  # fmt: skip
        body = {"name": "kb", "dtype": "pgvector", "configuration": config}
        r = api.post("/v1/datasets", json=body, headers=org.headers)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["configuration"]["dims"] == 384 and ds["chunks"] is None
        assert "hunter2" not in r.text and ":****@" in ds["configuration"]["url"]
        slug = _endpoint(api, org, ds["id"], response_type="search", model=None)
        r = _search(api, org, slug, {"query": "when does the harbour gate shut", "top_k": 2})
        assert r.status_code == 200, r.text
        top = r.json()["sources"][0]
        assert (top["source"], top["heading"]) == ("https://docs.test/tides", "Tides")
        assert top["dataset_id"] == ds["id"] and "spring tide" in top["text"]
        # a filter is part of the table's WHERE: only that source's row, even if far
        only = {"source": "https://docs.test/forge"}
        r = _search(api, org, slug, {"query": "harbour gate", "filters": only, "top_k": 3})
        assert [s["source"] for s in r.json()["sources"]] == ["https://docs.test/forge"]
        # wrong table, wrong column, an unsafe host, a Unix socket: 422 naming the field
        for change, field in (
            ({"table": "nope"}, "table"),
            ({"text_column": "nope"}, "text_column"),
            ({"embedding_column": "body"}, "embedding_column"),
        ):
            bad = {**body, "configuration": {**config, **change}}
            r = api.post("/v1/datasets", json=bad, headers=org.headers)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["details"][0]["loc"] == ["body", "configuration", field]
        for url, code in (
            ("postgresql://postgres@169.254.169.254:5432/x", "unsafe_url"),
            (f"postgresql://postgres@/x?host={folder}", "validation_error"),
        ):
            bad = {**body, "configuration": {**config, "url": url}}
            r = api.post("/v1/datasets", json=bad, headers=org.headers)
            assert r.status_code == 422 and r.json()["error"]["code"] == code, r.text
        r = _upload(api, org, ds["id"], [("a.md", b"# A\n\ntext")])
        assert r.status_code == 422  # nothing is ingested into someone else's table


def test_remote_vector_store_dataset(rag_stack: Stack) -> None:
    """``dtype: remote_vector_store``: a Qdrant-compatible REST store (a real HTTP server)."""
    org = make_org()
    api = httpx.Client(base_url=rag_stack.url, timeout=240)
    store = QdrantStore("kb", api_key="k-123")
    vectors = _embed(api, org, [text for _, _, text in PASSAGES])
    for i, ((url, section, text), vector) in enumerate(zip(PASSAGES, vectors, strict=True)):
        payload = {"text": text, "source": url, "heading": section}
        store.points.append({"id": i + 1, "vector": vector, "payload": payload})
    with serve(store.handler()) as base:
        config = {"url": base, "collection": "kb", "api_key": "k-123"}
        body = {"name": "remote", "dtype": "remote_vector_store", "configuration": config}
        r = api.post("/v1/datasets", json=body, headers=org.headers)
        assert r.status_code == 201, r.text
        ds = r.json()
        assert ds["configuration"]["api_key"] == "****" and "k-123" not in r.text
        slug = _endpoint(api, org, ds["id"], response_type="search", model=None)
        r = _search(api, org, slug, {"query": "moving beehives to heather", "top_k": 2})
        assert r.status_code == 200, r.text
        sources = r.json()["sources"]
        assert sources[0]["source"] == "https://docs.test/bees" and len(sources) == 2
        assert sources[0]["heading"] == "Bees" and store.requests[-1]["limit"] >= 2
        only = {"source": "https://docs.test/forge"}
        r = _search(api, org, slug, {"query": "bees", "filters": only})
        assert [s["source"] for s in r.json()["sources"]] == ["https://docs.test/forge"]
        assert store.requests[-1]["filter"]["must"][0]["match"]["value"] == only["source"]
        # the store refuses a wrong key: the query says so (503), the API stays up
        store.api_key = "rotated"
        r = _search(api, org, slug, {"query": "bees"})
        assert r.status_code == 503 and "answered 403" in r.json()["error"]["message"]
    bad = {**body, "configuration": {**config, "url": "http://169.254.169.254/"}}
    r = api.post("/v1/datasets", json=bad, headers=org.headers)
    assert r.status_code == 422 and r.json()["error"]["code"] == "unsafe_url"

"""RAG: ingestion throughput, retrieval quality and search latency, each beside its anchor.

(a) Ingestion: a generated Markdown corpus uploaded to a dataset and indexed by an ``ingest``
    job on a real ingest worker (subprocess, the packaged MiniLM), chunks/s from the job's own
    start and end, vs sentence-transformers encoding the very same chunk texts in this process
    (the anchor). ``ratio=`` is Conveyor ÷ anchor (target ≥ 0.8).
(b) Retrieval: a generated set of passages, each the only one holding its answer, and two kinds
    of question (a paraphrase sharing no rare word, and a question naming the passage's rare
    code word with a paraphrased topic). recall@5 and nDCG@10 of Conveyor's hybrid search
    (relative score fusion), of the same candidates fused by RRF, of vector-only and of
    BM25-only, on the same index; overall and per kind of question.
(c) Search latency: p50/p99 of the index's vector search alone and of its hybrid search (vector
    + full-text + fusion; the query vector precomputed) at ``--chunks`` chunks on the embedded
    index and on PostgreSQL+pgvector (COPY, then one HNSW build, timed) started from the
    ``pgserver`` wheel.

    python benchmarks/rag.py                         # all three, 10k chunks
    python benchmarks/rag.py --only c --chunks 100000 --index pgvector

``--max-term-chunks`` sets the common-terms cutoff (``rag.backends.base.MAX_TERM_CHUNKS``): a
query term held by more chunks is left out of the keyword half (0: the default).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import harness  # noqa: E402

TOPICS = [
    ("watering", "how often the plant needs water", "irrigation schedule and moisture"),
    ("pruning", "when to cut the branches back", "trimming stems with shears"),
    ("pests", "which insects attack the leaves", "aphids and beetles on foliage"),
    ("soil", "what ground it grows best in", "loam acidity and drainage"),
    ("light", "how much sun it tolerates", "shade and direct sunlight exposure"),
    ("harvest", "when the fruit is ready to pick", "ripeness and gathering season"),
    ("frost", "how it survives the winter cold", "freezing temperatures and mulch"),
    ("pollination", "which creatures carry its pollen", "bees moths and flowers"),
]
PLANTS = ["orchid", "fern", "maple", "tomato", "lavender", "cactus", "willow", "rose", "bamboo",
          "ivy", "basil", "pepper", "lily", "oak", "mint", "sage"]  # fmt: skip


def _code(rng: random.Random) -> str:
    return "".join(rng.choice("bcdfghjklmnpqrstvwxz") + rng.choice("aeiou") for _ in range(3))


REGIONS = [
    ("northern mountains", "high alpine slopes"),
    ("coastal marshes", "salty wetlands by the sea"),
    ("desert valleys", "dry sandy basins"),
]


def retrieval_set(seed: int = 7) -> tuple[list[tuple[str, str]], list[tuple[str, int, str]]]:
    """Passages (code, text) and questions (text, index of the one relevant passage, kind).

    Three cultivars share each plant and topic; one grows in each region. A paraphrased
    question names the region in other words (no word shared: BM25 is blind to it); a code-word
    question names the cultivar's made-up code and no plant (vectors barely see the code)."""
    rng = random.Random(seed)
    passages: list[tuple[str, str]] = []
    questions: list[tuple[str, int, str]] = []
    for plant in PLANTS:
        for topic, paraphrase, detail in TOPICS:
            for region, region_paraphrase in REGIONS:
                code = _code(rng)
                number = rng.randint(2, 40)
                text = (
                    f"Cultivar {code} of the {plant}, grown in the {region}: {topic}. The rule "
                    f"about {detail} is {number} units, kept by the {code} growers' guild."
                )
                passages.append((code, text))
                index = len(passages) - 1
                questions.append(
                    (f"For the {plant} of the {region_paraphrase}, {paraphrase}?", index, "para")
                )
                questions.append(
                    (f"What do the {code} people say about {paraphrase}?", index, "exact")
                )
    return passages, questions


def _metrics(ranked: list[list[int]], questions: list[tuple[str, int, str]]) -> tuple[float, float]:
    recall = ndcg = 0.0
    for ids, (_, relevant, _kind) in zip(ranked, questions, strict=True):
        recall += 1.0 if relevant in ids[:5] else 0.0
        if relevant in ids[:10]:
            ndcg += 1.0 / math.log2(ids.index(relevant) + 2)
    return recall / len(questions), ndcg / len(questions)


def bench_retrieval(model: object, max_term_chunks: int = 0) -> None:
    from rag.backends.base import Filters, IndexedChunk
    from rag.backends.embedded import EmbeddedIndex

    passages, questions = retrieval_set()
    with tempfile.TemporaryDirectory() as tmp:
        index = EmbeddedIndex(f"sqlite:///{tmp}/index.db")
        index.max_term_chunks = max_term_chunks or index.max_term_chunks
        vectors = model.encode([t for _, t in passages], batch_size=64)  # type: ignore[attr-defined]
        chunk_of: dict[str, int] = {}
        for i, ((_, text), vector) in enumerate(zip(passages, vectors, strict=True)):
            index.replace_file("bench", f"p{i}", f"p{i}", [IndexedChunk(text, "", 0, len(text))],
                               np.asarray([vector]))  # fmt: skip
            chunk_of[f"p{i}"] = i
        q_vectors = model.encode([q for q, _, _ in questions], batch_size=64)  # type: ignore[attr-defined]
        flt = Filters(dataset_ids=("bench",))
        results: dict[str, list[list[int]]] = {"hybrid": [], "rrf": [], "vector": [], "bm25": []}
        for (q, _, _), qv in zip(questions, q_vectors, strict=True):
            qv = np.asarray(qv, dtype=np.float32)
            results["hybrid"].append(
                [chunk_of[h.file_id] for h in index.hybrid_search(q, qv, flt, 10)]
            )
            results["rrf"].append(
                [chunk_of[h.file_id] for h in index.hybrid_search(q, qv, flt, 10, fusion="rrf")]
            )
            results["vector"].append(
                [chunk_of[h.file_id] for h in index.vector_search(qv, flt, 10)]
            )
            results["bm25"].append([chunk_of[h.file_id] for h in index.keyword_search(q, flt, 10)])
    print(
        f"(b) retrieval: {len(passages)} passages, {len(questions)} questions (one relevant each),"
        f" common terms: in more than {index.max_term_chunks} chunks"
    )
    for name, ranked in results.items():
        recall, ndcg = _metrics(ranked, questions)
        parts = []
        for kind in ("para", "exact"):
            picked = [i for i, q in enumerate(questions) if q[2] == kind]
            r, n = _metrics([ranked[i] for i in picked], [questions[i] for i in picked])
            parts.append(f"{kind} {r:.3f}/{n:.3f}")
        print(f"    {name:>6}: recall@5 {recall:.3f}  nDCG@10 {ndcg:.3f}   ({', '.join(parts)})")


def corpus(docs: int, seed: int = 3) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    words = [w for t in TOPICS for w in " ".join(t).split()] + PLANTS
    files = []
    for d in range(docs):
        parts = [f"# Handbook {d}\n"]
        for s in range(8):
            parts.append(f"## Section {s} {rng.choice(PLANTS)}\n")
            for _ in range(3):
                parts.append(
                    " ".join(rng.choice(words) for _ in range(rng.randint(40, 80))) + ".\n"
                )
        files.append((f"doc{d}.md", "\n".join(parts).encode()))
    return files


def bench_ingest(bench: harness.Bench, docs: int) -> None:
    from sentence_transformers import SentenceTransformer

    from inference.engines.embeddings_engine import packaged_minilm_path
    from rag import documents, service
    from rag.schemas import DatasetCreate
    from store.db import session_scope
    from store.models import Job

    org = harness.make_org()
    cmd = [
        sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", "ingest",
        "-P", "threads", "-c", "1", "-l", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]  # fmt: skip
    worker = bench.start("ingest", cmd)

    def ingest(files: list[tuple[str, bytes]]) -> Job:
        with session_scope() as db:
            ds, _ = service.create_dataset(db, org.org_id, DatasetCreate(name="bench"))
            job, _ = service.add_files(db, ds, files)
            assert job is not None
            job_id = job.id
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            with session_scope() as db:
                found = db.get(Job, job_id)
                assert found is not None
                if found.status in ("completed", "failed"):
                    db.expunge(found)
                    return found
            if worker.poll() is not None:
                raise RuntimeError(bench.log_tail("ingest"))
            time.sleep(0.2)
        raise RuntimeError("ingest did not finish")

    ingest(corpus(1, seed=99))  # warm-up: the worker loads its model once
    files = corpus(docs)
    job = ingest(files)
    assert job.status == "completed", job.error
    assert job.started_at and job.completed_at
    chunks = int(job.progress["chunks_indexed"])
    ours = chunks / (job.completed_at - job.started_at).total_seconds()

    model = SentenceTransformer(str(packaged_minilm_path()), device="cpu", local_files_only=True)
    size = min(512, int(model.max_seq_length or 512))

    def spans(text: str) -> list[tuple[int, int]]:
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(a, b) for a, b in enc["offset_mapping"] if b > a]

    texts = []
    for name, data in files:
        text = documents.extract(name, documents.sniff(name, data), data)
        for c in documents.chunk_markdown(text, spans, size=size, overlap=64):
            texts.append(f"{c.heading}\n{c.text}" if c.heading else c.text)
    started = time.perf_counter()
    model.encode(texts, batch_size=64, show_progress_bar=False)
    anchor = len(texts) / (time.perf_counter() - started)
    print(f"(a) ingestion: {docs} docs, {chunks} chunks (anchor encoded {len(texts)})")
    print(f"    sentence-transformers direct: {anchor:.1f} chunks/s")
    print(f"    Conveyor ingest job:          {ours:.1f} chunks/s   ratio={ours / anchor:.2f}")
    bench.stop(worker)
    bench_retrieval(model)


def _texts(rng: np.random.Generator, count: int, words: int) -> list[str]:
    """``count`` texts of ``words`` words from a Zipf-distributed vocabulary of 20k made-up
    words, like a real corpus's long tail (drawn in one go: fast at 1M chunks)."""
    lexicon = np.array([_code(random.Random(i)) + str(i) for i in range(20_000)])
    weights = 1.0 / np.arange(1, len(lexicon) + 1)
    drawn = rng.choice(lexicon, (count, words), p=weights / weights.sum())
    return [" ".join(row) for row in drawn]


def _load_embedded(index: object, n: int, dims: int, rng: np.random.Generator) -> str:
    from rag.backends.base import IndexedChunk

    batch = 2000
    started = time.perf_counter()
    for first in range(0, n, batch):
        count = min(batch, n - first)
        chunks = [IndexedChunk(t, "h", 0, 10) for t in _texts(rng, count, 60)]
        vectors = rng.standard_normal((count, dims)).astype(np.float32)
        index.replace_file("lat", f"f{first}", f"f{first}", chunks, vectors)  # type: ignore[attr-defined]
    return f"load {time.perf_counter() - started:.1f}s"


def _load_pgvector(index: object, n: int, dims: int, rng: np.random.Generator) -> str:
    """Bulk load as for a first import: COPY the rows, then build the HNSW index once (one
    index insert per row instead would take ~6 ms a row here); the build rate is printed."""
    from rag.backends.pgvector import _literal

    conn_of = index._conn  # type: ignore[attr-defined]
    started = time.perf_counter()
    batch = 5000
    with conn_of() as conn:
        for first in range(0, n, batch):
            count = min(batch, n - first)
            texts = _texts(rng, count, 60)
            vectors = rng.standard_normal((count, dims)).astype(np.float32)
            with conn.cursor().copy(
                "COPY rag_chunks (dataset_id, file_id, source, heading, text, start_char, "
                "end_char, dims, embedding) FROM STDIN"
            ) as copy:
                for text, vector in zip(texts, vectors, strict=True):
                    copy.write_row(("lat", f"f{first}", f"f{first}", "h", text, 0, 10, dims,
                                    _literal(vector)))  # fmt: skip
        copied = time.perf_counter() - started
        conn.execute("ALTER SYSTEM SET maintenance_work_mem = '2GB'")
        conn.execute("SELECT pg_reload_conf()")
    index.close()  # type: ignore[attr-defined]
    started = time.perf_counter()
    index._ensure_dims(dims)  # type: ignore[attr-defined]
    built = time.perf_counter() - started
    started = time.perf_counter()
    index.count_terms("lat")  # type: ignore[attr-defined]
    counted = time.perf_counter() - started
    with conn_of() as conn:
        conn.execute("ANALYZE rag_chunks")
    return (
        f"COPY {copied:.1f}s, HNSW build {built:.1f}s ({n / built:.0f} vectors/s), "
        f"term counts {counted:.1f}s"
    )


def _latency(
    index: object, n: int, dims: int, queries: int, label: str, max_term_chunks: int
) -> None:
    from rag.backends.base import Filters

    if max_term_chunks:
        index.max_term_chunks = max_term_chunks  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    loader = _load_pgvector if label == "pgvector" else _load_embedded
    loaded = loader(index, n, dims, rng)
    flt = Filters(dataset_ids=("lat",))
    words = _texts(rng, queries + 5, 6)
    times: dict[str, list[float]] = {"vector": [], "keyword": [], "hybrid": []}
    keyword = 0
    for i in range(queries + 5):
        q = rng.standard_normal(dims).astype(np.float32)
        t0 = time.perf_counter()
        assert index.vector_search(q, flt, 10)  # type: ignore[attr-defined]
        t1 = time.perf_counter()
        found = index.keyword_search(words[i], flt, 50)  # type: ignore[attr-defined]
        t2 = time.perf_counter()
        assert index.hybrid_search(words[i], q, flt, 10)  # type: ignore[attr-defined]
        if i >= 5:
            keyword += bool(found)
            times["vector"].append(t1 - t0)
            times["keyword"].append(t2 - t1)
            times["hybrid"].append(time.perf_counter() - t2)
    figures = []
    for name, got in times.items():
        got.sort()
        p50, p99 = harness.percentile(got, 50) * 1000, harness.percentile(got, 99) * 1000
        figures.append(f"{name} p50 {p50:.1f} ms p99 {p99:.1f} ms")
    print(f"    {label:>9} @ {n} chunks ({loaded}): {'; '.join(figures)} ({queries} queries,"
          f" {keyword} with a keyword half)")  # fmt: skip


def bench_latency(n: int, queries: int, only: str | None, max_term_chunks: int) -> None:
    from rag.backends.embedded import EmbeddedIndex
    from rag.backends.pgvector import PgVectorIndex

    print("(c) search-only latency (query vector precomputed; vector half alone (10 hits), "
          "keyword half alone (50, hybrid's depth), and hybrid)")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        if only in (None, "embedded"):
            _latency(EmbeddedIndex(f"sqlite:///{tmp}/index.db"), n, 384, queries, "embedded",
                     max_term_chunks)  # fmt: skip
        if only == "embedded":
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")  # type: ignore[attr-defined]
        try:
            _latency(PgVectorIndex(f"postgresql://postgres@/postgres?host={tmp}/pg"), n, 384,
                     queries, "pgvector", max_term_chunks)  # fmt: skip
        finally:
            server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=["a", "b", "c"], default=None)
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--index", choices=["embedded", "pgvector"], default=None)
    parser.add_argument("--max-term-chunks", type=int, default=0)
    args = parser.parse_args()
    if args.only in (None, "a"):
        with harness.services() as bench:
            bench_ingest(bench, args.docs)  # (a), then (b) with the same model
    elif args.only == "b":
        from sentence_transformers import SentenceTransformer

        from inference.engines.embeddings_engine import packaged_minilm_path

        model = SentenceTransformer(str(packaged_minilm_path()), device="cpu")
        bench_retrieval(model, args.max_term_chunks)
    if args.only in (None, "c"):
        bench_latency(args.chunks, args.queries, args.index, args.max_term_chunks)


if __name__ == "__main__":
    main()

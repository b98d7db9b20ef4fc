"""Sniffing, extraction and chunking (no services): exact offsets, heading paths, token windows;
and the reciprocal rank fusion of the hybrid search on the embedded index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag import documents
from rag.backends.base import Filters, IndexedChunk
from rag.backends.embedded import EmbeddedIndex
from rag.errors import BadFile, UnsupportedFile
from tests.rag.files import GUIDE_MD, pdf_with_text, pdf_without_text


def test_sniff_trusts_bytes_not_names() -> None:
    assert documents.sniff("a.txt", pdf_with_text("hello")) == "application/pdf"
    assert documents.sniff("a.md", b"<!DOCTYPE html><html><body>x</body></html>") == "text/html"
    assert documents.sniff("a.md", b'{"text": "a"}\n{"text": "b"}\n') == "application/jsonl"
    assert documents.sniff("a.pdf", b"# Title\n\nplain words") == "text/markdown"
    with pytest.raises(UnsupportedFile):
        documents.sniff("notes.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(BadFile):
        documents.sniff("empty.md", b"  \n")


def test_extract() -> None:
    assert documents.extract("a.pdf", "application/pdf", pdf_with_text("basalt lighthouse")) == (
        "basalt lighthouse"
    )
    with pytest.raises(BadFile, match="without text"):
        documents.extract("s.pdf", "application/pdf", pdf_without_text())
    html = b"<html><body><h1>Top</h1><p>Body text</p></body></html>"
    assert documents.extract("a.html", "text/html", html).startswith("# Top")
    jsonl = b'{"title": "T", "text": "one"}\n{"content": "two"}\n'
    assert documents.extract("a.jsonl", "application/jsonl", jsonl) == "# T\n\none\n\ntwo"
    with pytest.raises(BadFile, match="line 1"):
        documents.extract("b.jsonl", "application/jsonl", b'{"id": 1}\n')


def test_chunks_follow_headings_with_exact_offsets() -> None:
    chunks = documents.chunk_markdown(GUIDE_MD, documents.whitespace_spans, size=50, overlap=5)
    assert [c.heading for c in chunks] == [
        "Zephyr Garden Guide",
        "Zephyr Garden Guide > Watering",
        "Zephyr Garden Guide > Pruning",
        "Zephyr Garden Guide > Pests",
    ]
    for c in chunks:
        assert GUIDE_MD[c.start : c.end] == c.text
    assert chunks[1].text.startswith("## Watering") and "rainwater" in chunks[1].text


def test_long_paragraphs_split_into_overlapping_token_windows() -> None:
    words = [f"w{i}" for i in range(100)]
    text = "# H\n\n" + " ".join(words)
    chunks = documents.chunk_markdown(text, documents.whitespace_spans, size=30, overlap=10)
    bodies = [c for c in chunks if c.text != "# H"]
    assert len(bodies) == 5  # windows start at words 0, 20, 40, 60, 80
    assert all(len(c.text.split()) == 30 for c in bodies[:-1])
    assert bodies[0].text.split()[-10:] == bodies[1].text.split()[:10]  # the overlap
    assert bodies[-1].text.split()[-1] == "w99"
    assert all(text[c.start : c.end] == c.text for c in chunks)


def test_hybrid_fuses_vector_and_keyword_ranks(tmp_path: Path) -> None:
    index = EmbeddedIndex(f"sqlite:///{tmp_path / 'i.db'}")
    texts = ["alpha zebra", "beta", "gamma", "delta"]
    vectors = np.eye(4, dtype=np.float32)
    for i, (text, vector) in enumerate(zip(texts, vectors, strict=True)):
        index.replace_file(
            "d", f"f{i}", f"s{i}", [IndexedChunk(text, "", 0, len(text))], vector[None]
        )
    flt = Filters(("d",))
    query = np.array([0, 1, 0.9, 0], dtype=np.float32)  # nearest: beta, then gamma (close)
    assert [h.file_id for h in index.vector_search(query, flt, 2)] == ["f1", "f2"]
    assert [h.file_id for h in index.keyword_search("zebra", flt, 2)] == ["f0"]
    fused = index.hybrid_search("zebra gamma", query, flt, 4)
    # gamma is a close 2nd by vector and matches a keyword: it outranks beta (1st by vector
    # only): 0.75 * 0.9 + 0.25 * 1 against 0.75 * 1
    assert [h.file_id for h in fused[:2]] == ["f2", "f1"]
    assert fused[0].score == pytest.approx(0.925, abs=1e-3)
    assert fused[1].score == pytest.approx(0.75, abs=1e-3)
    # keyword candidates that tie ("the" is a stop word; "beta", "gamma" match once each)
    # add the same to each and leave the vector order as it was
    tied = index.hybrid_search("the beta gamma", query, flt, 2)
    assert [h.file_id for h in tied] == ["f1", "f2"]
    # reciprocal rank fusion stays available
    assert index.hybrid_search("zebra gamma", query, flt, 4, fusion="rrf")[0].file_id == "f2"
    assert index.count("d") == 4
    index.delete_file("d", "f2")
    assert index.count("d") == 3 and index.count("d", "f2") == 0
    assert all(h.file_id != "f2" for h in index.hybrid_search("gamma", query, flt, 4))

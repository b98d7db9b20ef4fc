"""Files into text, text into chunks.

``sniff`` decides what a file is from its bytes (never its name); ``extract`` turns it into
Markdown-ish text (PDF text with ``pypdf``, HTML through ``markdownify``, JSONL's text fields);
``chunk_markdown`` splits by Markdown structure first (headings, then paragraphs) and then by
tokens of the embedding model's tokenizer, each chunk keeping its heading path and character
offsets in the extracted text.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from rag.errors import BadFile, UnsupportedFile

MEDIA_TYPES = ("text/markdown", "text/html", "application/pdf", "application/jsonl")
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_HTML = re.compile(rb"^\s*(<!doctype html|<html|<head|<body|<!--)", re.IGNORECASE)
_JSONL_FIELDS = ("text", "content", "markdown", "body")

#: ``tokens(text) -> [(start, end), …]``: the character span of each token of ``text``.
TokenSpans = Callable[[str], list[tuple[int, int]]]


def sniff(name: str, data: bytes) -> str:
    """The media type of ``data``; 422 when empty, 415 when it is nothing a dataset holds."""
    if not data.strip():
        raise BadFile(f"{name!r} is empty.", details={"file": name, "reason": "empty"})
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsupportedFile(
            f"{name!r} is binary, not Markdown, text, HTML, PDF or JSONL (sniffed from its bytes).",
            details={"file": name, "reason": "binary"},
        ) from None
    if "\x00" in text or _control_ratio(text) > 0.01:
        raise UnsupportedFile(
            f"{name!r} is binary, not Markdown, text, HTML, PDF or JSONL (sniffed from its bytes).",
            details={"file": name, "reason": "binary"},
        )
    if _HTML.match(data[:512]):
        return "text/html"
    if _is_jsonl(text):
        return "application/jsonl"
    return "text/markdown"


def _control_ratio(text: str) -> float:
    sample = text[:65536]
    bad = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    return bad / max(1, len(sample))


def _is_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or not lines[0].lstrip().startswith("{"):
        return False
    try:
        return all(isinstance(json.loads(line), dict) for line in lines[:50])
    except ValueError:
        return False


def extract(name: str, media_type: str, data: bytes) -> str:
    """The text of a file of ``media_type``; 422 when there is none."""
    if media_type == "application/pdf":
        text = _pdf_text(name, data)
    elif media_type == "text/html":
        from markdownify import markdownify

        text = markdownify(data.decode("utf-8"), heading_style="ATX")
    elif media_type == "application/jsonl":
        text = _jsonl_text(name, data.decode("utf-8"))
    else:
        text = data.decode("utf-8")
    text = text.replace("\r\n", "\n").strip()
    if not text:
        raise BadFile(
            f"{name!r} holds no text to index.", details={"file": name, "reason": "no_text"}
        )
    return text


def _pdf_text(name: str, data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        raise BadFile(
            f"{name!r} is not a readable PDF: {exc}", details={"file": name, "reason": "bad_pdf"}
        ) from None
    if not any(p.strip() for p in pages):
        raise BadFile(
            f"{name!r} is a PDF without text (scanned images are not read).",
            details={"file": name, "reason": "no_text"},
        )
    return "\n\n".join(p.strip() for p in pages if p.strip())


def _jsonl_text(name: str, text: str) -> str:
    parts: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        value = next((record[f] for f in _JSONL_FIELDS if isinstance(record.get(f), str)), None)
        if value is None:
            raise BadFile(
                f"{name!r} line {number} has none of the fields {', '.join(_JSONL_FIELDS)}.",
                details={"file": name, "reason": "no_text", "line": number},
            )
        title = record.get("title")
        parts.append(f"# {title}\n\n{value}" if isinstance(title, str) and title else value)
    return "\n\n".join(parts)


@dataclass(frozen=True)
class Chunk:
    text: str
    heading: str  # the heading path, " > "-joined
    start: int  # character offsets in the extracted text
    end: int


@dataclass(frozen=True)
class _Block:
    start: int
    end: int
    heading: str


def _blocks(text: str) -> Iterator[_Block]:
    """Paragraphs (blank-line separated) with the heading path they sit under; a heading line
    starts a block of its own section."""
    path: list[str] = []
    offset = 0
    para_start: int | None = None
    para_end = 0
    heading = ""
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        match = _HEADING.match(stripped)
        if (match or not stripped) and para_start is not None:
            yield _Block(para_start, para_end, heading)
            para_start = None
        if match:
            level = len(match.group(1))
            path = [*path[: level - 1], match.group(2).strip()]
            heading = " > ".join(p for p in path if p)
            yield _Block(offset, offset + len(line.rstrip("\n")), heading)
        elif stripped:
            if para_start is None:
                para_start = offset + (len(line) - len(line.lstrip()))
            para_end = offset + len(line.rstrip("\n").rstrip())
        offset += len(line)
    if para_start is not None:
        yield _Block(para_start, para_end, heading)


def chunk_markdown(text: str, spans: TokenSpans, *, size: int, overlap: int) -> list[Chunk]:
    """Pack consecutive blocks of one section into chunks of at most ``size`` tokens; a block
    longer than that is split into windows of ``size`` tokens overlapping by ``overlap``."""
    chunks: list[Chunk] = []
    current: list[_Block] = []
    current_tokens = 0

    def flush() -> None:
        nonlocal current, current_tokens
        if current:
            start, end = current[0].start, current[-1].end
            chunks.append(Chunk(text[start:end], current[0].heading, start, end))
        current, current_tokens = [], 0

    for block in _blocks(text):
        tokens = spans(text[block.start : block.end])
        if current and (block.heading != current[0].heading or current_tokens + len(tokens) > size):
            flush()
        if len(tokens) <= size:
            current.append(block)
            current_tokens += len(tokens)
            continue
        step = max(1, size - overlap)
        for first in range(0, len(tokens), step):
            window = tokens[first : first + size]
            start, end = block.start + window[0][0], block.start + window[-1][1]
            chunks.append(Chunk(text[start:end], block.heading, start, end))
            if first + size >= len(tokens):
                break
    flush()
    return [c for c in chunks if c.text.strip()]


def whitespace_spans(text: str) -> list[tuple[int, int]]:
    """Word spans: a tokenizer stand-in where no model tokenizer is loaded (benchmarks' BM25)."""
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]

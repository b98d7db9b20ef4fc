"""Test documents: Markdown with distinct sections, and a PDF written by hand (one text page)."""

from __future__ import annotations

GUIDE_MD = """# Zephyr Garden Guide

Intro to the garden handbook.

## Watering

The zephyr orchid wants rainwater every nine days, never tap water, and a saucer of pebbles.

## Pruning

Cut the quartzberry hedge back in late autumn with sterilised shears; leave three buds a stem.

## Pests

Copper tape keeps the snails away from the lettuce beds during the wet season.
"""


def pdf_with_text(text: str) -> bytes:
    """A minimal valid one-page PDF whose page shows ``text`` (Helvetica)."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


def pdf_without_text() -> bytes:
    return pdf_with_text("").replace(b"() Tj", b"")

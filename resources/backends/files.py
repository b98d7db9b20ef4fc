"""Fingerprints of file sets (volume directories, blob objects): a count and an order-free
checksum over (name, content hash) pairs, the same shape as a database table's."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from resources.backends.base import Fingerprint


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(items: Iterable[tuple[str, str]], label: str = "files") -> Fingerprint:
    """``items``: (name, hex content digest) pairs, in any order."""
    count, total = 0, 0
    for name, digest in items:
        count += 1
        pair = f"{name}\0{digest}".encode()
        total += int.from_bytes(hashlib.blake2b(pair, digest_size=8).digest(), "big")
    return {label: {"rows": count, "checksum": str(total % 2**64)}}


def tree_fingerprint(root: Path) -> Fingerprint:
    return fingerprint(
        (p.relative_to(root).as_posix(), file_digest(p)) for p in root.rglob("*") if p.is_file()
    )

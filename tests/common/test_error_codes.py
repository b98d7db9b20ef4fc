"""Every error code the code can hand a user is a value of ``common.errors.ErrorCode``.

Walks the source (no imports) for string codes: ``code="..."`` arguments, ``code = "..."``
class attributes (``ConveyorError`` subclasses) and ``{"code": "..."}`` error dicts. Codes
computed at run time come from enums checked below (a crawl's page reasons, a deployment's
failure reasons).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from common.errors import ErrorCode
from crawler.fetch import PageErrorCode
from deployments.backends.base import ReasonCode

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "api", "cli", "common", "config", "crawler", "deployments", "diagnostics", "idempotency",
    "inference", "jobs", "monitoring", "plans", "resources", "store", "tasks", "webhooks",
    "workers",
)  # fmt: skip
#: Status reasons of a deployment that is not failing (never a job's error code).
NOT_FAILURES = {ReasonCode.SCALED_TO_ZERO, ReasonCode.SCALING_FROM_ZERO}


def _string(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _codes(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "code" and (code := _string(kw.value)) is not None:
                    yield node.lineno, code
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                if isinstance(stmt, ast.AnnAssign):
                    targets = [stmt.target]
                named = any(isinstance(t, ast.Name) and t.id == "code" for t in targets)
                code = _string(getattr(stmt, "value", None)) if named else None
                if code is not None:
                    yield stmt.lineno, code
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if _string(key) == "code" and (code := _string(value)) is not None:
                    yield node.lineno, code


def test_every_literal_error_code_is_in_the_enum() -> None:
    known = {code.value for code in ErrorCode}
    unknown = [
        f"{path.relative_to(ROOT)}:{line}: {code}"
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        if "migrations" not in path.parts
        for line, code in _codes(ast.parse(path.read_text(), str(path)))
        if code not in known
    ]
    assert not unknown, "codes missing from common.errors.ErrorCode:\n" + "\n".join(unknown)


def test_a_crawls_page_reasons_are_error_codes() -> None:
    """A crawl with no page fails with its first page's reason."""
    assert {code.value for code in PageErrorCode} <= {code.value for code in ErrorCode}


def test_a_deployments_failure_reasons_are_error_codes() -> None:
    """A failed deploy job's code is the prefix of the deployment's status reason."""
    reasons = {
        value
        for name, value in vars(ReasonCode).items()
        if name.isupper() and value not in NOT_FAILURES
    }
    assert reasons <= {code.value for code in ErrorCode}


def test_the_walk_finds_codes() -> None:
    """The walk itself: each form is found (so an empty result above means something)."""
    source = 'class E:\n    code = "a"\nf(code="b")\nx = {"code": "c"}\n'
    assert [code for _, code in _codes(ast.parse(source))] == ["a", "b", "c"]

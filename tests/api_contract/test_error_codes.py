"""Every error code the code can put in an error envelope is in the OpenAPI document's enum
(``ErrorBody.code``), and the enum is exactly ``common.errors.ErrorCode``.

The codes raised are read from the source: ``code = …`` on error classes, ``code=…`` passed to
an error (not to ``JobFailed``: those are a job's own error codes, shown in ``job.error``), and
the code given to ``error_response``/``_send_error``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from common.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "api", "common", "config", "crawler", "deployments", "diagnostics", "idempotency",
    "inference", "jobs", "plans", "resources", "store", "tasks", "webhooks", "workers",
)  # fmt: skip
ENVELOPE_WRITERS = {"error_response": 2, "_send_error": 4}  # name → position of the code
JOB_ERRORS = {"JobFailed"}


def _code(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "ErrorCode"
    ):
        return ErrorCode[node.attr].value
    return None


def _name(func: ast.expr) -> str:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def codes_raised() -> dict[str, str]:
    """code → where it is raised (first place found)."""
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                codes: list[str | None] = []
                if isinstance(node, ast.ClassDef):
                    for stmt in node.body:
                        target = stmt.target if isinstance(stmt, ast.AnnAssign) else None
                        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                            target = stmt.targets[0]
                        value = getattr(stmt, "value", None)
                        if isinstance(target, ast.Name) and target.id == "code" and value:
                            codes.append(_code(value))
                elif isinstance(node, ast.Call):
                    name = _name(node.func)
                    if name not in JOB_ERRORS:
                        codes += [_code(k.value) for k in node.keywords if k.arg == "code"]
                    position = ENVELOPE_WRITERS.get(name)
                    if position is not None and len(node.args) > position:
                        codes.append(_code(node.args[position]))
                for code in codes:
                    if code is not None:
                        found.setdefault(code, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _documented(app: Any) -> set[str]:
    spec = app.openapi()
    body = spec["components"]["schemas"]["ErrorBody"]["properties"]["code"]
    if "$ref" in body:
        body = spec["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    elif "allOf" in body:
        body = spec["components"]["schemas"][body["allOf"][0]["$ref"].rsplit("/", 1)[-1]]
    return set(body["enum"])


def test_every_code_raised_is_documented(app: Any) -> None:
    documented = _documented(app)
    assert documented == {code.value for code in ErrorCode}
    raised = codes_raised()
    assert {"forbidden", "invalid_json", "unsafe_url", "context_length_exceeded"} <= set(raised)
    missing = {code: where for code, where in raised.items() if code not in documented}
    assert not missing, f"raised but not in the OpenAPI enum: {missing}"

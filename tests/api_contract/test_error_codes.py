"""The OpenAPI document lists every error code: ``ErrorBody.code`` is an enum, exactly
``common.errors.ErrorCode`` (``tests/common/test_error_codes.py`` checks that every code the
source raises is one of them), so a client reads the complete list from ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from common.errors import ErrorCode


def _documented(app: Any) -> set[str]:
    schemas = app.openapi()["components"]["schemas"]
    code = schemas["ErrorBody"]["properties"]["code"]
    ref = code.get("$ref") or code.get("allOf", [{}])[0].get("$ref")
    return set((schemas[ref.rsplit("/", 1)[-1]] if ref else code)["enum"])


def test_the_openapi_enum_is_every_error_code(app: Any) -> None:
    documented = _documented(app)
    assert documented == {code.value for code in ErrorCode}
    assert {"forbidden", "invalid_json", "unsafe_url", "dns_error", "scrape_failed"} <= documented

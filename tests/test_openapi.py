"""schemathesis against the running service's own OpenAPI schema: no input gets a 5xx, and
every answer matches the schema (status codes, content types, bodies)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import CheckContext, not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.core.transport import Response
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.plugins.services import Service, ServiceFactory

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,  # a route the document says needs a key refuses a request without one
]
# Refusals of what the document allows, for rules no JSON Schema can state; each is named by
# its code: the CSV's content (a file part is any bytes), variants' rules (a name given
# twice, a box over the pixel limit) and a webhook's address (a private network's).
BEYOND_THE_SCHEMA = frozenset(
    {
        *("not_csv", "empty_file", "missing_columns", "invalid_rows", "too_many_rows"),
        "invalid_variants",
        "invalid_webhook_url",
    }
)


def accepted_unless_beyond_the_schema(
    ctx: CheckContext, response: Response, case: schemathesis.Case[Any]
) -> bool | None:
    """positive_data_acceptance: what the document allows is not refused, unless by a rule
    it cannot state, which the answer names."""
    if response.status_code == 422 and _error_code(response) in BEYOND_THE_SCHEMA:
        return None
    return positive_data_acceptance(ctx, response, case)


def _error_code(response: Response) -> str | None:
    try:
        code: str = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code


CHECKS.append(accepted_unless_beyond_the_schema)


def test_no_input_gets_a_server_error_or_an_undocumented_answer(service: Service) -> None:
    fuzz(service)


def test_the_document_asks_for_a_key_exactly_where_the_server_does(
    service: Service, make_service: ServiceFactory
) -> None:
    keyless = httpx.get(f"{service.base_url}/openapi.json").json()
    assert "securitySchemes" not in keyless.get("components", {})
    assert not [op for op in operations(keyless) if "security" in op]
    assert not [p for op in operations(keyless) for p in op.get("parameters", [])
                if p["name"].lower() == "authorization"]  # fmt: skip
    keyed = make_service(API_KEYS="fuzz-" + "k" * 24)
    document = httpx.get(f"{keyed.base_url}/openapi.json").json()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    paths = document["paths"]
    assert paths["/status/{request_id}"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/healthz"]["get"]


def operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [op for methods in document["paths"].values() for op in methods.values()]


def test_the_same_holds_with_api_keys_on(make_service: ServiceFactory) -> None:
    key = "fuzz-" + "k" * 24
    keyed = make_service(API_KEYS=key)
    fuzz(keyed, headers={"Authorization": f"Bearer {key}"}, examples=15)  # as its owner
    fuzz(keyed, examples=10)  # and as nobody: 401 everywhere but health and the docs


def fuzz(service: Service, *, headers: dict[str, str] | None = None, examples: int = 40) -> None:
    # schemathesis' own pytest plugin does not run under this pytest, so each operation's
    # strategy is driven by hypothesis here.
    schema = schemathesis.openapi.from_url(f"{service.base_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result  # the schema itself is valid
        operations.append(result.ok())
    assert len(operations) >= 5
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=service.base_url, headers=headers, checks=CHECKS)

        try:
            check()
        except Exception as failure:
            pytest.fail(f"{operation.label}: {failure}")

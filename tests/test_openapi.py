"""schemathesis against the running service's own OpenAPI schema: no input gets a 5xx, and
every answer matches the schema (status codes, content types, bodies)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
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

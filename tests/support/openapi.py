"""Check API answers against the schemas of the OpenAPI document the API serves."""

from __future__ import annotations

import jsonschema_rs  # comes with schemathesis, a test dependency

from tracker.api import OPENAPI


def assert_matches(schema_name: str, value: object) -> None:
    """``value`` conforms to ``#/components/schemas/<schema_name>`` (JSON Schema 2020-12, as OpenAPI 3.1 says)."""
    schema = {**OPENAPI["components"]["schemas"][schema_name], "components": OPENAPI["components"]}
    errors = [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(value)]
    assert not errors, errors

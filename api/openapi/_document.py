"""`build_document`: the OpenAPI 3.1 document for a list of operations, with pydantic's JSON schemas."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter

from wrenn.api.openapi._operation import Access, Operation

_REF = "#/components/schemas/{model}"
_CONVERTER_SCHEMA: dict[str | None, dict[str, str]] = {
    None: {"type": "string"},
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "dt": {"type": "string", "format": "date-time"},
}
_SECURITY: dict[Access, list[dict[str, list[str]]]] = {
    Access.PUBLIC: [],
    Access.API_KEY: [{"ApiKeyAuth": []}],
    Access.SESSION: [{"BearerAuth": []}],
    Access.ANY: [{"ApiKeyAuth": []}, {"BearerAuth": []}],
}
_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class ErrorBody(BaseModel):
    """Every error response: the HTTP status repeated and a message safe to show."""

    code: int
    message: str


def _error_statuses(op: Operation) -> list[int]:
    statuses = set(op.errors) | {500}
    if op.access is not Access.PUBLIC:
        statuses.add(401)
    if op.request is not None or op.query is not None:
        statuses.add(400)
    if op.request is not None:
        statuses.add(413)
    return sorted(statuses)


def build_document(
    operations: Iterable[Operation], *, title: str = "Wrenn API", version: str = "0.1.0", server_url: str | None = None
) -> dict[str, Any]:
    ops = sorted(operations, key=lambda o: (o.openapi_path, o.method))
    # Schemas are generated in one pass so shared models land once under components.schemas.
    inputs: list[tuple[tuple[str, str], Any, TypeAdapter[Any]]] = [
        (("error", "out"), "serialization", TypeAdapter(ErrorBody))
    ]
    for op in ops:
        if op.request is not None:
            inputs.append(((op.id, "in"), "validation", TypeAdapter(op.request)))
        if op.response is not None:
            inputs.append(((op.id, "out"), "serialization", TypeAdapter(op.response)))
    schema_map, defs = TypeAdapter.json_schemas(inputs, ref_template=_REF)
    schemas = dict(defs.get("$defs", {}))
    error_schema = schema_map[(("error", "out"), "serialization")]

    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        entry: dict[str, Any] = {"operationId": op.id, "summary": op.summary, "security": _SECURITY[op.access]}
        if op.tags:
            entry["tags"] = list(op.tags)
        if op.description:
            entry["description"] = op.description
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _CONVERTER_SCHEMA.get(conv, {"type": "string"})}
            for name, conv in op.path_params
        ]
        if op.query is not None:
            for name, fld in op.query.model_fields.items():
                schema = TypeAdapter(fld.annotation).json_schema(ref_template=_REF) if fld.annotation else {}
                param = {"name": fld.alias or name, "in": "query", "required": fld.is_required(), "schema": schema}
                if fld.description:
                    param["description"] = fld.description
                parameters.append(param)
        if parameters:
            entry["parameters"] = parameters
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema_map[((op.id, "in"), "validation")]}},
            }
        ok: dict[str, Any] = {"description": _REASONS.get(op.status, "OK")}
        if op.response is not None:
            ok["content"] = {"application/json": {"schema": schema_map[((op.id, "out"), "serialization")]}}
        if op.response_headers:
            ok["headers"] = {
                name: {"description": text, "schema": {"type": "string"}} for name, text in op.response_headers.items()
            }
        responses: dict[str, Any] = {str(op.status): ok}
        for status in _error_statuses(op):
            responses[str(status)] = {
                "description": _REASONS.get(status, "Error"),
                "content": {"application/json": {"schema": error_schema}},
            }
        entry["responses"] = responses
        paths.setdefault(op.openapi_path, {})[op.method.lower()] = entry

    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
    if server_url:
        doc["servers"] = [{"url": server_url}]
    return doc

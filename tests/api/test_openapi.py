"""The OpenAPI 3.1 document agrees with Falcon's router, and the document and docs page are served."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import falcon.asgi
import falcon.testing
import pytest
import yaml

from wrenn.api import Deps, Settings, create_app, deps_of
from wrenn.api.openapi import build_document

pytestmark = pytest.mark.postgres

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def _router_nodes(nodes: list[Any]) -> Iterator[Any]:
    for node in nodes:
        yield node
        yield from _router_nodes(node.children)


def routed_operations(app: falcon.asgi.App[Any, Any]) -> set[tuple[str, str]]:
    """(METHOD, /path/{field}) for every responder Falcon's router would call."""
    found = set()
    for node in _router_nodes(app._router._roots):
        if node.resource is None:
            continue
        path = re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", node.uri_template)
        for method in _METHODS:
            if callable(getattr(node.resource, f"on_{method.lower()}", None)):
                found.add((method, path))
    return found


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_every_routed_operation_is_documented(settings: Settings) -> None:
    app = create_app(settings)
    doc = build_document(deps_of(app).routes.operations)
    routed = routed_operations(app)
    assert routed, "walked no routes: the router walk itself is broken"
    assert routed - documented_operations(doc) == set()
    assert documented_operations(doc) - routed == set()


def test_the_check_catches_a_route_added_behind_its_back(settings: Settings) -> None:
    class Undocumented:
        async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
            resp.media = {}

    def configure(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
        app.add_route("/v1/secret", Undocumented())

    app = create_app(settings, configure=configure)
    doc = build_document(deps_of(app).routes.operations)
    assert routed_operations(app) - documented_operations(doc) == {("GET", "/v1/secret")}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


async def test_served_document_is_openapi_31_and_self_consistent(client: falcon.testing.ASGIConductor) -> None:
    r = await client.simulate_get("/openapi.yaml")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/yaml")
    doc = yaml.safe_load(r.text)
    assert doc["openapi"] == "3.1.0"
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas, ref
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for item in doc["paths"].values():
        for op in item.values():
            assert op["summary"]
            assert any(code.startswith("2") for code in op["responses"])
    login = doc["paths"]["/v1/auth/login"]["post"]
    assert login["security"] == []
    assert login["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/LoginRequest"
    }
    team = doc["paths"]["/v1/teams/{team_id}"]["get"]
    assert team["parameters"][0] == {
        "name": "team_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
    assert {"401", "404", "500"} <= set(team["responses"])


async def test_docs_page_lists_every_path_without_external_assets(client: falcon.testing.ASGIConductor) -> None:
    doc = yaml.safe_load((await client.simulate_get("/openapi.yaml")).text)
    page = await client.simulate_get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for path in doc["paths"]:
        assert path in page.text
    assert "<script src=" not in page.text
    assert "/openapi.yaml" in page.text

"""The two routes that publish the document: ``/openapi.yaml`` and the ``/docs`` page (no external assets)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import falcon
import falcon.asgi
import yaml

from wrenn.api.openapi._document import build_document
from wrenn.api.openapi._operation import Access, Operation

if TYPE_CHECKING:
    from wrenn.api.deps import AsgiApp, Deps


def _render_html(doc: dict[str, Any]) -> str:
    rows = []
    for path, methods in doc["paths"].items():
        for method, entry in methods.items():
            statuses = ", ".join(entry["responses"])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(entry.get('summary', ''))}</td><td>{statuses}</td></tr>"
            )
    title = html.escape(doc["info"]["title"])
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{title}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:2px 8px;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>{title} {html.escape(doc['info']['version'])}</h1>"
        "<p>Machine-readable document: <a href='/openapi.yaml'>/openapi.yaml</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>Method</th><th>Path</th><th>Summary</th><th>Statuses</th></tr>"
        + "".join(rows)
        + "</table></body></html>\n"
    )


def register(app: AsgiApp, deps: Deps) -> None:
    cache: dict[str, str] = {}

    def document() -> dict[str, Any]:
        return build_document(deps.routes.operations, server_url=deps.settings.public_url)

    async def get_openapi_yaml(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if "yaml" not in cache:
            cache["yaml"] = yaml.safe_dump(document(), sort_keys=False, allow_unicode=True)
        resp.content_type = "application/yaml"
        resp.text = cache["yaml"]

    async def get_docs(req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        if "html" not in cache:
            cache["html"] = _render_html(document())
        resp.content_type = falcon.MEDIA_HTML
        resp.text = cache["html"]

    deps.routes.add(
        Operation("GET", "/openapi.yaml", get_openapi_yaml, "The OpenAPI 3.1 document", ("meta",), Access.PUBLIC),
        Operation("GET", "/docs", get_docs, "Human-readable API reference (HTML)", ("meta",), Access.PUBLIC),
    )

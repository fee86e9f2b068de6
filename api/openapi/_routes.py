"""`Routes`: collects operations and turns them into Falcon resources (body limits, parsing, auth, dumping)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import falcon
import falcon.asgi
from pydantic import BaseModel, ValidationError

from wrenn.api.errors import PayloadTooLarge
from wrenn.api.openapi._operation import Access, Operation
from wrenn.protocol import Invalid

Authenticate = Callable[[falcon.asgi.Request, Access], Awaitable[object]]


def validation_message(exc: ValidationError) -> str:
    """A one-line summary of pydantic's errors, safe to send (no input values echoed)."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def dump(value: Any) -> Any:
    """JSON-ready data from what a handler returned."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, list | tuple):
        return [dump(v) for v in value]
    return value


class Routes:
    """The operations of one app. `add` collects them; `install` (once, by `create_app`) adds Falcon routes."""

    def __init__(self, authenticate: Authenticate | None = None, *, max_body_bytes: int = 1 << 20) -> None:
        self.operations: list[Operation] = []
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self._installed = False

    def add(self, *operations: Operation) -> None:
        if self._installed:
            raise RuntimeError("routes already installed; add operations inside register(app, deps)")
        for op in operations:
            for other in self.operations:
                if other.method == op.method and other.openapi_path == op.openapi_path:
                    raise ValueError(f"duplicate operation {op.method} {op.openapi_path}")
            self.operations.append(op)

    def install(self, app: falcon.asgi.App[Any, Any]) -> None:
        by_path: dict[str, list[Operation]] = {}
        for op in self.operations:
            by_path.setdefault(op.path, []).append(op)
        for path, ops in by_path.items():
            app.add_route(path, self._resource(ops))
        self._installed = True

    def _resource(self, ops: list[Operation]) -> object:
        resource = type("OperationResource", (), {})()
        for op in ops:
            setattr(resource, f"on_{op.method.lower()}", self._responder(op))
        return resource

    def _responder(self, op: Operation) -> Callable[..., Awaitable[None]]:
        async def responder(req: falcon.asgi.Request, resp: falcon.asgi.Response, **params: Any) -> None:
            req.context.operation = op
            if op.access is not Access.PUBLIC:
                if self.authenticate is None:
                    raise RuntimeError("routes need an authenticator for non-public operations")
                req.context.principal = await self.authenticate(req, op.access)
            kwargs: dict[str, Any] = dict(params)
            if op.query is not None:
                try:
                    kwargs["query"] = op.query.model_validate(dict(req.params))
                except ValidationError as exc:
                    raise Invalid(f"invalid query: {validation_message(exc)}") from exc
            if op.request is not None:
                kwargs["body"] = await self._body(req, op.request)
            resp.status = op.status
            result = await op.handler(req, resp, **kwargs)
            if result is not None:
                resp.media = dump(result)

        responder.__name__ = f"on_{op.method.lower()}"
        return responder

    async def _body(self, req: falcon.asgi.Request, model: type[BaseModel]) -> BaseModel:
        limit = self.max_body_bytes
        if req.content_length is not None and req.content_length > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        raw = await req.bounded_stream.read(limit + 1)
        if len(raw) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        if not raw.strip():
            raise Invalid("request body required")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Invalid("malformed JSON body") from exc
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise Invalid(f"invalid body: {validation_message(exc)}") from exc

"""`Operation`: one route's behaviour and its documentation, declared together."""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

Handler = Callable[..., Awaitable[Any]]

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_FIELD = re.compile(r"\{(\w+)(?::(\w+)(?:\([^)]*\))?)?\}")


class Access(enum.StrEnum):
    """Who may call an operation."""

    PUBLIC = "public"  # anyone; no credentials read
    API_KEY = "api_key"  # a team API key in X-API-KEY (the E2B SDK's way)
    SESSION = "session"  # a session JWT in Authorization: Bearer
    ANY = "any"  # either of the two


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # a Falcon URI template, e.g. /v1/teams/{team_id:uuid}
    handler: Handler
    summary: str
    tags: tuple[str, ...] = ()
    access: Access = Access.ANY
    request: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: Any = None  # a type pydantic can describe (a model, list[Model], …); None: no body
    status: int = 200
    errors: tuple[int, ...] = ()
    response_headers: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    operation_id: str | None = None

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"unknown HTTP method {self.method!r} for {self.path}")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/': {self.path!r}")

    @property
    def openapi_path(self) -> str:
        """The path as OpenAPI writes it: ``{team_id}`` without Falcon's converters."""
        return _FIELD.sub(lambda m: "{" + m.group(1) + "}", self.path)

    @property
    def path_params(self) -> list[tuple[str, str | None]]:
        """(name, Falcon converter or None) for each field of the path."""
        return [(m.group(1), m.group(2)) for m in _FIELD.finditer(self.path)]

    @property
    def id(self) -> str:
        if self.operation_id:
            return self.operation_id
        return getattr(self.handler, "__name__", f"{self.method.lower()}_{self.openapi_path}")

"""Route declaration and the one OpenAPI 3.1 document generated from it.

Every route of the REST API is an `Operation` (method, path, handler, summary, request/query/response pydantic
types, statuses, who may call it) added to the app's `Routes`; `Routes.install` creates the Falcon resources, so
the router and the document come from the same list. `build_document` renders the document (pydantic JSON
schemas under ``components.schemas``); ``/openapi.yaml`` serves it and ``/docs`` is a self-contained HTML page.

What a handler gets: ``await handler(req, resp, **path_params, [body=<request model>], [query=<query model>])``;
the caller's identity is in ``req.context.principal`` when the operation's `Access` is not public. It returns a
pydantic model, a list of them, plain JSON data, or None (for 204 or when it set ``resp`` itself).
"""

from wrenn.api.openapi._document import build_document
from wrenn.api.openapi._operation import Access, Handler, Operation
from wrenn.api.openapi._pages import register
from wrenn.api.openapi._routes import Authenticate, Routes

__all__ = ["Access", "Authenticate", "Handler", "Operation", "Routes", "build_document", "register"]

"""Maps error kinds to HTTP once for the whole REST API (`install`), plus the one HTTP-only kind the API adds.

Every error leaves as ``{"code": <status>, "message": "..."}``: Wrenn's kinds (`wrenn.protocol.errors`) with
their own status, Falcon's HTTP errors (unknown route 404, wrong method 405, …) with theirs, and anything else
as a logged 500 whose details never reach the caller.

    wrenn.protocol.WrennError
    └── Invalid (400)
        └── PayloadTooLarge (413)  a request body above ``Settings.max_body_bytes``
"""

from __future__ import annotations

from typing import Any

import falcon
import falcon.asgi
import structlog

from wrenn.protocol import Invalid, WrennError

_log = structlog.get_logger("wrenn.api")


class PayloadTooLarge(Invalid):
    status = 413
    kind = "too_large"


async def _wrenn_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: WrennError, params: Any) -> None:
    if ex.status >= 500:
        _log.error("request failed", path=req.path, method=req.method, kind=ex.kind, error=ex.message)
    resp.status = ex.status
    resp.media = ex.to_body()


async def _http_error(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: falcon.HTTPError, params: Any) -> None:
    status = ex.status_code
    message = ex.description or ex.title or falcon.code_to_http_status(status)
    resp.status = status
    resp.media = {"code": status, "message": message}
    if ex.headers:
        resp.set_headers(ex.headers)


async def _unexpected(req: falcon.asgi.Request, resp: falcon.asgi.Response, ex: Exception, params: Any) -> None:
    _log.exception("unhandled error", path=req.path, method=req.method)
    resp.status = 500
    resp.media = {"code": 500, "message": "internal error"}


def install(app: falcon.asgi.App[Any, Any]) -> None:
    """Register the handlers. Falcon picks the most specific class, so the order here does not matter."""
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(WrennError, _wrenn_error)

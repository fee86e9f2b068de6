"""The one set of error kinds every Wrenn component raises and every transport maps once.

    WrennError                  (500, root; never raised directly)
    ├── Invalid                 400  bad input: malformed body, unknown field value, path outside the sandbox
    ├── Unauthenticated         401  missing or wrong credentials
    ├── Forbidden               403  authenticated but not allowed
    ├── NotFound                404  no such thing (or not visible to the caller's team)
    ├── Conflict                409  the thing is in the wrong state for the request
    ├── Exhausted               429  a quota or a host's capacity is used up (507-like disk errors map here too)
    ├── Unavailable             503  a dependency (host agent, VMM, database) cannot answer now
    └── Internal                500  a bug or an unexpected failure; details are logged, never sent

REST bodies are ``{"code": <http status>, "message": "..."}``; `to_body` builds them.
"""

from __future__ import annotations

from typing import ClassVar


class WrennError(Exception):
    """Root of Wrenn's error kinds. `message` is safe to show to the caller."""

    status: ClassVar[int] = 500
    kind: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_body(self) -> dict[str, object]:
        return {"code": self.status, "message": self.message}


class Invalid(WrennError):
    status = 400
    kind = "invalid"


class Unauthenticated(WrennError):
    status = 401
    kind = "unauthenticated"


class Forbidden(WrennError):
    status = 403
    kind = "forbidden"


class NotFound(WrennError):
    status = 404
    kind = "not_found"


class Conflict(WrennError):
    status = 409
    kind = "conflict"


class Exhausted(WrennError):
    status = 429
    kind = "exhausted"


class Unavailable(WrennError):
    status = 503
    kind = "unavailable"


class Internal(WrennError):
    status = 500
    kind = "internal"


_BY_STATUS: dict[int, type[WrennError]] = {
    cls.status: cls for cls in (Invalid, Unauthenticated, Forbidden, NotFound, Conflict, Exhausted, Unavailable)
}


def error_for_status(status: int, message: str) -> WrennError:
    """Rebuild the error kind a peer sent as ``{"code", "message"}`` (agent -> API)."""
    return _BY_STATUS.get(status, Internal)(message)

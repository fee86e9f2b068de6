"""`Principal`: the caller of one request, and the team roles."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

import falcon.asgi

from wrenn.protocol import Forbidden, Unauthenticated


class Role(enum.StrEnum):
    """A user's role in a team. Owners and admins manage members and keys; members use the team."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def manages(self) -> bool:
        return self in (Role.OWNER, Role.ADMIN)


@dataclass(frozen=True)
class Principal:
    """The caller. An API key acts for its team as a member; a session for its user in one of the user's teams."""

    team_id: uuid.UUID | None
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    role: Role | None
    is_admin: bool

    def require_team(self) -> uuid.UUID:
        """The team this credential acts for; Forbidden for a session of a user who belongs to no team."""
        if self.team_id is None:
            raise Forbidden("this session does not act for a team")
        return self.team_id

    def require_user(self) -> uuid.UUID:
        if self.user_id is None:
            raise Forbidden("this operation needs a user session, not an API key")
        return self.user_id


def principal_of(req: falcon.asgi.Request) -> Principal:
    """The principal the route machinery put on the request (Unauthenticated when there is none)."""
    principal = getattr(req.context, "principal", None)
    if not isinstance(principal, Principal):
        raise Unauthenticated("missing credentials")
    return principal

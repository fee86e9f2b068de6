"""Who may see and change a team: the one place the tenancy rules live.

- A team is visible to its members, to an API key of that team, and to global admins; to anyone else it does not
  exist (404, so ids of other teams cannot be probed).
- Managing members and keys needs the team role owner or admin (or a global admin); otherwise 403.
"""

from __future__ import annotations

import uuid

from wrenn.api.auth import Principal, Role
from wrenn.api.tenancy import _repo
from wrenn.protocol import Forbidden, NotFound


async def team_role(conn: _repo.Conn, principal: Principal, team_id: uuid.UUID, *, manage: bool = False) -> Role | None:
    """The caller's role in `team_id` (None for a global admin who is not a member); raises when not allowed."""
    if principal.api_key_id is not None:
        if principal.team_id != team_id:
            raise NotFound("team not found")
        if manage:
            raise Forbidden("API keys cannot manage a team; log in as a team owner or admin")
        return Role.MEMBER
    role = await _repo.get_role(conn, team_id, principal.user_id) if principal.user_id else None
    if principal.is_admin:
        exists = await _repo.get_team(conn, team_id, None)
        if exists is None:
            raise NotFound("team not found")
        return role
    if role is None:
        raise NotFound("team not found")
    if manage and not role.manages:
        raise Forbidden(f"needs the role owner or admin in the team (you are {role.value})")
    return role

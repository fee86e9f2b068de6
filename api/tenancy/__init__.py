"""Tenancy: users, teams, memberships with roles, and team API keys — the management API under ``/v1/``.

Visibility rules live in `_access` (a team you cannot see answers 404); SQL in `_repo`; the routes in `_teams`,
`_keys` and `_users`. `bootstrap_admin` creates the first admin, team and key of a fresh installation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wrenn.api.tenancy import _keys, _teams, _users
from wrenn.api.tenancy._bootstrap import Bootstrap, bootstrap_admin

if TYPE_CHECKING:
    from wrenn.api.deps import AsgiApp, Deps

__all__ = ["Bootstrap", "bootstrap_admin", "register"]


def register(app: AsgiApp, deps: Deps) -> None:
    deps.routes.add(*_teams.operations(deps), *_keys.operations(deps), *_users.operations(deps))

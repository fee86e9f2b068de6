"""Wrenn's control plane: the Falcon (ASGI) REST API, E2B-compatible sandbox routes, the sandbox traffic proxy.

Entry points: `create_app` (the app, from `Settings`), `bootstrap_admin` (first admin, team and API key).
Modules: `settings`, `app`, `deps`, `errors`, `clock`, `health`, `store` (pool + migrations), `jobs` (Postgres queue),
`auth` (principals, keys, sessions), `openapi` (route declaration + document), `tenancy` (management API).
"""

from wrenn.api.app import create_app, deps_of
from wrenn.api.deps import Deps
from wrenn.api.settings import Settings
from wrenn.api.tenancy import Bootstrap, bootstrap_admin

__all__ = ["Bootstrap", "Deps", "Settings", "bootstrap_admin", "create_app", "deps_of"]

"""Sandbox traffic proxy: routes E2B sandbox traffic (headers or ``{port}-{id}.{domain}`` hosts) to the sandbox.

`SandboxProxy` wraps the REST API's ASGI app; `ProxyBackend` is what it asks the sandbox domain (where a sandbox
is, whether it runs, its envd access token, which team an API key belongs to).
"""

from wrenn.api.proxy._app import ProxyBackend, ProxyTarget, SandboxProxy
from wrenn.api.proxy._routing import ENVD_PORT, BadRoute, RouteKey, route_for

__all__ = ["ENVD_PORT", "BadRoute", "ProxyBackend", "ProxyTarget", "RouteKey", "SandboxProxy", "route_for"]

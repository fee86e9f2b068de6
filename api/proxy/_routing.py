"""Which sandbox and port a request is for: the `E2b-Sandbox-Id`/`E2b-Sandbox-Port` headers or the host name.

Rules (E2B's own proxy, reference section 1.4): when the request carries ``E2b-Sandbox-Id`` the headers decide
(``E2b-Sandbox-Port`` defaults to envd's 49983); otherwise a host of the form ``{port}-{sandboxID}.{domain}`` does.
Sandbox ids are 20 lowercase alphanumerics and never contain a dash, so the first dash splits port from id.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ENVD_PORT = 49983

_ID = re.compile(r"^[a-z0-9]{1,64}$")


@dataclass(frozen=True, slots=True)
class RouteKey:
    """The sandbox a request is addressed to, and the port inside it."""

    sandbox_id: str
    port: int


class BadRoute(ValueError):
    """The request names a sandbox, but in a form that cannot be routed (bad port, bad id)."""


def _port(raw: str) -> int:
    if not raw.isdigit():
        raise BadRoute(f"invalid sandbox port {raw!r}")
    port = int(raw)
    if not 1 <= port <= 65535:
        raise BadRoute(f"invalid sandbox port {raw!r}")
    return port


def route_for(headers: dict[str, str], domain: str) -> RouteKey | None:
    """Return the route a request asks for, or None when it is not sandbox traffic.

    ``headers`` are lower-cased names. Raises `BadRoute` for a malformed port or id.
    """
    sandbox_id = headers.get("e2b-sandbox-id")
    if sandbox_id is not None:
        sandbox_id = sandbox_id.strip()
        if not _ID.match(sandbox_id):
            raise BadRoute("invalid sandbox id")
        return RouteKey(sandbox_id, _port(headers.get("e2b-sandbox-port", str(ENVD_PORT)).strip()))
    host = headers.get("host", "").lower()
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not domain:
        return None
    suffix = "." + domain.lower().rsplit(":", 1)[0]
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    if "." in label or "-" not in label:
        return None
    port_part, sandbox_id = label.split("-", 1)
    if not _ID.match(sandbox_id):
        return None
    return RouteKey(sandbox_id, _port(port_part))

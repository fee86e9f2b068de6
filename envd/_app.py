"""The app factory: wires state, router, Connect registry and every service into one HTTP server."""

from __future__ import annotations

import importlib
import importlib.util
import logging

from . import _system
from ._connect import Code, ConnectError, Rpc
from ._http import HttpServer, Router
from ._ports import LocalhostForwarder
from ._state import Settings, State
from ._users import UnknownUser, User, default_user_name, lookup

_log = logging.getLogger("envd")

# Services owned by other modules; each exposes register(router_or_rpc, state). Optional while they are written.
_OPTIONAL_SERVICES = ("_process", "_filesystem")  # _filesystem.register also routes /files (_files)


class Envd:
    """A configured envd: `async with create_server(...) as envd: await envd.start(); ...; envd.port`."""

    def __init__(self, settings: Settings, state: State) -> None:
        self.settings = settings
        self.state = state
        self.router = Router(state.token)
        self.rpc = Rpc(self.router, self.resolve_user)
        self.http = HttpServer(self.router)
        self._closers: list[object] = []
        self.forwarder = LocalhostForwarder() if settings.forward_localhost else None
        _system.register(self.router, state, settings)
        for name in _OPTIONAL_SERVICES:
            if importlib.util.find_spec(f"{__package__}.{name}") is None:
                continue
            module = importlib.import_module(f".{name}", __package__)
            register = getattr(module, "register", None)
            if register is None:
                _log.warning("envd module %s has no register(); skipped", name)
                continue
            extra = settings if name == "_process" else self.router  # filesystem and /files share watchers
            closer = register(self.rpc, state, extra)
            if closer is not None:
                self._closers.append(closer)

    def resolve_user(self, name: str | None) -> User:
        """The Linux user of a request: the one named, else the default user; unknown -> unauthenticated."""
        name = name or default_user_name(self.state.default_user)
        try:
            return lookup(name)
        except UnknownUser as exc:
            raise ConnectError(Code.UNAUTHENTICATED, f"invalid username: '{name}'") from exc

    async def start(self) -> None:
        await self.http.start(self.settings.host, self.settings.port)
        _log.info("envd listening on %s:%d", self.settings.host, self.port)
        if self.forwarder is not None:
            self.forwarder.start()
        for closer in self._closers:
            prestart = getattr(closer, "prestart", None)
            if prestart is not None:
                prestart()  # the process service's spawner for the default user

    @property
    def port(self) -> int:
        return self.http.port

    async def serve_forever(self) -> None:
        await self.http.serve_forever()

    async def aclose(self) -> None:
        if self.forwarder is not None:
            await self.forwarder.aclose()
        await self.http.aclose()
        for closer in reversed(self._closers):
            aclose = getattr(closer, "aclose", None)
            if aclose is not None:
                await aclose()

    async def __aenter__(self) -> Envd:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def create_server(settings: Settings | None = None, state: State | None = None) -> Envd:
    settings = settings or Settings()
    state = state or State(access_token=settings.access_token)
    return Envd(settings, state)

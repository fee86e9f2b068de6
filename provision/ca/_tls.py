"""TLS contexts for mutual TLS between the API and the agents, with certificates swapped without a restart.

- `TLSFiles` names the PEM files one side uses: the CA it trusts, its own certificate and key, and (servers) the CRL.
- `ReloadingServerContext` is what an agent's listener gets. Its ``context`` is a dispatcher: an ``sni_callback``
  runs at the start of every handshake, checks the files' signatures (inode, size, mtime) and hands the connection a
  freshly built context when anything changed — a renewed host certificate or a re-signed CRL reaches the next
  connection, the running server never restarts. Revocation is checked by OpenSSL against the CRL
  (``VERIFY_CRL_CHECK_LEAF``).
- `ReloadingClientContext` is what the API's agent clients get. There is no per-connection hook on a client, so
  ``reload()`` calls ``load_cert_chain`` on the live context (connections opened afterwards present the new
  certificate), and ``current()`` builds a new context when a file changed — a re-signed CRL can only arrive that
  way; the caller opens new clients with it. Both classes follow their files through one `_FollowedFiles`.

Plain HTTP is used only when no CA is configured; see `wrenn.provision.ca` for the wiring.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ReloadingClientContext", "ReloadingServerContext", "TLSFiles", "client_context", "server_context"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of one TLS endpoint: the trusted CA, its own certificate and key, and the CRL it checks peers with."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path | None = None

    def paths(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.ca_file, self.cert_file, self.key_file, self.crl_file) if p is not None)


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context that requires a client certificate signed by the CA and not revoked by the CRL."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert_file, files.key_file)
    ctx.load_verify_locations(cafile=files.ca_file)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if files.crl_file is not None:
        ctx.load_verify_locations(cafile=files.crl_file)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def client_context(files: TLSFiles) -> ssl.SSLContext:
    """A client context that verifies the server against the CA (and hostname/IP SANs) and presents our cert."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=files.ca_file)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    if files.crl_file is not None:
        ctx.load_verify_locations(cafile=files.crl_file)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return ctx


def _signature(paths: tuple[Path, ...]) -> tuple[tuple[int, int, int], ...]:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class _FollowedFiles:
    """A context built from `files` and rebuilt, under a lock, when their signatures (inode, size, mtime) change.

    A rebuild that fails (a renewal is between writing the new key and the new certificate, a file is briefly
    missing) keeps the previous context and is tried again at the next `current`: a renewal in progress never
    breaks connections."""

    def __init__(self, files: TLSFiles, build: Callable[[TLSFiles], ssl.SSLContext], use: str) -> None:
        self.files = files
        self._build = build
        self._use = use
        self.lock = threading.Lock()  # handshakes may run on several threads (uvicorn workers, to_thread)
        self._signature = _signature(files.paths())
        self.latest = build(files)
        self.rebuilds = 0
        self.failed = 0

    def current(self) -> ssl.SSLContext:
        with self.lock:
            try:
                signature = _signature(self.files.paths())
                if signature != self._signature:
                    self.latest = self._build(self.files)
                    self._signature = signature
                    self.rebuilds += 1
            except (OSError, ssl.SSLError) as exc:
                self.failed += 1
                _log.warning("TLS files unusable; %s the previous certificate: %s", self._use, exc)
            return self.latest

    def rebuild(self) -> None:
        """Rebuild now, whether or not the files look changed."""
        with self.lock:
            self.latest = self._build(self.files)
            self._signature = _signature(self.files.paths())
            self.rebuilds += 1


class ReloadingServerContext:
    """A listening context that gives each new connection a context built from the files as they are now."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._followed = _FollowedFiles(files, server_context, "serving with")
        # The dispatcher needs a certificate of its own to exist; every handshake is moved to `current()`.
        self.context = server_context(files)
        self.context.sni_callback = self._on_handshake

    @property
    def reloads(self) -> int:
        return self._followed.rebuilds

    @property
    def failed_reloads(self) -> int:
        return self._followed.failed

    def current(self) -> ssl.SSLContext:
        """The context new connections get; rebuilt first when any of the files changed (see `_FollowedFiles`)."""
        return self._followed.current()

    def reload(self) -> None:
        """Rebuild now, whether or not the files look changed."""
        self._followed.rebuild()

    def _on_handshake(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        ssl_object.context = self.current()


class ReloadingClientContext:
    """A client context that follows its files: `current` is rebuilt whenever one changed.

    ``context`` is the live context; `reload` loads a renewed certificate into it in place (connections opened
    afterwards present it). A CRL cannot be swapped in place (OpenSSL keeps every CRL it was given), so with a
    ``crl_file`` the caller asks `current` for the context to open connections with: a re-signed CRL (a revoked
    agent certificate, the periodic refresh) gives a fresh context, which the caller's new connections use."""

    def __init__(self, files: TLSFiles) -> None:
        self.files = files
        self._followed = _FollowedFiles(files, client_context, "connecting with")

    @property
    def context(self) -> ssl.SSLContext:
        """The live context (as last built; `current` checks the files first)."""
        return self._followed.latest

    @property
    def rebuilds(self) -> int:
        return self._followed.rebuilds

    def current(self) -> ssl.SSLContext:
        """The context to open connections with: the live one, or a new one when any file changed since."""
        return self._followed.current()

    def reload(self) -> None:
        """Load the certificate and key from the files again; connections opened from now on present them."""
        with self._followed.lock:
            self._followed.latest.load_cert_chain(self.files.cert_file, self.files.key_file)

"""`PrivateCluster`: the PostgreSQL cluster `wrenn up` runs for itself when no database URL is configured.

Debian's binaries (``/usr/lib/postgresql/<ver>/bin``) under ``<data-dir>/postgres``; the server listens only on a
unix socket in ``<data-dir>/run`` (no TCP port to collide with), runs as the ``postgres`` system user when started
as root (PostgreSQL refuses root), and is stopped with ``pg_ctl stop -m fast`` when the context exits. Every step
is idempotent: an initialised cluster is reused, a running one (left by a crash) is adopted by ``pg_ctl``.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
import structlog

from wrenn.protocol.errors import Unavailable

_log = structlog.get_logger("wrenn.api.up")

DATABASE = "wrenn"
ROLE = "wrenn"


def find_bindir() -> Path:
    """The newest Debian PostgreSQL server binaries on this machine."""
    root = Path("/usr/lib/postgresql")
    versions = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    if not versions:
        raise Unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
    return versions[-1]


class PrivateCluster:
    def __init__(self, data_dir: Path, *, bindir: Path | None = None) -> None:
        self.pgdata = data_dir / "postgres"
        self.sockdir = data_dir / "run"
        self.logfile = data_dir / "postgres.log"
        self._bindir = bindir
        self._started = False

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@/{DATABASE}?host={self.sockdir}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _as_owner(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        return ["runuser", "-u", "postgres", "--"]

    async def _run(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            *self._as_owner(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await proc.communicate()
        text = out.decode(errors="replace")
        if proc.returncode != 0:
            raise Unavailable(f"{Path(args[0]).name} failed ({proc.returncode}): {text.strip()[-2000:]}")
        return text

    def _prepare_dirs(self) -> None:
        for path in (self.pgdata.parent, self.sockdir):
            path.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            # postgres must reach its directories: the data dir is traversable, the cluster and socket dirs its own.
            self.pgdata.parent.chmod(self.pgdata.parent.stat().st_mode | 0o711)
            for path in (self.pgdata, self.sockdir):
                shutil.chown(path, owner.pw_uid, owner.pw_gid)
            if not self.logfile.exists():
                self.logfile.touch()
            shutil.chown(self.logfile, owner.pw_uid, owner.pw_gid)

    async def start(self) -> None:
        bindir = self._bindir or find_bindir()
        await asyncio.to_thread(self._prepare_dirs)
        if not (self.pgdata / "PG_VERSION").exists():
            _log.info("initialising private PostgreSQL cluster", pgdata=str(self.pgdata))
            await self._run(
                str(bindir / "initdb"), "-D", str(self.pgdata), "-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync"
            )
        options = f"-k {self.sockdir} -c listen_addresses='' -c max_connections=200"
        status = await asyncio.create_subprocess_exec(
            *self._as_owner(), str(bindir / "pg_ctl"), "-D", str(self.pgdata), "status",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        if await status.wait() != 0:
            await self._run(
                str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.logfile), "-o", options, "-w",
                "-t", "60", "start",
            )  # fmt: skip
        self._started = True
        await self._ensure_database()

    async def _ensure_database(self) -> None:
        admin = f"postgresql://{ROLE}@/postgres?host={self.sockdir}"
        async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if await cur.fetchone() is None:
                await conn.execute(f'CREATE DATABASE "{DATABASE}"')

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        bindir = self._bindir or find_bindir()
        await self._run(str(bindir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "stop")

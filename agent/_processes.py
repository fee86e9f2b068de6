"""Last-resort cleanup of VMM processes by their command line (a crash can leave a VMM the driver cannot adopt,
e.g. one killed mid-restore while QEMU still waits for its migration stream). Every VMM's command line names its
run directory, which is private to one sandbox, so matching on it never hits a stranger's process."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def processes_mentioning(text: str) -> list[int]:
    """Pids of live, non-zombie processes whose command line contains `text`."""
    needle = text.encode()
    found: list[int] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append(int(entry.name))
    return found


def kill_processes_mentioning(text: str, wait: float = 5.0) -> int:
    """SIGKILL every process whose command line contains `text`; wait (bounded) until they are gone."""
    pids = processes_mentioning(text)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and _not_zombie(pid)]
        if pids:
            time.sleep(0.01)
    return len(pids)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

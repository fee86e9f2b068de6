"""What `wrenn provision host` checks on a machine before it installs anything there.

One POSIX shell script runs over SSH and prints ``key=value`` lines; `RemoteFacts` parses them, `problems` lists
what rules the host out (not Linux, not x86_64, no usable cgroup controllers, no python3 for Ansible, not Debian
12 or newer). No ``/dev/kvm`` is not a problem: the host runs guests under TCG, slower, and the report says so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["FACTS_SCRIPT", "RemoteFacts"]

FACTS_SCRIPT = r"""
echo "kernel=$(uname -s)"
echo "arch=$(uname -m)"
echo "release=$(uname -r)"
echo "hostname=$(hostname)"
if [ -r /etc/os-release ]; then . /etc/os-release; echo "os_id=${ID:-}"; echo "os_version=${VERSION_ID:-}"; fi
if [ -e /dev/kvm ]; then echo "dev_kvm=1"; else echo "dev_kvm=0"; fi
if [ -r /dev/kvm ] && [ -w /dev/kvm ]; then echo "dev_kvm_rw=1"; else echo "dev_kvm_rw=0"; fi
c2=/sys/fs/cgroup/cgroup.controllers
if [ -f "$c2" ]; then echo "cgroup2_controllers=$(cat "$c2")"; fi
# v1: a controller counts only when its hierarchy is mounted where the agent looks for it.
printf 'cgroup1_controllers='
for c in cpu memory pids cpuset freezer; do [ -f "/sys/fs/cgroup/$c/tasks" ] && printf '%s ' "$c"; done
echo
if [ -d /run/systemd/system ]; then echo "systemd=1"; else echo "systemd=0"; fi
if command -v python3 >/dev/null 2>&1; then echo "python3=$(command -v python3)"; fi
echo "mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)"
echo "cpus=$(getconf _NPROCESSORS_ONLN)"
echo "uid=$(id -u)"
"""

_REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")


class RemoteFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    kernel: str = ""
    arch: str = ""
    release: str = ""
    hostname: str = ""
    os_id: str = ""
    os_version: str = ""
    dev_kvm: bool = False
    dev_kvm_rw: bool = False
    cgroup2_controllers: tuple[str, ...] = ()
    cgroup1_controllers: tuple[str, ...] = ()
    systemd: bool = False
    python3: str | None = None
    mem_kb: int = 0
    cpus: int = 0
    uid: int = -1

    @classmethod
    def parse(cls, output: str) -> RemoteFacts:
        values: dict[str, object] = {}
        for line in output.splitlines():
            key, sep, value = line.partition("=")
            if not sep or key not in cls.model_fields:
                continue
            value = value.strip()
            if key in ("cgroup2_controllers", "cgroup1_controllers"):
                values[key] = tuple(value.split())
            elif key in ("dev_kvm", "dev_kvm_rw", "systemd"):
                values[key] = value == "1"
            elif key in ("mem_kb", "cpus", "uid"):
                values[key] = int(value) if value.isdigit() else 0
            elif value:
                values[key] = value
        return cls.model_validate(values)

    @property
    def cgroup_version(self) -> str:
        """``v2`` when the unified hierarchy has the controllers, ``v1`` when only v1 does (hybrid hosts too)."""
        if all(c in self.cgroup2_controllers for c in _REQUIRED_CONTROLLERS):
            return "v2"
        if all(c in self.cgroup1_controllers for c in _REQUIRED_CONTROLLERS):
            return "v1"
        return "none"

    @property
    def accelerator_hint(self) -> str:
        """``kvm`` when /dev/kvm is usable by the SSH user (the agent's boot probe has the final word), else ``tcg``."""
        return "kvm" if self.dev_kvm and self.dev_kvm_rw else "tcg"

    def problems(self) -> list[str]:
        found: list[str] = []
        if self.kernel != "Linux":
            found.append(f"kernel is {self.kernel or 'unknown'}, not Linux")
        if self.arch != "x86_64":
            found.append(f"architecture is {self.arch or 'unknown'}, Wrenn hosts are x86_64")
        if self.os_id != "debian" or not self.os_version.isdigit() or int(self.os_version) < 12:
            found.append(f"OS is {self.os_id or 'unknown'} {self.os_version}; the roles support Debian 12 or newer")
        if self.cgroup_version == "none":
            found.append(f"no cgroup hierarchy offers the {', '.join(_REQUIRED_CONTROLLERS)} controllers")
        if self.python3 is None:
            found.append("python3 is missing (Ansible needs it on the host)")
        if self.uid != 0:
            found.append("the SSH user is not root (use root, or become is needed — not supported yet)")
        return found

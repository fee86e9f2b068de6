"""``user@address[:port]`` — where `wrenn provision host` connects."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SSHTarget"]


class SSHTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = Field(min_length=1, pattern=r"^[a-z_][a-z0-9_.-]*$")
    host: str = Field(min_length=1)
    port: int = Field(default=22, ge=1, le=65535)

    @classmethod
    def parse(cls, text: str) -> SSHTarget:
        """``root@10.0.0.5``, ``admin@host.example.net:2222``, ``root@[fd00::5]:22``; the user defaults to root."""
        user, sep, rest = text.rpartition("@")
        if not sep:
            user, rest = "root", text
        port = 22
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            if tail.startswith(":"):
                port = int(tail[1:])
        elif rest.count(":") == 1:
            host, _, port_text = rest.partition(":")
            port = int(port_text)
        else:
            host = rest
        return cls(user=user, host=host, port=port)

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}"

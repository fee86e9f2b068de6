"""Password hashes with the standard library's scrypt, in a self-describing string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

# n=2**14, r=8, p=1 is the interactive-login setting from the scrypt paper; ~16 MiB and tens of ms per hash.
_N, _R, _P = 1 << 14, 8, 1
_DKLEN = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def hash_password(password: str) -> str:
    """``scrypt$n$r$p$salt$hash`` for storing."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=_DKLEN)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True when `password` matches `stored`. A missing or malformed hash still costs one scrypt (no timing hint)."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = (stored or "").split("$")
        if scheme != "scrypt":
            raise ValueError(scheme)
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        params = int(n), int(r), int(p)
    except ValueError:
        hashlib.scrypt(password.encode(), salt=b"\0" * 16, n=_N, r=_R, p=_P, dklen=_DKLEN)
        return False
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=params[0], r=params[1], p=params[2], dklen=len(expected), maxmem=1 << 26
    )
    return hmac.compare_digest(digest, expected)

"""Team API keys: ``e2b_`` + 40 lowercase hex (the e2b SDK's format), stored as sha256."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

API_KEY_PATTERN = re.compile(r"^e2b_[0-9a-f]{40}$")


@dataclass(frozen=True)
class NewApiKey:
    secret: str  # shown to the caller once, never stored
    hash: str
    prefix: str  # kept to let people tell their keys apart: ``e2b_1a2b3c``


def hash_api_key(key: str) -> str:
    # 160 random bits need no salt or slow hash: sha256 of the key cannot be brute-forced back.
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> NewApiKey:
    secret = "e2b_" + secrets.token_hex(20)
    return NewApiKey(secret=secret, hash=hash_api_key(secret), prefix=secret[:10])

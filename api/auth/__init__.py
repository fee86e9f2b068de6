"""Who is calling: passwords, API keys, session JWTs, and the `Principal` every route reads.

Credentials, in the order they are tried:

- ``X-API-KEY: e2b_<40 hex>`` — a team API key (what the e2b SDK sends). Only its sha256 is stored; it is
  shown once at creation, can be revoked, and its ``last_used_at`` is refreshed (at most once a minute).
- ``Authorization: Bearer <JWT>`` — a short-lived HS256 session from ``POST /v1/auth/login`` (email + password,
  scrypt hashes). It names the user and the team it acts for.

Either becomes a `Principal` in ``req.context.principal``; anything missing, malformed, unknown, revoked,
expired or wrongly signed is `Unauthenticated` (401).
"""

from wrenn.api.auth._authenticator import Authenticator
from wrenn.api.auth._keys import API_KEY_PATTERN, NewApiKey, hash_api_key, new_api_key
from wrenn.api.auth._passwords import hash_password, verify_password
from wrenn.api.auth._principal import Principal, Role, principal_of
from wrenn.api.auth._routes import register
from wrenn.api.auth._tokens import Session, SessionTokens

__all__ = [
    "API_KEY_PATTERN",
    "Authenticator",
    "NewApiKey",
    "Principal",
    "Role",
    "Session",
    "SessionTokens",
    "hash_api_key",
    "hash_password",
    "new_api_key",
    "principal_of",
    "register",
    "verify_password",
]

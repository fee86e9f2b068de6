"""Session tokens: short-lived HS256 JWTs naming a user and the team they act for.

Expiry is checked against the app's clock (not the wall clock inside PyJWT), so tests can age a token.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from wrenn.api.clock import Clock
from wrenn.protocol import Unauthenticated

_ISSUER = "wrenn"
_ALGORITHM = "HS256"


@dataclass(frozen=True)
class Session:
    token: str
    user_id: uuid.UUID
    team_id: uuid.UUID | None
    expires_at: datetime


class SessionTokens:
    def __init__(self, secret: str, *, ttl_seconds: int, clock: Clock) -> None:
        if len(secret) < 32:
            raise ValueError("the JWT secret must be at least 32 characters")
        self._secret = secret
        self._ttl = timedelta(seconds=ttl_seconds)
        self._clock = clock

    def issue(self, user_id: uuid.UUID, team_id: uuid.UUID | None) -> Session:
        now = self._clock()
        expires = now + self._ttl
        claims: dict[str, object] = {
            "iss": _ISSUER,
            "sub": str(user_id),
            "iat": int(now.timestamp()),
            "exp": int(expires.timestamp()),
            "jti": uuid.uuid4().hex,
            "auth_time": now.timestamp(),  # sub-second issue time, compared with the user's sessions_valid_after
        }
        if team_id is not None:
            claims["team"] = str(team_id)
        token = jwt.encode(claims, self._secret, algorithm=_ALGORITHM)
        return Session(token=token, user_id=user_id, team_id=team_id, expires_at=expires)

    def verify(self, token: str) -> tuple[uuid.UUID, uuid.UUID | None, datetime]:
        """(user id, team id, issue time) of a valid token; Unauthenticated for a bad signature, shape or age."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["exp", "iat", "sub", "iss"], "verify_exp": False, "verify_iat": False},
            )
        except jwt.InvalidSignatureError as exc:
            raise Unauthenticated("invalid session token signature") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid session token") from exc
        try:
            expires = int(claims["exp"])
            user_id = uuid.UUID(str(claims["sub"]))
            team_id = uuid.UUID(str(claims["team"])) if "team" in claims else None
            issued = datetime.fromtimestamp(float(claims.get("auth_time", claims["iat"])), UTC)
        except (TypeError, ValueError) as exc:
            raise Unauthenticated("invalid session token") from exc
        if self._clock().timestamp() >= expires:
            raise Unauthenticated("session token expired")
        return user_id, team_id, issued

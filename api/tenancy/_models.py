"""Request and response bodies of the management API (teams, members, API keys, users)."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, model_validator

from wrenn.api.auth import Role


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class TeamCreate(_Input):
    name: str = Field(min_length=1, max_length=100)


class Team(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime
    role: Role | None = Field(description="the caller's role in the team (null for a global admin who is not a member)")


class MemberAdd(_Input):
    email: str | None = Field(default=None, min_length=3, max_length=320)
    user_id: uuid.UUID | None = None
    role: Role = Role.MEMBER

    @model_validator(mode="after")
    def _one_of(self) -> MemberAdd:
        if (self.email is None) == (self.user_id is None):
            raise ValueError("give exactly one of email and user_id")
        return self


class MemberUpdate(_Input):
    role: Role


class Member(BaseModel):
    user_id: uuid.UUID
    email: str
    role: Role
    created_at: datetime


class ApiKeyCreate(_Input):
    name: str = Field(min_length=1, max_length=100)


class ApiKey(BaseModel):
    """An API key as listed: never the secret, only its first characters."""

    id: uuid.UUID
    team_id: uuid.UUID
    name: str
    prefix: str
    created_by: uuid.UUID | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="the secret; shown in this response only")


class UserCreate(_Input):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=1024)
    is_admin: bool = False


class User(BaseModel):
    id: uuid.UUID
    email: str
    is_admin: bool
    created_at: datetime


class TeamRole(BaseModel):
    team_id: uuid.UUID
    name: str
    role: Role


class Me(User):
    teams: list[TeamRole]
    acting_team_id: uuid.UUID | None

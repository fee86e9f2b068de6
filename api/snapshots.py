"""Named snapshots in the control plane (E2B reference section 2; table ``snapshots``, migration 0101).

    POST   /sandboxes/{id}/snapshots  {"name"?}                    -> 201 SnapshotInfo (the sandbox keeps running)
    GET    /snapshots  ?sandboxID&name&limit&nextToken             -> 200 [SnapshotInfo] + X-Next-Token
    DELETE /templates/{id}                                         -> 204; 404 unknown; 409 while sandboxes use it
    POST   /sandboxes/{id}/fork  {"count"?, "timeout"?}            -> 201 [{"sandbox"} | {"error"}]: a snapshot of
                                                                      the sandbox, then `count` sandboxes from it
    POST   /sandboxes {"templateID": <snapshot id or name>}        -> a sandbox restored from the snapshot

The host agent takes the snapshot (`wrenn.agent.snapshots`): its files stay on that host. `SandboxService.create`
asks `resolve` (installed by `register`) when a template id is not a known template.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import falcon.asgi
from pydantic import BaseModel, ConfigDict, Field

from wrenn.api.auth import principal_of
from wrenn.api.clock import Clock, Ids
from wrenn.api.deps import Deps
from wrenn.api.hosts import HostDirectory, directory_of
from wrenn.api.lifecycle import optional_body
from wrenn.api.openapi import Access, Operation
from wrenn.api.sandboxes import NewSandbox, SandboxCreated, SandboxService, SandboxState, service_of
from wrenn.api.store import Store
from wrenn.protocol.errors import Invalid, NotFound, WrennError

_TAGS = ("snapshots",)
MAX_FORKS = 20
"""Most sandboxes one fork call makes (the e2b SDK's own limit)."""


class SnapshotRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str | None = Field(default=None, max_length=128)


class SnapshotOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    snapshot_id: str = Field(serialization_alias="snapshotID")
    names: list[str]


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    count: int = Field(default=1, ge=1, le=MAX_FORKS)
    timeout: int = Field(default=300, ge=0, le=86400)


class ForkError(BaseModel):
    code: int
    message: str


class ForkResult(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    sandbox: SandboxCreated | None = None
    error: ForkError | None = None


class SnapshotQuery(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    sandbox_id: str | None = Field(default=None, alias="sandboxID")
    name: str | None = None
    limit: int = Field(default=100, ge=1, le=100)
    next_token: str | None = Field(default=None, alias="nextToken")


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    id: str
    host_id: str | None
    names: list[str]
    vcpus: int
    memory_mb: int
    created_at: datetime

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> SnapshotRow:
        return cls(row["id"], row["host_id"], list(row["names"]), row["vcpus"], row["memory_mb"], row["created_at"])

    def out(self) -> SnapshotOut:
        return SnapshotOut(snapshot_id=self.id, names=self.names)


class SnapshotService:
    def __init__(
        self, *, store: Store, hosts: HostDirectory, ids: Ids, clock: Clock, sandboxes: SandboxService
    ) -> None:
        self._store = store
        self._hosts = hosts
        self._ids = ids
        self._clock = clock
        self._sandboxes = sandboxes

    async def create(self, team_id: uuid.UUID, sandbox_id: str, name: str | None) -> SnapshotOut:
        row = await self._store.fetch_one(
            "SELECT * FROM sandboxes WHERE id = %s AND team_id = %s AND state = %s",
            (sandbox_id, team_id, SandboxState.RUNNING.value),
        )
        if row is None:
            raise NotFound(f"sandbox '{sandbox_id}' not found")
        snapshot_id = "snap" + self._ids.short(16)
        agent = await self._hosts.client(row["host_id"] or "")
        info = await agent.snapshot_sandbox(sandbox_id, snapshot_id)
        names = [name] if name else [snapshot_id]
        await self._store.fetch_one(
            "INSERT INTO snapshots (id, team_id, host_id, sandbox_id, template, names, vcpus, memory_mb, disk_mb, "
            "created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (
                snapshot_id,
                team_id,
                row["host_id"],
                sandbox_id,
                info.template,
                names,
                info.vcpus,
                info.memory_mb,
                info.disk_mb,
                self._clock(),
            ),
        )
        return SnapshotOut(snapshot_id=snapshot_id, names=names)

    async def fork(self, team_id: uuid.UUID, sandbox_id: str, count: int, timeout_s: int) -> list[ForkResult]:
        """Snapshot the sandbox (it keeps running), then start `count` sandboxes from the snapshot, one after
        another (bounded load); each slot carries its sandbox or its error. The snapshot stays listed (named
        ``fork-of-<id>``) so its forks keep a base; DELETE /templates/{id} removes it once they are gone."""
        snapshot = await self.create(team_id, sandbox_id, f"fork-of-{sandbox_id}")
        results: list[ForkResult] = []
        for _ in range(count):
            body = NewSandbox.model_validate({"templateID": snapshot.snapshot_id, "timeout": timeout_s})
            try:
                results.append(ForkResult(sandbox=await self._sandboxes.create(team_id, body)))
            except WrennError as exc:
                results.append(ForkResult(error=ForkError(code=exc.status, message=exc.message)))
        return results

    async def list_page(self, team_id: uuid.UUID, query: SnapshotQuery) -> tuple[list[SnapshotOut], str | None]:
        sql = ["SELECT * FROM snapshots WHERE team_id = %(team)s"]
        params: dict[str, Any] = {"team": team_id, "limit": query.limit + 1}
        if query.sandbox_id:
            sql.append("AND sandbox_id = %(sandbox)s")
            params["sandbox"] = query.sandbox_id
        if query.name:
            sql.append("AND %(name)s = ANY(names)")
            params["name"] = query.name
        if query.next_token:
            created, after = _decode(query.next_token)
            sql.append("AND (created_at, id) > (%(after_ts)s, %(after_id)s)")
            params["after_ts"], params["after_id"] = created, after
        sql.append("ORDER BY created_at, id LIMIT %(limit)s")
        rows = [SnapshotRow.from_row(r) for r in await self._store.fetch_all(" ".join(sql), params)]
        token = _encode(rows[query.limit - 1]) if len(rows) > query.limit else None
        return [r.out() for r in rows[: query.limit]], token

    async def resolve(self, team_id: uuid.UUID, template_id: str) -> tuple[str, int, int] | None:
        """(snapshot id, vcpus, memory MiB) of the team's snapshot with this id or name; None when there is none."""
        row = await self._store.fetch_one(
            "SELECT * FROM snapshots WHERE team_id = %s AND (id = %s OR %s = ANY(names)) ORDER BY created_at DESC",
            (team_id, template_id, template_id),
        )
        if row is None:
            return None
        snap = SnapshotRow.from_row(row)
        return snap.id, snap.vcpus, snap.memory_mb

    async def delete(self, team_id: uuid.UUID, snapshot_id: str) -> None:
        row = await self._store.fetch_one(
            "SELECT * FROM snapshots WHERE team_id = %s AND id = %s", (team_id, snapshot_id)
        )
        if row is None:
            raise NotFound(f"template '{snapshot_id}' not found")
        if row["host_id"] is not None:
            agent = await self._hosts.client(row["host_id"])
            with contextlib.suppress(NotFound):  # the host lost it already: forget the record too
                await agent.delete_snapshot(snapshot_id)
        await self._store.fetch_one("DELETE FROM snapshots WHERE id = %s RETURNING id", (snapshot_id,))


def _encode(row: SnapshotRow) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str) -> tuple[datetime, str]:
    try:
        created, snapshot_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return datetime.fromisoformat(created), str(snapshot_id)
    except (ValueError, TypeError) as exc:
        raise Invalid("invalid nextToken") from exc


def operations(service: SnapshotService) -> list[Operation]:
    async def create_snapshot(req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str) -> SnapshotOut:
        body = await optional_body(req, SnapshotRequest)
        return await service.create(principal_of(req).require_team(), sandbox_id, body.name)

    async def list_snapshots(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, query: SnapshotQuery
    ) -> list[SnapshotOut]:
        items, token = await service.list_page(principal_of(req).require_team(), query)
        if token:
            resp.set_header("X-Next-Token", token)
        return items

    async def fork_sandbox(
        req: falcon.asgi.Request, resp: falcon.asgi.Response, sandbox_id: str
    ) -> list[dict[str, Any]]:
        body = await optional_body(req, ForkRequest)
        results = await service.fork(principal_of(req).require_team(), sandbox_id, body.count, body.timeout)
        # Each slot has exactly one of sandbox/error: the SDK reads a present key as a value, null included.
        return [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in results]

    async def delete_template(req: falcon.asgi.Request, resp: falcon.asgi.Response, template_id: str) -> None:
        await service.delete(principal_of(req).require_team(), template_id)

    key = Access.ANY
    return [
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/snapshots",
            create_snapshot,
            "Snapshot a running sandbox (it keeps running); new sandboxes can start from the snapshot",
            _TAGS,
            key,
            response=SnapshotOut,
            status=201,
            errors=(400, 401, 404, 409, 500),
        ),
        Operation(
            "POST",
            "/sandboxes/{sandbox_id}/fork",
            fork_sandbox,
            "Fork a running sandbox into `count` new sandboxes (through a snapshot; the source keeps running)",
            _TAGS,
            key,
            response=list[ForkResult],
            status=201,
            errors=(400, 401, 404, 409, 500),
        ),
        Operation(
            "GET",
            "/snapshots",
            list_snapshots,
            "List the team's snapshots",
            _TAGS,
            key,
            query=SnapshotQuery,
            response=list[SnapshotOut],
            errors=(400, 401, 500),
            response_headers={"X-Next-Token": "token of the next page; absent on the last page"},
        ),
        Operation(
            "DELETE",
            "/templates/{template_id}",
            delete_template,
            "Delete a snapshot template",
            _TAGS,
            key,
            status=204,
            errors=(401, 404, 409, 500),
        ),
    ]


def register(app: falcon.asgi.App[Any, Any], deps: Deps) -> None:
    sandboxes = service_of(deps)
    service = SnapshotService(
        store=deps.store, hosts=directory_of(deps), ids=deps.ids, clock=deps.clock, sandboxes=sandboxes
    )
    sandboxes.resolve_snapshot = service.resolve
    deps.extras["snapshots"] = service
    deps.routes.add(*operations(service))

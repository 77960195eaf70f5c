"""Projects (tenants): members with project roles, a model allow-list and quotas."""

from __future__ import annotations

import re
import sqlite3
import time
from typing import Any

import msgspec

from appliance.identity import audit
from appliance.identity.rbac import PROJECT_ROLES
from appliance.identity.users import User
from appliance.kernel.errors import BadRequest, Conflict, NotFound
from appliance.store.state import StateStore

PROJECT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
QUOTA_FIELDS = ("tokens_per_day", "tokens_per_month", "rpm", "max_concurrent", "gpu_limit")


class Project(msgspec.Struct, kw_only=True):
    """A project: its models (empty list = every model) and quotas (None = no limit)."""

    id: str
    name: str
    description: str = ""
    models: list[str] = []
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    rpm: int | None = None
    max_concurrent: int | None = None
    gpu_limit: int | None = None  # GPUs its confirmed deployments may hold together
    created_at: float = 0.0

    def allows_model(self, model: str) -> bool:
        return not self.models or model in self.models


class ProjectChange(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A PATCH body: fields left out stay as they are; a quota of 0 removes it."""

    name: str | None = None
    description: str | None = None
    models: list[str] | None = None
    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    rpm: int | None = None
    max_concurrent: int | None = None
    gpu_limit: int | None = None


class Member(msgspec.Struct, kw_only=True):
    user_id: str
    username: str
    role: str
    added_at: float


_COLUMNS = ("id, name, description, models, tokens_per_day, tokens_per_month, rpm,"
            " max_concurrent, gpu_limit, created_at")


def _project(row: Any) -> Project:
    values = dict(row)
    values["models"] = msgspec.json.decode(values["models"])
    return msgspec.convert(values, Project)


def check_project_id(project_id: str) -> str:
    if not PROJECT_ID_RE.match(project_id):
        raise BadRequest("a project id has 1-64 lower-case letters, digits, '_' or '-'",
                         param="id")
    return project_id


def _check_quotas(values: dict[str, Any]) -> None:
    for field in QUOTA_FIELDS:
        value = values.get(field)
        if value is not None and value < 0:
            raise BadRequest(f"{field} must not be negative", param=field)


async def list_projects(store: StateStore, ids: set[str] | None = None) -> list[Project]:
    """Every project, or only those in ``ids``."""
    rows = await store.fetchall(f"SELECT {_COLUMNS} FROM projects ORDER BY id")
    return [_project(r) for r in rows if ids is None or r["id"] in ids]


async def get_project(store: StateStore, project_id: str) -> Project:
    row = await store.fetchone(f"SELECT {_COLUMNS} FROM projects WHERE id=?", (project_id,))
    if row is None:
        raise NotFound(f"no project {project_id!r}", param="project",
                       code="project_not_found")
    return _project(row)


async def create_project(store: StateStore, project: Project, *, actor: str,
                         source_address: str = "") -> Project:
    check_project_id(project.id)
    _check_quotas(msgspec.to_builtins(project))
    now = time.time()
    try:
        async with store.transaction() as conn:
            await conn.execute(
                f"INSERT INTO projects ({_COLUMNS}, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (project.id, project.name or project.id, project.description,
                 msgspec.json.encode(project.models).decode(), project.tokens_per_day,
                 project.tokens_per_month, project.rpm, project.max_concurrent,
                 project.gpu_limit, now, now))
            await audit.record_async(conn, actor=actor, action="project.create",
                                     target=project.id,
                                     detail={k: getattr(project, k) for k in QUOTA_FIELDS},
                                     source_address=source_address, data_dir=store.data_dir)
    except sqlite3.IntegrityError:
        raise Conflict(f"project {project.id!r} exists", code="project_exists") from None
    return await get_project(store, project.id)


async def update_project(store: StateStore, project_id: str, change: ProjectChange, *,
                         actor: str, source_address: str = "") -> Project:
    await get_project(store, project_id)
    values = {k: v for k, v in msgspec.to_builtins(change).items() if v is not None}
    _check_quotas(values)
    if not values:
        return await get_project(store, project_id)
    sql_values = {k: (msgspec.json.encode(v).decode() if k == "models" else
                      (None if k in QUOTA_FIELDS and v == 0 else v))
                  for k, v in values.items()}
    sets = ", ".join(f"{k}=?" for k in sql_values)
    async with store.transaction() as conn:
        await conn.execute(f"UPDATE projects SET {sets}, updated_at=? WHERE id=?",
                           (*sql_values.values(), time.time(), project_id))
        await audit.record_async(conn, actor=actor, action="project.update", target=project_id,
                                 detail=values, source_address=source_address,
                                 data_dir=store.data_dir)
    return await get_project(store, project_id)


async def list_members(store: StateStore, project_id: str) -> list[Member]:
    rows = await store.fetchall(
        "SELECT m.user_id, u.username, m.role, m.added_at FROM project_members m"
        " JOIN users u ON u.id = m.user_id WHERE m.project_id=? ORDER BY u.username",
        (project_id,))
    return [msgspec.convert(dict(r), Member) for r in rows]


async def add_member(store: StateStore, project_id: str, user: User, role: str, *,
                     actor: str, source_address: str = "") -> Member:
    """Add a user to a project or change their project role."""
    if role not in PROJECT_ROLES:
        raise BadRequest(f"project role must be one of {', '.join(PROJECT_ROLES)}",
                         param="role")
    await get_project(store, project_id)
    async with store.transaction() as conn:
        await conn.execute(
            "INSERT INTO project_members (project_id, user_id, role, added_at) VALUES"
            " (?,?,?,?) ON CONFLICT(project_id, user_id) DO UPDATE SET role=excluded.role",
            (project_id, user.id, role, time.time()))
        await audit.record_async(conn, actor=actor, action="project.member_add",
                                 target=f"{project_id}/{user.username}", detail={"role": role},
                                 source_address=source_address, data_dir=store.data_dir)
    for member in await list_members(store, project_id):
        if member.user_id == user.id:
            return member
    raise NotFound("member vanished")  # pragma: no cover - removed concurrently


async def remove_member(store: StateStore, project_id: str, user_id: str, *, actor: str,
                        source_address: str = "") -> None:
    async with store.transaction() as conn:
        cur = await conn.execute(
            "DELETE FROM project_members WHERE project_id=? AND user_id=?",
            (project_id, user_id))
        if cur.rowcount == 0:
            raise NotFound(f"user {user_id!r} is not a member of {project_id!r}",
                           code="member_not_found")
        await audit.record_async(conn, actor=actor, action="project.member_remove",
                                 target=f"{project_id}/{user_id}",
                                 source_address=source_address, data_dir=store.data_dir)


async def memberships(store: StateStore, user_id: str) -> dict[str, str]:
    """Project id -> project role for one user."""
    rows = await store.fetchall("SELECT project_id, role FROM project_members WHERE user_id=?",
                                (user_id,))
    return {r[0]: r[1] for r in rows}

"""Projects and users (admin): members, roles and quotas, from the identity component."""

from __future__ import annotations

from typing import Any

from appliance.ui.pages import Page, PageRequest


async def _rows(store: Any, sql: str) -> list[dict[str, Any]] | None:
    try:
        return [dict(r) for r in await store.fetchall(sql)]
    except Exception:  # the identity tables are not in this state database yet
        return None


async def access(req: PageRequest) -> dict[str, Any]:
    """Users, projects and memberships; an explanation where identity is not set up."""
    store = req.services.store
    users = await _rows(store, "SELECT id, username, display_name, email, source, role,"
                               " disabled, last_login_at, created_at FROM users"
                               " ORDER BY username")
    projects = await _rows(store, "SELECT id, name, description, models, tokens_per_day,"
                                  " tokens_per_month, rpm, max_concurrent FROM projects"
                                  " ORDER BY name")
    members = await _rows(store, "SELECT m.project_id, m.role, u.username FROM"
                                 " project_members m JOIN users u ON u.id = m.user_id"
                                 " ORDER BY u.username")
    by_project: dict[str, list[dict[str, Any]]] = {}
    for m in members or []:
        by_project.setdefault(m["project_id"], []).append(m)
    return {"identity": users is not None, "users": users or [], "projects": projects or [],
            "members": by_project}


PAGES = (Page("/access", "Projects & users", "access.html", access, section="Access", admin=True,
              summary="Who may do what, in which project, within which quotas."),)

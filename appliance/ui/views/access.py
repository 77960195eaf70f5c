"""Projects and users (admin): create users and projects, roles, members, quotas, models.

The page reads the identity tables directly; every change goes through ``/ui/api`` to the
identity API as the signed-in admin, so permissions and the audit trail apply.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from appliance.identity import projects as project_store
from appliance.identity import users as user_store
from appliance.identity.passwords import MIN_PASSWORD_LENGTH
from appliance.identity.projects import PROJECT_ID_RE
from appliance.identity.rbac import GLOBAL_ROLE_NOTES, GLOBAL_ROLES, PROJECT_ROLES
from appliance.identity.users import USERNAME_RE
from appliance.ui.pages import Page, PageRequest

QUOTAS = (  # (field, label, hint): projects.QUOTA_FIELDS in the order the page shows them
    ("tokens_per_day", "Tokens/day", ""),
    ("tokens_per_month", "Tokens/month", ""),
    ("rpm", "Requests/min", "RPM"),
    ("max_concurrent", "Concurrent requests", ""),
    ("gpu_limit", "GPUs", "enforced by deployments"),
)


def _pattern(regex: Any) -> str:
    """A Python ``^...$`` pattern as an HTML ``pattern`` attribute: anchored by the browser and
    compiled with the ``v`` flag, where a ``-`` at the end of a class must be escaped."""
    return str(regex.pattern).removeprefix("^").removesuffix("$").replace("-]", "\\-]")


async def access(req: PageRequest) -> dict[str, Any]:
    """Users, projects and memberships; one project's settings when ``?project=`` names it."""
    store = req.services.store
    try:
        users = await user_store.list_users(store)
        projects = await project_store.list_projects(store)
    except Exception:  # an old state database without the identity tables
        return {"identity": False}
    members = {p.id: await project_store.list_members(store, p.id) for p in projects}
    memberships: dict[str, list[tuple[str, str]]] = {}
    for project_id, found in members.items():
        for m in found:
            memberships.setdefault(m.user_id, []).append((project_id, m.role))
    selected = next((p for p in projects if p.id == req.query.get("project")), None)
    member_ids = {m.user_id for m in members.get(selected.id, [])} if selected else set()
    return {
        "identity": True,
        "users": [msgspec.to_builtins(u) for u in users],
        "projects": projects,
        "members": members,
        "memberships": memberships,
        "selected": selected,
        "candidates": [u for u in users if u.id not in member_ids and not u.disabled],
        "missing_project": req.query.get("project") if req.query.get("project") and not selected
        else "",
        "roles": list(GLOBAL_ROLES),
        "role_notes": GLOBAL_ROLE_NOTES,
        "project_roles": list(PROJECT_ROLES),
        "quotas": QUOTAS,
        "models": sorted(req.services.router.models()),
        "me": req.operator.user_id,
        "username_pattern": _pattern(USERNAME_RE),
        "project_pattern": _pattern(PROJECT_ID_RE),
        "min_password": MIN_PASSWORD_LENGTH,
        "now": time.time(),
    }


PAGES = (Page("/access", "Projects & users", "access.html", access, section="Access", admin=True,
              summary="Who may do what, in which project, within which quotas."),)

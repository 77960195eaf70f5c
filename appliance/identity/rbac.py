"""Roles and permissions: THE table of every /api route and the permission it needs.

One table, in code. The control-API middleware looks every request up here and refuses a
route that has no entry (fail closed); ``docs/permissions.md`` is generated from it
(``appliance users permissions --markdown``); a test checks that every registered /api route
has an entry and calls each as every role.

Global roles say what a person may do across the site. Project roles say what a member may
do inside one project (its keys, members, usage); a route whose scope is ``project`` is allowed
to a member whose project role grants the permission, and its view then shows only the
objects of those projects (other projects' objects answer 404).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import msgspec

PUBLIC = "public"  # no sign-in needed
AUTHENTICATED = "authenticated"  # any signed-in person or API key with /api access

Scope = Literal["global", "project"]


class Permission(NamedTuple):
    name: str
    description: str


PERMISSIONS: tuple[Permission, ...] = (
    Permission("status.read", "see readiness, engines and versions"),
    Permission("models.read", "list imported models"),
    Permission("engines.read", "see local engine workers"),
    Permission("routes.read", "list routes and their targets' state"),
    Permission("routes.write", "create, change and remove routes"),
    Permission("upstreams.read", "list upstreams (never their API keys)"),
    Permission("upstreams.write", "create, change and remove upstreams"),
    Permission("usage.read", "read usage and latency reports"),
    Permission("bundles.import", "import offline bundles present on the host"),
    Permission("registry.read", "download container-registry client configuration"),
    Permission("sim.read", "read simulator runs"),
    Permission("sim.run", "run the performance simulator"),
    Permission("sim.calibrate", "retrain the simulator with this site's measurements"),
    Permission("keys.read", "list API keys of a project (never their secrets)"),
    Permission("keys.write", "create, rotate and revoke API keys of a project"),
    Permission("projects.read", "see a project, its quotas and members"),
    Permission("projects.write", "create projects, change quotas and model allow-lists"),
    Permission("projects.members", "add and remove members of a project"),
    Permission("users.read", "list user accounts"),
    Permission("users.write", "create, disable, change role of and reset user accounts"),
    Permission("audit.read", "read and verify the audit trail"),
    Permission("hosts.read", "list hosts, their facts, playbooks and installs"),
    Permission("hosts.write", "add and remove hosts, accept host keys, run playbooks on hosts"),
    Permission("deployments.read", "list model deployments and their progress"),
    Permission("deployments.write", "propose, confirm and delete model deployments"),
)
ALL_PERMISSIONS = frozenset(p.name for p in PERMISSIONS)

_VIEWER = frozenset({"status.read", "models.read", "engines.read", "routes.read",
                     "upstreams.read", "usage.read", "registry.read", "sim.read"})
_DEVELOPER = _VIEWER | {"sim.run"}
_OPERATOR = _DEVELOPER | {"routes.write", "upstreams.write", "bundles.import", "audit.read",
                          "sim.calibrate",
                          "users.read", "hosts.read", "hosts.write", "deployments.read",
                          "deployments.write"}

GLOBAL_ROLES: dict[str, frozenset[str]] = {
    "admin": ALL_PERMISSIONS,
    "operator": frozenset(_OPERATOR),
    "developer": frozenset(_DEVELOPER),
    "viewer": _VIEWER,
}
GLOBAL_ROLE_NOTES = {
    "admin": "everything, in every project",
    "operator": "infrastructure: bundles, upstreams, routes, engines; reads the audit trail",
    "developer": "reads the site, runs the simulator; keys in the projects they belong to",
    "viewer": "read-only",
}

_P_VIEWER = frozenset({"projects.read", "keys.read"})
_P_DEVELOPER = _P_VIEWER | {"keys.write"}
PROJECT_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset(_P_DEVELOPER | {"projects.members"}),
    "developer": frozenset(_P_DEVELOPER),
    "viewer": _P_VIEWER,
}


class RouteRule(NamedTuple):
    method: str
    path: str  # aiohttp's canonical form: /api/keys/{id}
    permission: str
    scope: Scope = "global"


R = RouteRule
ROUTE_RULES: tuple[RouteRule, ...] = (
    # documents and sign-in: public
    R("GET", "/api/openapi.json", PUBLIC),
    R("GET", "/api/tls/ca.pem", PUBLIC),
    R("GET", "/api/auth/providers", PUBLIC),
    R("POST", "/api/auth/login", PUBLIC),
    R("GET", "/api/auth/oidc/login", PUBLIC),
    R("GET", "/api/auth/oidc/callback", PUBLIC),
    R("POST", "/api/auth/logout", AUTHENTICATED),
    R("GET", "/api/auth/me", AUTHENTICATED),
    R("POST", "/api/auth/password", AUTHENTICATED),
    # the appliance core
    R("GET", "/api/status", "status.read"),
    R("GET", "/api/keys", "keys.read", "project"),
    R("POST", "/api/keys", "keys.write", "project"),
    R("DELETE", "/api/keys/{id}", "keys.write", "project"),
    R("POST", "/api/keys/{id}/rotate", "keys.write", "project"),
    R("GET", "/api/upstreams", "upstreams.read"),
    R("POST", "/api/upstreams", "upstreams.write"),
    R("DELETE", "/api/upstreams/{name}", "upstreams.write"),
    R("GET", "/api/routes", "routes.read"),
    R("POST", "/api/routes", "routes.write"),
    R("DELETE", "/api/routes/{model}", "routes.write"),
    R("GET", "/api/models", "models.read"),
    R("GET", "/api/engines", "engines.read"),
    R("GET", "/api/usage", "usage.read"),
    R("POST", "/api/bundles/import", "bundles.import"),
    R("POST", "/api/bundles", "bundles.import"),
    R("GET", "/api/bundles/imports", "bundles.import"),
    R("GET", "/api/bundles/imports/{id}", "bundles.import"),
    # registry client configuration (appliance/content)
    R("GET", "/api/registry/hosts.toml", "registry.read"),
    R("GET", "/api/registry/registries.yaml", "registry.read"),
    # simulator (appliance/sim)
    R("POST", "/api/sim/predict", "sim.run"),
    R("POST", "/api/sim/recommend", "sim.run"),
    R("GET", "/api/sim/runs", "sim.read"),
    R("GET", "/api/sim/runs/{id}", "sim.read"),
    R("GET", "/api/sim/calibration", "sim.read"),
    R("POST", "/api/sim/calibration", "sim.calibrate"),
    R("DELETE", "/api/sim/calibration", "sim.calibrate"),
    # identity
    R("GET", "/api/users", "users.read"),
    R("POST", "/api/users", "users.write"),
    R("GET", "/api/users/{id}", "users.read"),
    R("PATCH", "/api/users/{id}", "users.write"),
    R("POST", "/api/users/{id}/reset-password", "users.write"),
    R("GET", "/api/projects", "projects.read", "project"),
    R("POST", "/api/projects", "projects.write"),
    R("GET", "/api/projects/{id}", "projects.read", "project"),
    R("PATCH", "/api/projects/{id}", "projects.write"),
    R("GET", "/api/projects/{id}/members", "projects.read", "project"),
    R("POST", "/api/projects/{id}/members", "projects.members", "project"),
    R("DELETE", "/api/projects/{id}/members/{user_id}", "projects.members", "project"),
    R("GET", "/api/audit", "audit.read"),
    R("GET", "/api/audit/verify", "audit.read"),
    # hosts, installs and deployments (appliance/cluster)
    R("GET", "/api/hosts", "hosts.read"),
    R("POST", "/api/hosts", "hosts.write"),
    R("GET", "/api/hosts/{name}", "hosts.read"),
    R("DELETE", "/api/hosts/{name}", "hosts.write"),
    R("POST", "/api/hosts/{name}/accept-key", "hosts.write"),
    R("POST", "/api/hosts/{name}/check", "hosts.write"),
    R("GET", "/api/playbooks", "hosts.read"),
    R("GET", "/api/installs", "hosts.read"),
    R("POST", "/api/installs", "hosts.write"),
    R("GET", "/api/installs/{id}", "hosts.read"),
    R("GET", "/api/installs/{id}/events", "hosts.read"),
    R("GET", "/api/deployments", "deployments.read"),
    R("POST", "/api/deployments", "deployments.write"),
    R("GET", "/api/deployments/{id}", "deployments.read"),
    R("POST", "/api/deployments/{id}/confirm", "deployments.write"),
    R("DELETE", "/api/deployments/{id}", "deployments.write"),
)
del R

_BY_ROUTE = {(r.method, r.path): r for r in ROUTE_RULES}


def rule_for(method: str, path: str) -> RouteRule | None:
    """The rule of a route given as method and canonical path (HEAD is GET)."""
    return _BY_ROUTE.get(("GET" if method == "HEAD" else method, path))


class Principal(msgspec.Struct, kw_only=True):
    """Who is calling: a signed-in user, an API key, or nobody."""

    kind: Literal["user", "key", "anonymous", "system"]
    name: str  # the audit actor: user:alice, key:key_ab12, anonymous
    role: str | None = None  # global role
    projects: dict[str, str] = {}  # project id -> project role
    user_id: str | None = None
    key_id: str | None = None
    session_csrf: str | None = None  # set when authenticated by the session cookie

    def has(self, permission: str) -> bool:
        """Whether the global role grants ``permission`` (everywhere)."""
        if permission == PUBLIC:
            return True
        if permission == AUTHENTICATED:
            return self.kind != "anonymous"
        return self.role is not None and permission in GLOBAL_ROLES.get(self.role, ())

    def can(self, permission: str, project_id: str | None = None) -> bool:
        """Whether ``permission`` is granted globally or, with ``project_id``, in it."""
        if self.has(permission):
            return True
        if project_id is None:
            return any(permission in PROJECT_ROLES.get(r, ()) for r in self.projects.values())
        return permission in PROJECT_ROLES.get(self.projects.get(project_id, ""), ())

    def project_ids(self, permission: str) -> set[str] | None:
        """Projects where ``permission`` holds; None means all of them (a global grant)."""
        if self.has(permission):
            return None
        return {p for p, r in self.projects.items() if permission in PROJECT_ROLES.get(r, ())}

    def allowed(self, rule: RouteRule) -> bool:
        """Whether the route may be called at all (project views then filter by project)."""
        if rule.scope == "project":
            return self.can(rule.permission)
        return self.has(rule.permission)


ANONYMOUS = Principal(kind="anonymous", name="anonymous")
SYSTEM = Principal(kind="system", name="system", role="admin")


def permissions_markdown() -> str:
    """``docs/permissions.md``: roles and the route table, generated from this module."""
    out = ["# Permissions", "",
           "Generated from `appliance/identity/rbac.py` by "
           "`appliance users permissions --markdown`; do not edit by hand.", "",
           "## Global roles", "", "| role | meaning | permissions |", "|---|---|---|"]
    for role, perms in GLOBAL_ROLES.items():
        shown = "all" if perms == ALL_PERMISSIONS else ", ".join(sorted(perms))
        out.append(f"| `{role}` | {GLOBAL_ROLE_NOTES[role]} | {shown} |")
    out += ["", "## Project roles", "",
            "Granted by membership of one project; they apply to that project's objects only.",
            "", "| project role | permissions |", "|---|---|"]
    for role, perms in PROJECT_ROLES.items():
        out.append(f"| `{role}` | {', '.join(sorted(perms))} |")
    out += ["", "## Permissions", "", "| permission | allows |", "|---|---|"]
    out += [f"| `{p.name}` | {p.description} |" for p in PERMISSIONS]
    out += ["", "## Routes", "",
            "`public`: no sign-in. `authenticated`: any signed-in user or admin API key. "
            "Scope `project`: members whose project role grants the permission may call it "
            "and see only their projects' objects (others answer 404). A route missing from "
            "this table is refused (403).", "",
            "| method | path | permission | scope | roles |", "|---|---|---|---|---|"]
    for rule in ROUTE_RULES:
        roles = [r for r, p in GLOBAL_ROLES.items() if rule.permission in p]
        if rule.permission in (PUBLIC, AUTHENTICATED):
            who = "anyone" if rule.permission == PUBLIC else "any signed-in"
        else:
            who = ", ".join(roles)
            if rule.scope == "project":
                proles = [r for r, p in PROJECT_ROLES.items() if rule.permission in p]
                who += f"; project {', '.join(proles)}"
        out.append(f"| {rule.method} | `{rule.path}` | `{rule.permission}` | {rule.scope} "
                   f"| {who} |")
    return "\n".join(out) + "\n"

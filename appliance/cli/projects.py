"""`appliance projects`: projects, members, model allow-lists and quotas."""

from __future__ import annotations

import argparse

from appliance.cli.common import add_common, csv_list, print_json, print_table, run_with_store
from appliance.identity import projects, rbac, users
from appliance.identity.audit import cli_actor
from appliance.settings import Settings
from appliance.store.state import StateStore


def _quota_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", help="comma-separated models the project's keys may use "
                   "(default: all)")
    p.add_argument("--tokens-per-day", type=int, help="token quota per UTC day (0 = none)")
    p.add_argument("--tokens-per-month", type=int, help="token quota per UTC month (0 = none)")
    p.add_argument("--rpm", type=int, help="requests per minute, all keys together (0 = none)")
    p.add_argument("--max-concurrent", type=int, help="requests in flight at once (0 = none)")
    p.add_argument("--gpu-limit", type=int, help="GPUs for deployments (0 = none)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("projects", help="manage projects (tenants)",
                       description="Projects own API keys and have members, a model "
                       "allow-list and quotas.")
    ps = p.add_subparsers(dest="projects_command", metavar="ACTION", required=True)

    c = ps.add_parser("create", help="create a project", description="Create a project.")
    add_common(c)
    c.add_argument("id", help="project id: lower-case letters, digits, '_' or '-'")
    c.add_argument("--name", default="")
    c.add_argument("--description", default="")
    _quota_args(c)
    c.set_defaults(func=create)

    s = ps.add_parser("set", help="change a project's allow-list or quotas",
                      description="Change a project's model allow-list or quotas.")
    add_common(s)
    s.add_argument("id")
    _quota_args(s)
    s.set_defaults(func=set_)

    ls = ps.add_parser("list", help="list projects", description="List projects.")
    add_common(ls)
    ls.set_defaults(func=list_)

    am = ps.add_parser("add-member", help="add a user to a project",
                       description="Add a user to a project, or change their project role.")
    add_common(am)
    am.add_argument("id", help="project id")
    am.add_argument("username")
    am.add_argument("--role", default="developer", choices=list(rbac.PROJECT_ROLES))
    am.set_defaults(func=add_member)

    rm = ps.add_parser("remove-member", help="remove a user from a project",
                       description="Remove a user from a project.")
    add_common(rm)
    rm.add_argument("id")
    rm.add_argument("username")
    rm.set_defaults(func=remove_member)

    mb = ps.add_parser("members", help="list a project's members",
                       description="List a project's members.")
    add_common(mb)
    mb.add_argument("id")
    mb.set_defaults(func=members)


def create(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        project = await projects.create_project(store, projects.Project(
            id=args.id, name=args.name or args.id, description=args.description,
            models=csv_list(args.models), tokens_per_day=args.tokens_per_day or None,
            tokens_per_month=args.tokens_per_month or None, rpm=args.rpm or None,
            max_concurrent=args.max_concurrent or None, gpu_limit=args.gpu_limit or None),
            actor=cli_actor())
        print_json(project) if args.json else print(f"created project {project.id}")
        return 0
    return run_with_store(args, body)


def set_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        change = projects.ProjectChange(
            models=csv_list(args.models) if args.models is not None else None,
            tokens_per_day=args.tokens_per_day, tokens_per_month=args.tokens_per_month,
            rpm=args.rpm, max_concurrent=args.max_concurrent, gpu_limit=args.gpu_limit)
        project = await projects.update_project(store, args.id, change, actor=cli_actor())
        print_json(project) if args.json else print(f"project {project.id} changed")
        return 0
    return run_with_store(args, body)


def list_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        found = await projects.list_projects(store)
        if args.json:
            print_json(found)
            return 0
        print_table(["id", "name", "models", "tokens/day", "tokens/month", "rpm", "concurrent"],
                    [(p.id, p.name, ",".join(p.models) or "all", p.tokens_per_day,
                      p.tokens_per_month, p.rpm, p.max_concurrent) for p in found])
        return 0
    return run_with_store(args, body)


def add_member(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        user = await users.resolve_user(store, args.username)
        member = await projects.add_member(store, args.id, user, args.role, actor=cli_actor())
        print_json(member) if args.json else print(
            f"{user.username} is {member.role} in {args.id}")
        return 0
    return run_with_store(args, body)


def remove_member(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        user = await users.resolve_user(store, args.username)
        await projects.remove_member(store, args.id, user.id, actor=cli_actor())
        print_json({"removed": user.username}) if args.json else print(
            f"{user.username} removed from {args.id}")
        return 0
    return run_with_store(args, body)


def members(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        await projects.get_project(store, args.id)
        found = await projects.list_members(store, args.id)
        if args.json:
            print_json(found)
            return 0
        print_table(["username", "role"], [(m.username, m.role) for m in found])
        return 0
    return run_with_store(args, body)

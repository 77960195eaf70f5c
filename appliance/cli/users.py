"""`appliance users`: local accounts (works while the server runs) and the permission table."""

from __future__ import annotations

import argparse
import sys

from appliance.cli.common import add_common, print_json, print_table, run_with_store
from appliance.identity import rbac, users
from appliance.identity.audit import cli_actor
from appliance.identity.passwords import generate_password
from appliance.kernel.errors import BadRequest
from appliance.settings import Settings
from appliance.store.state import StateStore


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("users", help="manage user accounts",
                       description="Create, list, disable and reset user accounts.")
    us = p.add_subparsers(dest="users_command", metavar="ACTION", required=True)

    c = us.add_parser("create", help="create a local account",
                      description="Create a local account. Without --password-stdin a "
                      "one-time password is printed, to be changed at first sign-in.")
    add_common(c)
    c.add_argument("--username", required=True)
    c.add_argument("--role", default="viewer", choices=list(rbac.GLOBAL_ROLES))
    c.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    c.add_argument("--display-name", default="")
    c.add_argument("--email", default="")
    c.set_defaults(func=create)

    ls = us.add_parser("list", help="list accounts", description="List user accounts.")
    add_common(ls)
    ls.set_defaults(func=list_)

    for name, helptext in (("disable", "disable an account (ends its sessions)"),
                           ("enable", "enable a disabled account")):
        d = us.add_parser(name, help=helptext, description=helptext.capitalize() + ".")
        add_common(d)
        d.add_argument("username")
        d.set_defaults(func=disable if name == "disable" else enable)

    r = us.add_parser("reset-password", help="set a new password the user must change",
                      description="Reset a password: a one-time password is printed (or read "
                      "with --password-stdin); the user must change it at sign-in.")
    add_common(r)
    r.add_argument("username")
    r.add_argument("--password-stdin", action="store_true")
    r.set_defaults(func=reset)

    sr = us.add_parser("set-role", help="change an account's global role",
                       description="Change an account's global role.")
    add_common(sr)
    sr.add_argument("username")
    sr.add_argument("role", choices=list(rbac.GLOBAL_ROLES))
    sr.set_defaults(func=set_role)

    pm = us.add_parser("permissions", help="print the permission table",
                       description="Print roles and the permission of every /api route "
                       "(--markdown writes docs/permissions.md's content).")
    pm.add_argument("--markdown", action="store_true")
    pm.set_defaults(func=permissions)


def _stdin_password() -> str:
    line = sys.stdin.readline().rstrip("\n")
    if not line:
        raise BadRequest("no password on standard input", param="password")
    return line


def create(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        password = _stdin_password() if args.password_stdin else generate_password()
        user = await users.create_user(
            store, username=args.username, role=args.role, password=password,
            display_name=args.display_name, email=args.email, actor=cli_actor(),
            must_change_password=not args.password_stdin)
        if args.json:
            out = {"user": user, "one_time_password": None if args.password_stdin else password}
            print_json(out)
        elif args.password_stdin:
            print(f"created {user.username} ({user.role})")
        else:
            print(f"created {user.username} ({user.role}); one-time password (change at "
                  f"first sign-in):\n{password}")
        return 0
    return run_with_store(args, body)


def list_(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        found = await users.list_users(store)
        if args.json:
            print_json(found)
            return 0
        print_table(["id", "username", "role", "source", "state"], [
            (u.id, u.username, u.role, u.source, "disabled" if u.disabled else "active")
            for u in found])
        return 0
    return run_with_store(args, body)


def _set_disabled(args: argparse.Namespace, disabled: bool) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        user = await users.resolve_user(store, args.username)
        user = await users.update_user(store, user, actor=cli_actor(), disabled=disabled)
        print_json(user) if args.json else print(
            f"{user.username} {'disabled' if disabled else 'enabled'}")
        return 0
    return run_with_store(args, body)


def disable(args: argparse.Namespace) -> int:
    return _set_disabled(args, True)


def enable(args: argparse.Namespace) -> int:
    return _set_disabled(args, False)


def reset(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        user = await users.resolve_user(store, args.username)
        given = _stdin_password() if args.password_stdin else None
        new = await users.reset_password(store, user, actor=cli_actor(), password=given)
        if args.json:
            print_json({"user": user.username, "one_time_password": None if given else new})
        else:
            print(f"password of {user.username} reset" + ("" if given else f":\n{new}"))
        return 0
    return run_with_store(args, body)


def set_role(args: argparse.Namespace) -> int:
    async def body(store: StateStore, settings: Settings) -> int:
        user = await users.resolve_user(store, args.username)
        user = await users.update_user(store, user, actor=cli_actor(), role=args.role)
        print_json(user) if args.json else print(f"{user.username} is now {user.role}")
        return 0
    return run_with_store(args, body)


def permissions(args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(rbac.permissions_markdown())
        return 0
    print_table(["method", "path", "permission", "scope"],
                [(r.method, r.path, r.permission, r.scope) for r in rbac.ROUTE_RULES])
    return 0

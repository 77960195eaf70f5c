"""The `appliance` command line: one sub-command group per module in this package.

Each module exposes ``register(subparsers)``; the parser it adds sets ``func`` to a callable
taking the parsed namespace and returning the process exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown in --help.
COMMAND_MODULES = (
    "serve",
    "engine",
    "keys",
    "users",
    "projects",
    "audit",
    "secrets",
    "routes",
    "models",
    "bundle",
    "sim",
    "hosts",
    "install",
    "clusters",
    "doctor",
    "service",
    "upgrade",
)

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2


class _VersionAction(argparse.Action):
    """``--version``: computed only when asked (a checkout runs ``git``)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from appliance.buildinfo import version_line

        print(version_line())
        parser.exit()


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the top-level parser with every command group (or just ``only``) registered."""
    parser = argparse.ArgumentParser(
        prog="appliance",
        description="Foundry Appliance: an air-gapped AI platform in one process.",
    )
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print version, build date and git revision, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES if only is None else (only,):
        module = importlib.import_module(f"appliance.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `appliance` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Engine workers start often and on the serving path: skip the other command modules.
    parser = build_parser(only="engine" if argv[:1] == ["engine"] else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

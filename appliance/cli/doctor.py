"""`appliance doctor`: check that this host can run the appliance, offline."""

from __future__ import annotations

import argparse

import msgspec

from appliance.cli.common import add_common, fail, print_json, print_table, settings_from
from appliance.cli.doctor_checks import Check, run_checks
from appliance.kernel.errors import ConfigError


class DoctorReport(msgspec.Struct, frozen=True):
    """What ``--json`` prints."""

    ok: bool
    checks: list[Check]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "doctor", help="check this host: data dir, disk, port, CPU, GPU, offline",
        description="Check that this host can run the appliance: the data directory is "
        "writable, there is free disk, the listen port is free, the CPU runs the built-in "
        "llama.cpp, which GPUs are visible, the starter bundle is there, and that nothing is "
        "configured to reach the internet. Exit 0 when nothing failed, 1 otherwise.")
    add_common(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="address serve would listen on "
                   "(default from the config, or 127.0.0.1:8080)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args, listen=args.listen)
    except ConfigError as exc:
        return fail(exc.message, 2)
    checks = run_checks(settings)
    report = DoctorReport(ok=all(c.status != "fail" for c in checks), checks=checks)
    if args.json:
        print_json(report)
    else:
        print_table(["check", "status", "detail"], [(c.name, c.status, c.detail) for c in checks])
        counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "fail")}
        print(f"\n{counts['ok']} ok, {counts['warn']} warning(s), {counts['fail']} failed")
    return 0 if report.ok else 1

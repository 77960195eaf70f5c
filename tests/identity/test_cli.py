"""`appliance users|projects|audit` against a data dir."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import appliance_cmd


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(appliance_cmd(*args), capture_output=True, text=True, input=stdin)


def test_users_lifecycle(tmp_path: Path) -> None:
    d = ("--data-dir", str(tmp_path))
    made = _run("users", "create", *d, "--username", "carol", "--role", "developer",
                "--password-stdin", "--json", stdin="carols-password-1\n")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["one_time_password"] is None
    otp = _run("users", "create", *d, "--username", "dave", "--json")
    assert len(json.loads(otp.stdout)["one_time_password"]) >= 10
    dup = _run("users", "create", *d, "--username", "carol", "--password-stdin",
               stdin="another-password\n")
    assert dup.returncode != 0 and "exists" in dup.stderr
    bad = _run("users", "create", *d, "--username", "x'--", "--password-stdin",
               stdin="another-password\n")
    assert bad.returncode == 2
    assert _run("users", "disable", *d, "carol").returncode == 0
    listed = json.loads(_run("users", "list", *d, "--json").stdout)
    assert {u["username"]: u["disabled"] for u in listed} == {"carol": True, "dave": False}
    reset = _run("users", "reset-password", *d, "dave", "--json")
    assert json.loads(reset.stdout)["one_time_password"]
    assert _run("projects", "create", "ml", *d).returncode == 0
    assert _run("projects", "add-member", "ml", "dave", "--role", "admin", *d).returncode == 0
    members = json.loads(_run("projects", "members", "ml", *d, "--json").stdout)
    assert [(m["username"], m["role"]) for m in members] == [("dave", "admin")]
    actions = [e["action"] for e in json.loads(_run("audit", "list", *d, "--json").stdout)]
    assert {"user.create", "user.update", "user.password_reset", "project.create",
            "project.member_add"} <= set(actions)
    assert _run("audit", "verify", *d).returncode == 0


def test_permissions_markdown() -> None:
    out = _run("users", "permissions", "--markdown")
    assert "| GET | `/api/keys` | `keys.read` | project |" in out.stdout

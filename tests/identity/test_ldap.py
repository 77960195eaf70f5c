"""LDAP sign-in against a real OpenLDAP slapd started by the test (Debian slapd, ldap-utils)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import free_port
from tests.identity.conftest import services

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
INSTALL = "apt-get install -y slapd ldap-utils"

DATA = f"""
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: uid=alice,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: alice
cn: Alice Admin
sn: Admin
mail: alice@example.org
userPassword: alice-password

dn: uid=bob,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: bob
cn: Bob Builder
sn: Builder
userPassword: bob-password

dn: uid=carol,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: carol
cn: Carol Nogroup
sn: Nogroup
userPassword: carol-password

dn: cn=appliance-admins,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: appliance-admins
member: uid=alice,ou=people,{SUFFIX}

dn: cn=ml-devs,ou=groups,{SUFFIX}
objectClass: groupOfNames
cn: ml-devs
member: uid=alice,ou=people,{SUFFIX}
member: uid=bob,ou=people,{SUFFIX}
"""


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away slapd on a loopback port with three users and two groups."""
    binary = shutil.which("slapd") or "/usr/sbin/slapd"
    if not Path(binary).exists() or not shutil.which("ldapadd"):
        pytest.fail(f"OpenLDAP slapd and ldap-utils are needed: {INSTALL}")
    root = tmp_path_factory.mktemp("slapd")
    (root / "db").mkdir()
    conf = root / "slapd.conf"
    conf.write_text(f"""
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {root}/slapd.pid
database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PW}
directory {root}/db
access to attrs=userPassword by self read by anonymous auth by * none
access to * by * read
""")
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "-f", str(conf), "-h", f"{url}/", "-d", "0"],
                            stdout=subprocess.DEVNULL, stderr=(root / "log").open("wb"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            break
        if proc.poll() is not None:
            pytest.fail("slapd exited: " + (root / "log").read_text())
        time.sleep(0.1)
    subprocess.run(["ldapadd", "-x", "-H", url, "-D", ROOT_DN, "-w", ROOT_PW],
                   input=DATA, text=True, check=True, capture_output=True)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def ldap_client(appliance: Any, slapd: str, monkeypatch: pytest.MonkeyPatch
                      ) -> TestClient[Any, Any]:
    monkeypatch.setenv("APPLIANCE_ADMIN_PASSWORD", "admin-password-123")
    monkeypatch.setenv("TEST_LDAP_BIND_PW", ROOT_PW)
    client: TestClient[Any, Any] = await appliance({"identity": {"ldap": {
        "enabled": True, "url": slapd, "bind_dn": ROOT_DN,
        "bind_password_env": "TEST_LDAP_BIND_PW",
        "user_base": f"ou=people,{SUFFIX}", "group_base": f"ou=groups,{SUFFIX}",
        "group_filter": "(member={dn})",
        "role_map": {"appliance-admins": "admin", "ml-devs": "developer"}}}})
    return client


async def _login(client: TestClient[Any, Any], user: str, password: str) -> Any:
    return await client.post("/api/auth/login", json={"username": user, "password": password})


async def test_ldap_sign_in_maps_groups_to_roles(ldap_client: TestClient[Any, Any]) -> None:
    resp = await _login(ldap_client, "alice", "alice-password")
    assert resp.status == 200, await resp.text()
    user = (await resp.json())["user"]
    assert (user["role"], user["source"], user["email"]) == ("admin", "ldap",
                                                            "alice@example.org")
    assert user["display_name"] == "Alice Admin"
    ldap_client.session.cookie_jar.clear()
    resp = await _login(ldap_client, "bob", "bob-password")
    assert (await resp.json())["user"]["role"] == "developer"
    ldap_client.session.cookie_jar.clear()
    # in no mapped group and no default role: refused
    assert (await _login(ldap_client, "carol", "carol-password")).status == 401
    # the local admin still signs in with the local password
    assert (await _login(ldap_client, "admin", "admin-password-123")).status == 200


async def test_ldap_wrong_and_empty_password(ldap_client: TestClient[Any, Any]) -> None:
    assert (await _login(ldap_client, "alice", "wrong")).status == 401
    assert (await _login(ldap_client, "alice", "")).status == 401  # no anonymous bind
    assert (await _login(ldap_client, "nobody", "x")).status == 401
    rows = await services(ldap_client).store.fetchall(
        "SELECT detail FROM audit_log WHERE action='auth.login' AND outcome='failure'")
    assert any("wrong password" in r[0] for r in rows)
    assert any("empty password" in r[0] for r in rows)


async def test_ldap_filter_injection(ldap_client: TestClient[Any, Any]) -> None:
    for name in ("*", "alice)(uid=*", "*)(|(uid=*", "alice*", "al\\2a", "(uid=alice)"):
        resp = await _login(ldap_client, name, "alice-password")
        assert resp.status == 401, name
    # escaping is also applied below the name check
    from appliance.identity.ldap import DirectoryError

    auth = services(ldap_client).identity.ldap
    with pytest.raises(DirectoryError):
        auth.authenticate("*", "alice-password")

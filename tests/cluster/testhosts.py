"""Real SSH hosts for tests: OpenSSH ``sshd`` in its own network namespace and overlay root.

The recipe of ../shared/DESIGN.md: ``ip netns add``, a veth pair with a private /30 in
10.250.0.0/16 (the appliance's end in the root namespace, the host's end as ``eth0`` in its
namespace), then in the namespace ``unshare --mount --propagation private --pid --fork --uts``
→ an overlay of ``/`` (upper and work dirs in the test's temp dir) → ``chroot merged sshd -D``
with its own host key, ``StrictModes no`` and the test's public key. Files a test wants on the
host (fake ``nvidia-smi`` on PATH, users, sudoers) go into the upper dir before the mount.

Used by tests/cluster and bench/hosts_preflight.py. Needs root, ``ip`` (iproute2), ``unshare``
and ``sshd`` (openssh-server); a missing tool fails with the install command.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

INSTALL = "apt-get install -y openssh-server openssh-client iproute2 util-linux sudo"
LOCK_DIR = Path("/run/foundry-testhosts")
TEST_NET = "10.250.0.0/16"


def require_tools() -> None:
    """Fail (not skip) with the install command when something the hosts need is missing."""
    missing = [t for t in ("ip", "unshare", "ssh-keygen", "nsenter")
               if shutil.which(t) is None]
    if not Path("/usr/sbin/sshd").exists():
        missing.append("sshd")
    if not Path("/usr/bin/sudo").exists():
        missing.append("sudo")
    if missing:
        raise RuntimeError(f"test hosts need {', '.join(missing)}; install with: {INSTALL}")
    if os.geteuid() != 0:
        raise RuntimeError("test hosts need root (network namespaces and mounts); "
                           "run the tests as root (CI does)")


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    """An Ed25519 key pair; returns the private key path and the public key line."""
    path = directory / name
    if not path.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path))
    return path, (directory / f"{name}.pub").read_text().strip()


def _claim_block() -> int:
    """A free /30 block index, claimed with an O_EXCL file (parallel test runs share it)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        idx = random.randrange(1, 16000)
        path = LOCK_DIR / str(idx)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError, ValueError):
                pid = int(path.read_text() or "0")
                if pid and not Path(f"/proc/{pid}").exists():
                    path.unlink()
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return idx
    raise RuntimeError("no free test-host address block")


class TestHost:
    """One host: ``address`` inside its namespace, reachable from the root namespace."""

    __test__ = False

    def __init__(self, name: str, root: Path, idx: int, authorized_key: str) -> None:
        self.name = name
        self.dir = root
        self.idx = idx
        base = idx * 4
        self.gateway = f"10.250.{base // 256}.{base % 256 + 1}"
        self.address = f"10.250.{base // 256}.{base % 256 + 2}"
        self.netns = f"fa-h{idx}"
        self.veth = f"fav{idx}"
        self.port = 22
        self.upper = root / "upper"
        self.merged = root / "merged"
        self.authorized_key = authorized_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key_pub = ""

    # --- files on the host's root, before it starts ----------------------------------------

    def put(self, path: str, content: str | bytes, mode: int = 0o644) -> None:
        """Write a file into the host's own root (its overlay upper dir)."""
        target = self.upper / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        target.write_bytes(content)
        target.chmod(mode)

    def add_user(self, user: str, password: str, *, sudo: str = "password") -> None:
        """A login user with a password; ``sudo`` is 'password', 'nopasswd' or 'none'."""
        hashed = _run("openssl", "passwd", "-6", password).stdout.strip()
        uid = 2000 + len(user)
        for name, line in (("passwd", f"{user}:x:{uid}:{uid}::/home/{user}:/bin/sh"),
                           ("group", f"{user}:x:{uid}:"),
                           ("shadow", f"{user}:{hashed}:19000:0:99999:7:::")):
            current = (self.upper / "etc" / name)
            base = current.read_text() if current.exists() else Path(f"/etc/{name}").read_text()
            self.put(f"/etc/{name}", base.rstrip("\n") + "\n" + line + "\n",
                     0o640 if name == "shadow" else 0o644)
        (self.upper / "home" / user).mkdir(parents=True, exist_ok=True)
        os.chown(self.upper / "home" / user, uid, uid)
        if sudo != "none":
            rule = "NOPASSWD: ALL" if sudo == "nopasswd" else "ALL"
            self.put(f"/etc/sudoers.d/{user}", f"{user} ALL=(ALL) {rule}\n", 0o440)

    def put_host_key(self, private_key: Path) -> None:
        """Use this host key instead of the generated one (a 'reinstalled' host)."""
        shutil.copy(private_key, self.dir / "ssh_host_ed25519_key")
        shutil.copy(f"{private_key}.pub", self.dir / "ssh_host_ed25519_key.pub")

    # --- life cycle ---------------------------------------------------------------------------

    def start(self, timeout: float = 20) -> None:
        for sub in ("upper", "work", "merged"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        key = self.dir / "ssh_host_ed25519_key"
        if not key.exists():
            _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        self.host_key_pub = (self.dir / "ssh_host_ed25519_key.pub").read_text().strip()
        (self.dir / "authorized_keys").write_text(self.authorized_key + "\n")
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {self.address}\nHostKey {key}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'} .ssh/authorized_keys\n"
            "PermitRootLogin yes\nStrictModes no\nUsePAM no\nPasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\nPidFile none\nUseDNS no\n"
            "MaxStartups 100:30:200\nMaxSessions 32\nLogLevel ERROR\n"
            "Subsystem sftp internal-sftp\n")
        if not (self.upper / "root/.bashrc").exists():
            # The overlay's lower dir is this machine's /, so root's shell would source the
            # developer's ~/.bashrc (pyenv init, ...: ~0.2 s of CPU) before every command sshd
            # runs; a freshly installed host's .bashrc returns at once when not interactive.
            self.put("/root/.bashrc", "case $- in *i*) ;; *) return ;; esac\n")
        self.put("/etc/hostname", self.name + "\n")
        hosts = Path("/etc/hosts").read_text() if not (self.upper / "etc/hosts").exists() \
            else (self.upper / "etc/hosts").read_text()
        self.put("/etc/hosts", hosts.rstrip("\n") + f"\n{self.address} {self.name}\n")
        self._network()
        script = (
            f"set -e; mount -t overlay overlay -o lowerdir=/,upperdir={self.upper},"
            f"workdir={self.dir / 'work'} {self.merged}; "
            f"mount -t proc proc {self.merged}/proc; mount --rbind /dev {self.merged}/dev; "
            f"mount -t sysfs sysfs {self.merged}/sys || true; "
            f"mount -t tmpfs tmpfs {self.merged}/run; mkdir -p {self.merged}/run/sshd; "
            f"hostname {self.name}; "
            f"exec chroot {self.merged} /usr/sbin/sshd -D -e -f {config}")
        log = (self.dir / "sshd.log").open("wb")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--propagation",
             "private", "--pid", "--fork", "--kill-child", "--uts", "sh", "-c", script],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd of {self.name} exited: "
                                   f"{(self.dir / 'sshd.log').read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.address, self.port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"sshd of {self.name} did not answer within {timeout}s")

    def _network(self) -> None:
        self._teardown_network()
        _run("ip", "netns", "add", self.netns)
        _run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns",
             self.netns)
        _run("ip", "addr", "add", f"{self.gateway}/30", "dev", self.veth)
        _run("ip", "link", "set", self.veth, "up")
        for cmd in (("ip", "addr", "add", f"{self.address}/30", "dev", "eth0"),
                    ("ip", "link", "set", "eth0", "up"), ("ip", "link", "set", "lo", "up"),
                    ("ip", "route", "add", "default", "via", self.gateway)):
            _run("ip", "netns", "exec", self.netns, *cmd)

    def link_down(self) -> None:
        """Cut the host off (its cable pulled): the appliance's end of the veth goes down."""
        _run("ip", "link", "set", self.veth, "down")

    def link_up(self) -> None:
        _run("ip", "link", "set", self.veth, "up")

    def exec(self, command: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (its namespaces and root), bypassing SSH."""
        if self.proc is None:
            raise RuntimeError("host not started")
        return _run("nsenter", "-t", str(self._init_pid()), "-m", "-p", "-n", "-u", "--", "chroot",
                    str(self.merged), "sh", "-c", command, check=False)

    def _init_pid(self) -> int:
        """The host's PID 1 (sshd), seen from the root namespace."""
        assert self.proc is not None
        kids = _run("pgrep", "-P", str(self.proc.pid), check=False).stdout.split()
        return int(kids[0]) if kids else self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        self._teardown_network()

    def _teardown_network(self) -> None:
        _run("ip", "link", "del", self.veth, check=False)
        _run("ip", "netns", "del", self.netns, check=False)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            (LOCK_DIR / str(self.idx)).unlink()


class HostFarm:
    """Creates hosts on demand and tears all of them down."""

    def __init__(self, root: Path) -> None:
        require_tools()
        # Addresses of the test net must never leave this machine: when a host's link is down
        # (or not made yet) its /30 route is gone, and without this catch-all the packets would
        # follow the default route out to the real network. Longer prefixes (the /30s of live
        # hosts) still win; everything else in the test net fails at once with EHOSTUNREACH.
        _run("ip", "route", "replace", "unreachable", TEST_NET)
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.client_key, self.client_pub = keypair(root)
        self.hosts: list[TestHost] = []

    def create(self, name: str) -> TestHost:
        """A host not yet started: put files, then ``start()``."""
        host = TestHost(name, self.root / name, _claim_block(), self.client_pub)
        self.hosts.append(host)
        return host

    def start(self, *names: str) -> list[TestHost]:
        hosts = [self.create(n) for n in names]
        for h in hosts:
            h.start()
        return hosts

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(Exception):
                host.stop()
            host.release()


@contextlib.contextmanager
def host_farm(root: Path) -> Iterator[HostFarm]:
    farm = HostFarm(root)
    try:
        yield farm
    finally:
        farm.close()

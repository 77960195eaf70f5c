"""The SSH executor: one asyncssh connection per host, bounded channels, verified host keys.

- One connection per host, opened on first use and reused by every step of every run in this
  process; at most ``channels_per_host`` commands or transfers at once on it.
- A global limit on concurrent connects (a site of 200 hosts must not open 200 handshakes at
  once), keepalive so a dead link is noticed, timeouts on connect, login and every command.
- Host keys are checked against the appliance's own known_hosts (``host_keys`` table): an
  unknown key is refused and recorded so the operator can see and accept it; a changed key is
  refused loudly, both fingerprints in the message.
- Uploads go over SFTP to a temporary name, are hashed with ``sha256sum`` on the far side and
  moved into place only when the digest matches.
- Commands run under ``sudo`` when the login user is not root (``-S`` with the login password
  when the host uses one, else ``-n``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shlex
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import msgspec

from appliance.cluster.inventory import Credentials
from appliance.kernel.errors import ApplianceError

log = logging.getLogger(__name__)


class SshError(ApplianceError, ConnectionError):
    """Any failure to reach or use a host over SSH."""

    status = 502
    code = "ssh_error"

    def __init__(self, message: str, *, host: str = "", code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.host = host


class HostUnreachable(SshError):
    code = "host_unreachable"


class AuthFailed(SshError, PermissionError):
    code = "ssh_auth_failed"


class HostKeyUnknown(SshError):
    """The host offered a key nobody accepted yet; ``fingerprint`` is the one to show."""

    code = "host_key_unknown"

    def __init__(self, message: str, *, host: str, fingerprint: str, public_key: str) -> None:
        super().__init__(message, host=host)
        self.fingerprint = fingerprint
        self.public_key = public_key


class HostKeyChanged(SshError):
    """The host offered a key different from the accepted one: possible interception."""

    code = "host_key_changed"

    def __init__(self, message: str, *, host: str, expected: str, offered: str) -> None:
        super().__init__(message, host=host)
        self.expected = expected
        self.offered = offered


class CommandTimeout(SshError, TimeoutError):
    code = "command_timeout"


class UploadMismatch(SshError):
    code = "upload_digest_mismatch"


class SshOptions(msgspec.Struct, frozen=True, kw_only=True):
    connect_limit: int = 16
    channels_per_host: int = 4
    connect_timeout_s: float = 10.0
    login_timeout_s: float = 20.0
    command_timeout_s: float = 300.0
    keepalive_s: float = 5.0
    keepalive_count_max: int = 3


class HostTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where and as whom to log in; ``known_key`` is the accepted host key (OpenSSH text)."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    credentials: Credentials
    known_key: str | None = None
    jump: HostTarget | None = None


class CommandResult(msgspec.Struct, frozen=True, kw_only=True):
    command: str
    exit_status: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


OfferedKeyHook = Callable[[str, str, str], Awaitable[None]]


def key_text(key: asyncssh.SSHKey) -> str:
    """A public key as one OpenSSH line without comment."""
    return " ".join(bytes(key.export_public_key("openssh")).decode().split()[:2])


def fingerprint(key: asyncssh.SSHKey) -> str:
    return str(key.get_fingerprint("sha256"))


def _same_key(a: str, b: str) -> bool:
    return a.split()[:2] == b.split()[:2]


class _Client(asyncssh.SSHClient):
    """Checks the host key against the accepted one and notices a dropped connection."""

    def __init__(self, name: str, known_key: str | None) -> None:
        self.name = name
        self.known_key = known_key
        self.offered: asyncssh.SSHKey | None = None
        self.lost = False

    def validate_host_public_key(self, host: str, addr: str, port: int,
                                 key: asyncssh.SSHKey) -> bool:
        if self.known_key and _same_key(key_text(key), self.known_key):
            return True
        self.offered = key
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True


class HostSession:
    """One logged-in connection to one host, shared by every step that runs there."""

    def __init__(self, target: HostTarget, conn: asyncssh.SSHClientConnection, client: _Client,
                 options: SshOptions) -> None:
        self.target = target
        self.conn = conn
        self._client = client
        self.options = options
        self._channels = asyncio.Semaphore(options.channels_per_host)
        self.is_root = target.user == "root"

    @property
    def alive(self) -> bool:
        return not self._client.lost

    def _wrap(self, command: str, sudo: bool) -> tuple[str, str]:
        """The command as sent and the stdin prefix sudo needs."""
        if self.is_root or not sudo:
            return command, ""
        quoted = shlex.quote(command)
        if self.target.credentials.password:
            return f"sudo -S -p '' -- sh -c {quoted}", self.target.credentials.password + "\n"
        return f"sudo -n -- sh -c {quoted}", ""

    async def run(self, command: str, *, sudo: bool = True, timeout_s: float | None = None,
                  input: str | None = None, check: bool = False) -> CommandResult:
        """Run a shell command; ``check`` raises SshError on a non-zero exit."""
        wrapped, prefix = self._wrap(command, sudo)
        stdin = prefix + (input or "") if (prefix or input) else None
        limit = timeout_s if timeout_s is not None else self.options.command_timeout_s
        started = time.monotonic()
        async with self._channels:
            try:
                done = await self.conn.run(wrapped, input=stdin, check=False, timeout=limit)
            except asyncssh.TimeoutError:
                raise CommandTimeout(f"{self.target.name}: command timed out after {limit:g}s: "
                                     f"{command[:200]}", host=self.target.name) from None
            except (asyncssh.Error, OSError) as exc:
                raise HostUnreachable(f"{self.target.name}: connection failed while running a "
                                      f"command: {exc}", host=self.target.name) from None
        result = CommandResult(
            command=command,
            exit_status=done.exit_status if done.exit_status is not None else 255,
            stdout=_text(done.stdout), stderr=_text(done.stderr),
            duration_s=time.monotonic() - started)
        if check and not result.ok:
            raise SshError(f"{self.target.name}: `{command[:200]}` exited {result.exit_status}: "
                           f"{(result.stderr or result.stdout).strip()[-500:]}",
                           host=self.target.name, code="command_failed")
        return result

    async def remote_sha256(self, path: str) -> str | None:
        """The sha256 of a file on the host, or None when it does not exist."""
        res = await self.run(f"sha256sum -- {shlex.quote(path)} 2>/dev/null")
        if not res.ok or not res.stdout.strip():
            return None
        return res.stdout.split()[0]

    async def upload(self, local: Path, remote: str, *, mode: int = 0o644,
                     digest: str | None = None) -> bool:
        """Copy a file to the host, verified by sha256 there; False when already identical."""
        if digest is None:
            digest = await asyncio.to_thread(file_sha256, local)
        if await self.remote_sha256(remote) == digest:
            await self.run(f"chmod {mode:o} -- {shlex.quote(remote)}")
            return False
        await self._put(remote, digest, mode, lambda sftp, tmp: sftp.put(str(local), tmp))
        return True

    async def write_bytes(self, data: bytes, remote: str, *, mode: int = 0o644) -> bool:
        """Write ``data`` as a file on the host (verified); False when already identical."""
        digest = hashlib.sha256(data).hexdigest()
        if await self.remote_sha256(remote) == digest:
            return False

        async def put(sftp: asyncssh.SFTPClient, tmp: str) -> None:
            async with sftp.open(tmp, "wb") as out:
                await out.write(data)

        await self._put(remote, digest, mode, put)
        return True

    async def _put(self, remote: str, digest: str,
                   mode: int, put: Callable[[asyncssh.SFTPClient, str], Awaitable[Any]]) -> None:
        name = self.target.name
        token = secrets.token_hex(6)
        parent = os.path.dirname(remote) or "."
        if self.is_root:
            await self.run(f"mkdir -p -- {shlex.quote(parent)}", check=True)
            tmp = f"{remote}.fa-upload-{token}"
        else:
            tmp = f"/tmp/.fa-upload-{token}"
        try:
            async with self._channels:
                try:
                    async with self.conn.start_sftp_client() as sftp:
                        await put(sftp, tmp)
                except (asyncssh.Error, OSError) as exc:
                    raise SshError(f"{name}: upload to {remote} failed: {exc}",
                                   host=name, code="upload_failed") from None
            got = (await self.run(f"sha256sum -- {shlex.quote(tmp)}", sudo=False,
                                  check=True)).stdout.split()[0]
            if got != digest:
                raise UploadMismatch(f"{name}: {remote} arrived with sha256 {got}, sent {digest}",
                                     host=name)
            q_tmp, q_remote = shlex.quote(tmp), shlex.quote(remote)
            if self.is_root:
                await self.run(f"chmod {mode:o} -- {q_tmp} && mv -f -- {q_tmp} {q_remote}",
                               check=True)
            else:
                await self.run(f"mkdir -p -- {shlex.quote(parent)} && "
                               f"install -m {mode:o} -- {q_tmp} {q_remote}", check=True)
        finally:
            with contextlib.suppress(SshError):
                await self.run(f"rm -f -- {shlex.quote(tmp)}", sudo=False)

    async def close(self) -> None:
        self.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.conn.wait_closed(), 2)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class SshPool:
    """Connections of this process, one per host; ``session()`` connects on first use."""

    def __init__(self, options: SshOptions | None = None, *,
                 on_offered_key: OfferedKeyHook | None = None) -> None:
        self.options = options or SshOptions()
        self._connect_slots = asyncio.Semaphore(self.options.connect_limit)
        self._sessions: dict[str, HostSession] = {}
        self._connecting: dict[str, asyncio.Lock] = {}
        self._on_offered_key = on_offered_key

    async def session(self, target: HostTarget) -> HostSession:
        """The live session to ``target.name``, connecting (once) when needed."""
        lock = self._connecting.setdefault(target.name, asyncio.Lock())
        async with lock:
            current = self._sessions.get(target.name)
            if current is not None and current.alive and current.target == target:
                return current
            if current is not None:
                await current.close()
                del self._sessions[target.name]
            session = await self._connect(target)
            self._sessions[target.name] = session
            return session

    async def drop(self, name: str) -> None:
        """Forget a host's connection (after a failure) so the next use reconnects."""
        session = self._sessions.pop(name, None)
        if session is not None:
            await session.close()

    async def _connect(self, target: HostTarget) -> HostSession:
        tunnel = await self.session(target.jump) if target.jump else None
        client = _Client(target.name, target.known_key)
        creds = target.credentials
        try:
            keys = [asyncssh.import_private_key(creds.private_key)] if creds.private_key else []
        except (asyncssh.KeyImportError, ValueError) as exc:
            # a passphrase-protected or damaged key: this host's failure, not the run's
            raise SshError(f"{target.name}: the stored private key cannot be used: {exc}",
                           code="ssh_key_invalid") from None
        opts: dict[str, Any] = {
            "port": target.port, "username": target.user,
            "known_hosts": ([], [], []), "client_keys": keys,
            "password": creds.password or None,
            "agent_path": None, "config": [], "preferred_auth":
                "publickey" if keys else "password,keyboard-interactive",
            "keepalive_interval": self.options.keepalive_s,
            "keepalive_count_max": self.options.keepalive_count_max,
            "connect_timeout": self.options.connect_timeout_s,
            "login_timeout": self.options.login_timeout_s,
        }
        if tunnel is not None:
            opts["tunnel"] = tunnel.conn
        name = target.name
        async with self._connect_slots:
            try:
                conn, _ = await asyncssh.create_connection(lambda: client, target.address,
                                                           **opts)
            except asyncssh.HostKeyNotVerifiable:
                await self._refuse_key(target, client)
                raise  # pragma: no cover - _refuse_key always raises
            except asyncssh.PermissionDenied:
                raise AuthFailed(f"{name}: {target.user}@{target.address} refused the "
                                 f"{'key' if keys else 'password'} (authentication failed)",
                                 host=name) from None
            except TimeoutError:
                raise HostUnreachable(f"{name}: no answer from {target.address}:{target.port} "
                                      f"within {self.options.connect_timeout_s:g}s",
                                      host=name) from None
            except (OSError, asyncssh.Error) as exc:
                raise HostUnreachable(f"{name}: cannot connect to {target.address}:"
                                      f"{target.port}: {exc}", host=name) from None
        log.info("connected to %s (%s@%s:%d)", name, target.user, target.address, target.port)
        return HostSession(target, conn, client, self.options)

    async def _refuse_key(self, target: HostTarget, client: _Client) -> None:
        offered = client.offered
        if offered is None:
            raise HostUnreachable(f"{target.name}: host key could not be verified",
                                  host=target.name)
        text, fp = key_text(offered), fingerprint(offered)
        if self._on_offered_key is not None:
            await self._on_offered_key(target.name, text, fp)
        if target.known_key:
            expected = fingerprint(asyncssh.import_public_key(target.known_key))
            raise HostKeyChanged(
                f"HOST KEY CHANGED for {target.name} ({target.address}:{target.port}): "
                f"accepted {expected}, offered {fp}. Someone may be intercepting the "
                "connection, or the host was reinstalled. Refusing to connect; check the host "
                "and accept the new key explicitly (`appliance hosts accept-key "
                f"{target.name} --fingerprint {fp}`).",
                host=target.name, expected=expected, offered=fp)
        raise HostKeyUnknown(
            f"{target.name}: host key {fp} ({offered.get_algorithm()}) is not accepted yet; "
            f"accept it with `appliance hosts accept-key {target.name} --fingerprint {fp}` "
            "or add the host with --accept-host-key",
            host=target.name, fingerprint=fp, public_key=text)

    async def scan_key(self, address: str, port: int, *,
                       jump: HostTarget | None = None) -> asyncssh.SSHKey:
        """The key a host offers (nothing trusted, no login): what the operator is shown."""
        tunnel = await self.session(jump) if jump else None
        async with self._connect_slots:
            try:
                key = await asyncio.wait_for(
                    asyncssh.get_server_host_key(address, port, tunnel=tunnel.conn
                                                 if tunnel else (), config=[]),
                    self.options.connect_timeout_s)
            except TimeoutError:
                raise HostUnreachable(f"no answer from {address}:{port} within "
                                      f"{self.options.connect_timeout_s:g}s") from None
            except (OSError, asyncssh.Error) as exc:
                raise HostUnreachable(f"cannot connect to {address}:{port}: {exc}") from None
        if key is None:
            raise HostUnreachable(f"{address}:{port} offered no host key")
        return key

    async def close(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

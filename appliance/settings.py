"""Settings: one TOML file plus ``APPLIANCE_*`` environment overrides, validated before binding.

Every setting is declared here, once. Unknown keys in the file or the environment are errors.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import msgspec

from appliance.kernel.errors import ConfigError

ENV_PREFIX = "APPLIANCE_"
# Environment variables with the prefix that are not settings.
ENV_NOT_SETTINGS = {"APPLIANCE_CONFIG", "APPLIANCE_ENGINE_TOKEN", "APPLIANCE_ADMIN_PASSWORD",
                    "APPLIANCE_MASTER_KEY", "APPLIANCE_MASTER_PASSPHRASE"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_data_dir() -> Path:
    """Where state lives when neither --data-dir nor the config names a directory."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "foundry-appliance"


def default_starter_bundle() -> Path:
    """Where `make bundle` puts the starter bundle on this machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "foundry-appliance" / "bundles" / "starter"


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section, frozen=True):
    shutdown_timeout_s: float = 30.0
    max_body_bytes: int = 16 * 1024 * 1024


class AuthSettings(_Section, frozen=True):
    # When false, /v1 answers without an API key (for a closed lab network only).
    required: bool = True
    key_cache_ttl_s: float = 30.0


class EngineSettings(_Section, frozen=True):
    enabled: bool = True
    threads: int = 0  # 0 = half the cores, at least one
    context_tokens: int = 2048
    max_queue: int = 32
    health_interval_s: float = 2.0
    start_timeout_s: float = 60.0
    restart_backoff_max_s: float = 30.0


class GatewaySettings(_Section, frozen=True):
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 120.0
    total_timeout_s: float = 600.0
    retries: int = 2
    retry_backoff_s: float = 0.1
    breaker_failures: int = 5
    breaker_reset_s: float = 30.0


class MetricsSettings(_Section, frozen=True):
    flush_interval_s: float = 0.5
    retention_days: int = 90


class BundleSettings(_Section, frozen=True, kw_only=True):
    # directories polled for bundles to import, e.g. where USB sticks are mounted
    watch_dirs: list[str] = []
    watch_interval_s: float = 5.0


class LdapSettings(_Section, frozen=True):
    """Sign-in against LDAP / Active Directory: search the user, bind as them, map groups."""

    enabled: bool = False
    url: str = ""  # ldap://host:389 or ldaps://host:636
    start_tls: bool = False
    ca_file: str = ""
    bind_dn: str = ""  # service account for the search; empty = anonymous search
    bind_password_env: str = ""  # the service account's password comes from this variable
    user_base: str = ""
    user_filter: str = "(uid={username})"  # sAMAccountName={username} for AD
    group_base: str = ""
    group_filter: str = "(|(member={dn})(uniqueMember={dn}))"
    group_name_attribute: str = "cn"
    role_map: dict[str, str] = {}  # group name -> admin|operator|developer|viewer
    default_role: str = ""  # role of users in no mapped group; empty = refuse them
    timeout_s: float = 5.0


class OidcSettings(_Section, frozen=True):
    """Sign-in with OpenID Connect (authorization code + PKCE), e.g. Keycloak."""

    enabled: bool = False
    issuer: str = ""
    client_id: str = ""
    client_secret_env: str = ""  # confidential clients: the secret comes from this variable
    redirect_uri: str = ""  # https://appliance.example/api/auth/oidc/callback
    scopes: list[str] = msgspec.field(default_factory=lambda: ["openid", "profile", "email"])
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    role_map: dict[str, str] = {}
    default_role: str = ""
    ca_file: str = ""
    timeout_s: float = 10.0


class IdentitySettings(_Section, frozen=True):
    session_idle_s: float = 1800.0
    session_absolute_s: float = 12 * 3600.0
    lockout_failures: int = 5  # failed sign-ins in a row before the account locks
    lockout_s: float = 900.0
    address_failures: int = 20  # failed sign-ins from one address within the window
    address_window_s: float = 300.0
    admin_username: str = "admin"
    ldap: LdapSettings = LdapSettings()
    oidc: OidcSettings = OidcSettings()


class TlsSettings(_Section, frozen=True):
    enabled: bool = False
    cert_file: str = ""  # given certificate chain (PEM); empty = the site CA issues one
    key_file: str = ""
    hostnames: list[str] = []  # extra names for the generated server certificate
    min_version: Literal["1.2", "1.3"] = "1.3"


class ClusterSettings(_Section, frozen=True):
    """Hosts and clusters: the SSH executor's limits and where hosts reach the appliance."""

    connect_limit: int = 16  # concurrent SSH handshakes, all hosts together
    channels_per_host: int = 4  # concurrent commands/transfers on one host's connection
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 300.0
    keepalive_s: float = 5.0
    playbooks_dir: str = ""  # default: the playbooks/ shipped with the appliance
    # how hosts reach this appliance (registry, engine downloads); default: the listen address
    advertise_url: str = ""
    engine_port: int = 8401  # port an engine host serves on
    engine_command: list[str] = []  # default: this program again (`appliance engine`)
    engine_ready_timeout_s: float = 180.0
    # gateway timeouts of engine-host upstreams: a host cut off mid-connection is noticed
    # only by this timeout (TCP would retry for minutes), then the route's next target serves
    engine_connect_timeout_s: float = 3.0
    engine_first_byte_timeout_s: float = 60.0


class UpstreamSettings(_Section, frozen=True, kw_only=True):
    name: str
    kind: Literal["openai", "anthropic"] = "openai"
    base_url: str
    api_key: str = ""
    api_key_env: str = ""
    connect_timeout_s: float | None = None
    first_byte_timeout_s: float | None = None
    total_timeout_s: float | None = None

    def resolved_api_key(self) -> str:
        """The key from the file or, when ``api_key_env`` is set, from that variable."""
        if self.api_key_env:
            return os.environ.get(self.api_key_env, "")
        return self.api_key


class RouteSettings(_Section, frozen=True, kw_only=True):
    model: str
    targets: list[str] = []
    strategy: Literal["least_outstanding", "weighted"] = "least_outstanding"
    weights: list[float] = []
    fallback: list[str] = []


class Settings(_Section, frozen=True):
    data_dir: str = ""
    listen: str = "127.0.0.1:8080"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    starter_bundle: str = ""
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    engine: EngineSettings = EngineSettings()
    gateway: GatewaySettings = GatewaySettings()
    metrics: MetricsSettings = MetricsSettings()
    bundle: BundleSettings = BundleSettings()
    identity: IdentitySettings = IdentitySettings()
    tls: TlsSettings = TlsSettings()
    upstreams: list[UpstreamSettings] = []
    cluster: ClusterSettings = ClusterSettings()
    routes: list[RouteSettings] = []

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser() if self.data_dir else default_data_dir()

    @property
    def starter_bundle_path(self) -> Path:
        if self.starter_bundle:
            return Path(self.starter_bundle).expanduser()
        return default_starter_bundle()

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """``APPLIANCE_LISTEN`` → ``listen``; ``APPLIANCE_ENGINE__THREADS`` → ``engine.threads``."""
    out: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read the TOML file, apply env then command-line overrides, validate everything."""
    environ = dict(os.environ) if environ is None else environ
    if config_file is None and environ.get("APPLIANCE_CONFIG"):
        config_file = Path(environ["APPLIANCE_CONFIG"])
    raw: dict[str, Any] = {}
    if config_file is not None:
        try:
            raw = tomllib.loads(Path(config_file).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {config_file} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from None
    raw = _merge(raw, _env_overrides(environ))
    raw = _merge(raw, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        # strict=False lets environment strings become numbers and booleans.
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        where = f" in {config_file}" if config_file else ""
        raise ConfigError(f"invalid setting{where}: {exc}") from None
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    try:
        settings.host_port  # noqa: B018 - validates the listen address
    except ValueError:
        raise ConfigError(f"listen must be HOST:PORT, got {settings.listen!r}") from None
    names: set[str] = set()
    for upstream in settings.upstreams:
        if not NAME_RE.match(upstream.name) or ":" in upstream.name:
            raise ConfigError(f"upstream name {upstream.name!r} must match {NAME_RE.pattern}")
        if upstream.name in names:
            raise ConfigError(f"upstream {upstream.name!r} is defined twice")
        if not upstream.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"upstream {upstream.name!r}: base_url must be an http(s) URL")
        names.add(upstream.name)
    for route in settings.routes:
        for target in route.targets:
            if target.split(":", 1)[0] not in names:
                raise ConfigError(
                    f"route {route.model!r}: target {target!r} names no upstream "
                    f"(known: {', '.join(sorted(names)) or 'none'})"
                )
        if route.weights and len(route.weights) != len(route.targets):
            raise ConfigError(f"route {route.model!r}: weights must match targets one to one")
        if not route.targets and not route.fallback:
            raise ConfigError(f"route {route.model!r} has neither targets nor fallback")

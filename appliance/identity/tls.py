"""TLS for ``appliance serve --tls``: a site CA and server certificate made on first start.

Files live in ``<data dir>/tls/``: ``ca.pem`` (public, downloadable at ``/api/tls/ca.pem``),
``ca.key`` and ``server.key`` (mode 0600), ``server.pem``. The server certificate is re-issued
when it nears expiry or when the names it must cover change. Given ``tls.cert_file`` and
``tls.key_file`` are used as they are instead. TLS 1.3 only unless ``tls.min_version = "1.2"``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.kernel.errors import ConfigError
from appliance.settings import Settings

TLS_DIR = "tls"
CA_DAYS = 3650
SERVER_DAYS = 397  # what browsers accept for a leaf certificate
RENEW_BEFORE = datetime.timedelta(days=30)


class TlsMaterial:
    """The server's SSL context and, for a site CA, its certificate (PEM) for clients."""

    def __init__(self, context: ssl.SSLContext, ca_pem: bytes | None, cert_path: Path) -> None:
        self.context = context
        self.ca_pem = ca_pem
        self.cert_path = cert_path


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _make_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Foundry Appliance"),
                      x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"Foundry Appliance site CA ({socket.gethostname()})")])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    _write(directory / "ca.key", _key_pem(key), 0o600)
    _write(directory / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not (directory / "ca.pem").exists():
        return _make_ca(directory)
    cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / 'ca.key'} is not an EC private key")
    return cert, key


def server_names(settings: Settings) -> list[str]:
    """Names the server certificate covers: loopback, this host, the listen host, extras."""
    host, _ = settings.host_port
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *settings.tls.hostnames]
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    seen: list[str] = []
    for name in names:
        if name and name not in seen:
            seen.append(name)
    return seen


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _needs_new_server_cert(path: Path, names: list[str]) -> bool:
    if not path.exists():
        return True
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if cert.not_valid_after_utc - RENEW_BEFORE < _now():
        return True
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    return san != _san(names)


def _issue_server_cert(directory: Path, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                       names: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
            .add_extension(_san(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(directory / "server.key", _key_pem(key), 0o600)
    _write(directory / "server.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)


def server_context(cert_file: Path, key_file: Path, min_version: str) -> ssl.SSLContext:
    """A server SSL context with the given chain; TLS 1.3 only by default."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" \
        else ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load TLS certificate {cert_file} / key {key_file}: "
                          f"{exc}") from None
    return context


def site_tls(settings: Settings) -> TlsMaterial:
    """Certificates for ``serve --tls`` (blocking: run in a thread before serving)."""
    tls = settings.tls
    if tls.cert_file or tls.key_file:
        if not (tls.cert_file and tls.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together")
        cert = Path(tls.cert_file).expanduser()
        return TlsMaterial(server_context(cert, Path(tls.key_file).expanduser(),
                                          tls.min_version), None, cert)
    directory = settings.data_path / TLS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _load_ca(directory)
    names = server_names(settings)
    if _needs_new_server_cert(directory / "server.pem", names):
        _issue_server_cert(directory, ca, ca_key, names)
    context = server_context(directory / "server.pem", directory / "server.key",
                             tls.min_version)
    return TlsMaterial(context, (directory / "ca.pem").read_bytes(), directory / "server.pem")

"""The key broker's TLS identity: its certificate, its private key and the fingerprint TEEs pin.

``jupyter-cc kbs serve`` serves HTTPS by default (design section 13). On first start
:func:`ensure_identity` makes an EC P-256 key and a self-signed certificate in the broker's
data dir (``tls.key``, mode 0600, written atomically; ``tls.crt``); an operator may pass their
own with ``--cert FILE --key FILE`` instead (:func:`load_identity`). Either way the broker prints
:func:`cert_fingerprint`, the SHA-256 of the certificate's DER, which a ``kbs://`` client pins
with ``?cert-sha256=HEX`` (see :mod:`jupyter_cc.keys.broker_trust`); ``jupyter-cc kbs info``
prints it again.

>>> identity = ensure_identity(tmp / "kbs")          # doctest: +SKIP
>>> identity.fingerprint                             # doctest: +SKIP
'3f1c...'
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import ipaddress
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jupyter_cc.errors import InputError

__all__ = [
    "CERT_NAME",
    "KEY_NAME",
    "TlsIdentity",
    "cert_fingerprint",
    "ensure_identity",
    "is_loopback_host",
    "load_identity",
    "server_context",
]

CERT_NAME = "tls.crt"
KEY_NAME = "tls.key"
_VALIDITY_DAYS = 3650
"""Ten years: the certificate is trusted by its pinned fingerprint, not by its dates, and a
broker whose certificate changed would make every pinning TEE refuse it."""


@dataclass(frozen=True)
class TlsIdentity:
    """The certificate and key files the broker serves with, and the certificate's fingerprint."""

    cert_path: Path
    key_path: Path
    fingerprint: str
    generated: bool = False


def cert_fingerprint(cert_pem_or_der: bytes) -> str:
    """Lower-case hex SHA-256 of a certificate's DER (from PEM or DER bytes).

    Raises:
        InputError: the bytes are not a certificate.
    """
    try:
        if cert_pem_or_der.lstrip().startswith(b"-----BEGIN"):
            der = x509.load_pem_x509_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
        else:
            der = x509.load_der_x509_certificate(cert_pem_or_der).public_bytes(serialization.Encoding.DER)
    except ValueError as exc:
        raise InputError(f"not an X.509 certificate ({exc})") from None
    return hashlib.sha256(der).hexdigest()


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole with ``mode`` from the start (temp file in the folder, then rename)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _self_signed(hostnames: tuple[str, ...]) -> tuple[bytes, bytes]:
    """A fresh P-256 key (PKCS#8 PEM) and a self-signed certificate for ``hostnames`` (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jupyter-cc key broker")])
    alt: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def ensure_identity(folder: Path, hostnames: tuple[str, ...] = ()) -> TlsIdentity:
    """The broker's generated identity in ``folder``, made on first use.

    The key is written before the certificate, each atomically, the key 0600; a folder holding
    only one of the two (an interrupted first start) gets a fresh pair.

    Args:
        folder: the broker's data dir (beside its database).
        hostnames: names and addresses for the certificate's subjectAltName besides
            ``localhost``, ``127.0.0.1``, ``::1`` and this machine's host name (a pinning client
            does not check them; a client trusting the certificate as a CA file does).
    """
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / CERT_NAME, folder / KEY_NAME
    generated = False
    # Two brokers starting at once in one folder must not pair one's key with the other's cert.
    with open(folder / ".tls.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (cert_path.is_file() and key_path.is_file()):
            names = ("localhost", "127.0.0.1", "::1", socket.gethostname(), *hostnames)
            key_pem, cert_pem = _self_signed(tuple(n for n in dict.fromkeys(names) if n))
            _atomic_write(key_path, key_pem, 0o600)
            _atomic_write(cert_path, cert_pem, 0o644)
            generated = True
    identity = load_identity(cert_path, key_path)
    return TlsIdentity(identity.cert_path, identity.key_path, identity.fingerprint, generated)


def load_identity(cert: Path | str, key: Path | str) -> TlsIdentity:
    """An operator's ``--cert``/``--key`` pair, checked to load together.

    The fingerprint is the first (leaf) certificate's in the file.

    Raises:
        InputError: a file is unreadable, not PEM, or the key does not match the certificate.
    """
    cert_path, key_path = Path(cert), Path(key)
    try:
        cert_bytes = cert_path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the TLS certificate {cert_path} ({exc.strerror})") from None
    fingerprint = cert_fingerprint(cert_bytes)
    server_context(cert_path, key_path)  # the pair must load, and match, before we say it is ours
    return TlsIdentity(cert_path, key_path, fingerprint)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context serving ``cert`` with ``key``.

    Raises:
        InputError: the pair cannot be loaded (unreadable, malformed, or not matching).
    """
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"cannot load the TLS certificate {cert} with key {key} ({exc})") from None
    return ctx


def is_loopback_host(host: str) -> bool:
    """True only for a literal loopback address or the name ``localhost``.

    No DNS is asked: a name that merely resolves to 127.0.0.1 today is not trusted to stay
    on this machine, and ``localhost`` is the one name resolvers keep local (RFC 6761).
    """
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    if "%" in name and ":" not in name:
        return False  # a zone index belongs to IPv6 only; anything else is some name
    try:
        addr = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback

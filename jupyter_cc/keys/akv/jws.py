"""Step 5 of an ``akv://`` release: Key Vault's release JWS, and the key it says was released.

The JWS header's ``alg`` must be an RSA JWS algorithm with an ``x5c`` chain; the signature must
verify with ``x5c[0]``, whose DNS names must cover the vault host and which must chain to a
trusted root (the system store, or ``ca_bundle``/``jws_roots``) under the WebPKI server
profile. The payload must name the key asked for and the wrapping algorithm asked for. Every
failure is a :class:`ValueError` whose message says which check failed (never payload content).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import ipaddress
import os
import re
import ssl
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import DNSName, IPAddress
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import RSAKey
from joserfc.jws import JWSRegistry

from jupyter_cc.attest.maa import claim_path
from jupyter_cc.decoding import b64url_encode, strict_json
from jupyter_cc.errors import InputError
from jupyter_cc.keys.akv.transport import MAX_RESPONSE
from jupyter_cc.keys.akv.uri import AkvUri

__all__ = ["JWS_ALGORITHMS", "released_key", "trust_roots", "verify_release_jws"]

JWS_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
MAX_X5C = 8
MIN_SIGNER_BITS = 2048

_B64URL = re.compile(r"\A[A-Za-z0-9_-]*\Z")


def verify_release_jws(
    value: str, *, vault_host: str, roots: Sequence[x509.Certificate], at: datetime
) -> dict[str, Any]:
    """Verify Key Vault's release JWS and return its payload.

    The header's ``alg`` must be an RSA JWS algorithm and ``x5c`` a chain whose first
    certificate's key verifies the signature; that certificate must name ``vault_host`` in its
    subject alternative names and chain to one of ``roots`` at time ``at`` (``x5t#S256``, when
    present, must be its thumbprint).

    Raises:
        ValueError: any of these checks failed; the message says which (no payload content).
    """
    if not isinstance(value, str) or value.count(".") != 2:
        raise ValueError("the release response is not a compact JWS (header.payload.signature)")
    header, alg = _jws_header(value)
    certs = _x5c_chain(header)
    leaf = certs[0]
    public_key = _signer_key(leaf, header)
    try:
        # (a) the signature, by joserfc
        verified = jws.deserialize_compact(
            value, RSAKey.import_key(public_key), algorithms=[alg], registry=_jws_registry(alg)
        )
    except BadSignatureError:
        raise ValueError(f"the JWS {alg} signature does not verify with its x5c[0] certificate") from None
    except JoseError as exc:
        raise ValueError(f"the JWS is malformed ({exc.error})") from None
    _check_signer(leaf, certs[1:], vault_host, roots, at)
    try:
        payload = strict_json(verified.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("the JWS payload is not JSON") from None
    if not isinstance(payload, dict):
        raise ValueError("the JWS payload is not a JSON object")
    return payload


def _jws_header(value: str) -> tuple[dict[str, Any], str]:
    """The protected header and its ``alg``, which must be one of :data:`JWS_ALGORITHMS`."""
    header = _segment_json(value.split(".", 1)[0], "header")
    alg = header.get("alg")
    if alg not in JWS_ALGORITHMS:
        raise ValueError(f"the JWS algorithm is {alg!r}; only {', '.join(JWS_ALGORITHMS)} are accepted")
    if "crit" in header:
        raise ValueError("the JWS header marks extensions as critical, which this client does not understand")
    return header, str(alg)


def _x5c_chain(header: Mapping[str, Any]) -> list[x509.Certificate]:
    """The header's ``x5c`` certificates, signer first."""
    chain = header.get("x5c")
    if not isinstance(chain, list) or not chain or len(chain) > MAX_X5C:
        raise ValueError(f"the JWS header has no x5c certificate chain (1 to {MAX_X5C} certificates)")
    certs: list[x509.Certificate] = []
    for i, entry in enumerate(chain):
        try:
            # RFC 7515 4.1.6: x5c entries are standard base64 DER.
            certs.append(x509.load_der_x509_certificate(base64.b64decode(str(entry), validate=True)))
        except (binascii.Error, ValueError):
            raise ValueError(f"x5c[{i}] of the JWS header is not a base64 DER certificate") from None
    return certs


def _signer_key(leaf: x509.Certificate, header: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The signer's RSA key (at least 2048 bits), once ``x5t#S256``, if given, names ``leaf``."""
    thumbprint = header.get("x5t#S256")
    if thumbprint is not None:
        digest = b64url_encode(hashlib.sha256(leaf.public_bytes(serialization.Encoding.DER)).digest())
        if thumbprint != digest:
            raise ValueError("the JWS header's x5t#S256 is not the thumbprint of x5c[0]")
    public_key = leaf.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey) or public_key.key_size < MIN_SIGNER_BITS:
        raise ValueError(f"x5c[0] does not hold an RSA key of at least {MIN_SIGNER_BITS} bits")
    return public_key


def _check_signer(
    leaf: x509.Certificate,
    intermediates: list[x509.Certificate],
    vault_host: str,
    roots: Sequence[x509.Certificate],
    at: datetime,
) -> None:
    """The signer is the vault: its certificate names the vault host and chains to a trusted root."""
    # (b) the signer is the vault: its certificate names the vault host ...
    names = _dns_names(leaf)
    if not any(_name_matches(n, vault_host) for n in names):
        shown = ", ".join(names[:4]) or "no DNS names"
        raise ValueError(f"the JWS signing certificate is for {shown}, not the vault host {vault_host}")
    # (c) ... and chains to a trusted root, checked with the WebPKI server profile.
    if not roots:
        raise ValueError("no trusted root certificates are available to check the JWS signer")
    try:
        subject: DNSName | IPAddress
        try:
            subject = IPAddress(ipaddress.ip_address(vault_host))
        except ValueError:
            subject = DNSName(vault_host)
        verifier = PolicyBuilder().store(Store(list(roots))).time(at).build_server_verifier(subject)
        verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise ValueError(f"the JWS signing certificate does not chain to a trusted root ({exc})") from None


def released_key(
    payload: Mapping[str, Any], vault_host: str, target: AkvUri, algorithm: str
) -> tuple[str, Any, str]:
    """The released key's id, ``kty`` and ``key_hsm`` from a verified JWS payload.

    Raises:
        ValueError: the payload names another key or algorithm, or lacks the key.
    """
    key = claim_path(payload, "response.key.key", None)
    if not isinstance(key, Mapping):
        raise ValueError("the JWS payload has no response.key.key")
    kid = _check_kid(key.get("kid"), vault_host, target)
    requested = claim_path(payload, "request.enc", None)
    if requested is not None and requested != algorithm:
        raise ValueError(f"the vault says it used {requested!r}, not the {algorithm} asked for")
    key_hsm = key.get("key_hsm")
    if not isinstance(key_hsm, str):
        raise ValueError("the released key has no key_hsm")
    return kid, key.get("kty"), key_hsm


def _jws_registry(alg: str) -> JWSRegistry:
    registry = JWSRegistry(algorithms=[alg], strict_check_header=False)
    registry.max_header_length = 64 * 1024  # the header carries the x5c chain
    registry.max_payload_length = MAX_RESPONSE
    return registry


def _segment_json(segment: str, what: str) -> dict[str, Any]:
    if not segment or not _B64URL.match(segment):
        raise ValueError(f"the JWS {what} is not base64url")
    raw = segment.encode("ascii")
    try:
        data = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
        value = strict_json(data.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError(f"the JWS {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise ValueError(f"the JWS {what} is not a JSON object")
    return value


def _dns_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = san.get_values_for_type(x509.DNSName)
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def _name_matches(pattern: str, host: str) -> bool:
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _check_kid(kid: Any, vault_host: str, target: AkvUri) -> str:
    if not isinstance(kid, str):
        raise ValueError("the released key has no kid")
    parts = urlsplit(kid)
    segments = parts.path.split("/")
    if (
        parts.scheme != "https"
        or (parts.hostname or "").lower() != vault_host.lower()
        or len(segments) != 4
        or segments[1] != "keys"
        or segments[2].lower() != target.name.lower()
        or (target.version is not None and segments[3].lower() != target.version.lower())
    ):
        raise ValueError(f"the released key is {kid}, not the key {target.name} of {vault_host} asked for")
    return kid


# --- trust roots -----------------------------------------------------------------------------


def _pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate in PEM text that parses; system bundles may hold a few that do not."""
    out: list[x509.Certificate] = []
    with warnings.catch_warnings():
        # Old roots with non-positive serial numbers warn; they are skipped or kept, not errors.
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        for block in re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S):
            try:
                out.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return out


@functools.lru_cache(maxsize=1)
def _system_roots() -> tuple[x509.Certificate, ...]:
    """The system CA store, as the TLS stack uses it (falling back to certifi)."""
    paths = ssl.get_default_verify_paths()
    files = [p for p in (os.environ.get("SSL_CERT_FILE"), paths.cafile) if p and Path(p).is_file()]
    for file in files:
        certs = _pem_certificates(Path(file).read_bytes())
        if certs:
            return tuple(certs)
    if paths.capath and Path(paths.capath).is_dir():
        certs = []
        for entry in sorted(Path(paths.capath).iterdir()):
            if entry.is_file() and entry.suffix in (".pem", ".crt", ".0"):
                certs += _pem_certificates(entry.read_bytes())
        if certs:
            return tuple(certs)
    try:
        import certifi
    except ImportError:
        return ()
    return tuple(_pem_certificates(Path(certifi.where()).read_bytes()))


def trust_roots(
    jws_roots: Sequence[x509.Certificate] | None, ca_bundle: str | os.PathLike[str] | None
) -> Sequence[x509.Certificate]:
    """The roots the JWS signer must chain to: ``jws_roots``, else ``ca_bundle``'s, else the system's."""
    if jws_roots is not None:
        return list(jws_roots)
    if ca_bundle is not None:
        try:
            return _pem_certificates(Path(ca_bundle).read_bytes())
        except OSError as exc:
            raise InputError(f"cannot read the CA bundle {ca_bundle} ({exc.strerror})") from None
    return _system_roots()

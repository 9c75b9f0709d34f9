"""X.509 for attestation: load certificates in any form and verify chains to pinned roots.

Vendor attestation chains are short and fixed (AMD: VCEK, ASK, ARK; Intel: PCK leaf, platform
CA, root; NVIDIA: five device certificates), so verification is explicit rather than a path
search: each certificate must be directly issued by the next one, the last must be self-signed
and its fingerprint pinned, and every certificate must be valid at the verification time.
Signatures, including AMD's RSA-PSS with SHA-384 and salt 48, are checked by ``cryptography``.

Path rules (RFC 5280 section 6.1.4, as AMD, Intel and NVIDIA set their certificates):

* every issuer, the root included, is a CA: BasicConstraints with CA=true (every ARK, ASK,
  ASVK, Intel SGX Root and PCK CA, and NVIDIA CA carries it, critical), and its keyUsage, when
  present (it is in all of them), allows keyCertSign;
* a pathLenConstraint bounds the CA certificates below its holder (the ASK and the PCK Platform
  CA have 0: they issue only end-entity certificates; the Intel SGX Root CA has 1);
* with ``end_entity``, the leaf is an end-entity certificate that signs evidence: not a CA
  (the PCK certificate and TCB Signing certificate say CA=false; VCEKs and VLEKs and the NVIDIA
  attestation certificates carry no BasicConstraints), and its keyUsage, when present, allows
  digitalSignature (PCK, TCB Signing and NVIDIA leaves carry it; VCEKs and VLEKs carry none).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import warnings
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from jupyter_cc.attest.roots import TrustAnchor, TrustStore
from jupyter_cc.errors import ChainError, InputError

__all__ = [
    "describe",
    "fingerprint",
    "load_certificate",
    "load_certificates",
    "utcnow",
    "verify_chain",
]

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_Ext = TypeVar("_Ext", bound=x509.ExtensionType)


def utcnow() -> datetime:
    """The current time, timezone-aware; verifiers take ``at`` so tests can pin it."""
    return datetime.now(timezone.utc)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lower-case hex, as roots are pinned."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


@functools.lru_cache(maxsize=512)
def describe(cert: x509.Certificate) -> str:
    """A short name for messages: the subject CN, or the whole subject when there is none."""
    try:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if cns:
            value = cns[0].value
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
        return cert.subject.rfc4514_string() or "certificate without subject"
    except ValueError:
        return "certificate with a malformed subject"


def _name(name_of: x509.Certificate, issuer: bool) -> str:
    try:
        return (name_of.issuer if issuer else name_of.subject).rfc4514_string()
    except ValueError:
        return "a malformed name"


def _load_der(data: bytes) -> x509.Certificate:
    # Real AMD VCEKs carry serial number 0, which RFC 5280 forbids; cryptography warns but
    # parses them. The warning is expected here and says nothing about authenticity.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        return x509.load_der_x509_certificate(data)


def load_certificates(data: bytes, *, what: str = "certificate file") -> list[x509.Certificate]:
    """Every certificate in ``data``: one or more PEM blocks, or a single DER certificate.

    Raises:
        InputError: nothing in ``data`` parses as a certificate.
    """
    data = data.rstrip(b"\x00")
    try:
        if _PEM_BEGIN in data:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CryptographyDeprecationWarning)
                certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [_load_der(data)]
    except ValueError as exc:
        raise InputError(
            f"{what} does not hold a readable X.509 certificate ({str(exc).rstrip('.')})",
            hint="pass PEM (one or several certificates) or a single DER certificate",
        ) from None
    if not certs:
        raise InputError(f"{what} holds no certificate")
    return certs


def load_certificate(data: bytes, *, what: str = "certificate file") -> x509.Certificate:
    """The first certificate in ``data`` (see :func:`load_certificates`)."""
    return load_certificates(data, what=what)[0]


def _check_validity(cert: x509.Certificate, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise ChainError(
            f"certificate '{describe(cert)}' is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
            f" (verification time {at:%Y-%m-%dT%H:%M:%SZ})",
            hint="check the clock or pass --at with the time the evidence was produced",
        )
    if at > cert.not_valid_after_utc:
        raise ChainError(
            f"certificate '{describe(cert)}' expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
            f" (verification time {at:%Y-%m-%dT%H:%M:%SZ})",
            hint="fetch a current certificate, or pass --at to verify as of a past time",
        )


@functools.lru_cache(maxsize=512)
def _extension(cert: x509.Certificate, kind: type[_Ext]) -> _Ext | None:
    # Parsed once per certificate and extension type (failures raise and are not cached).
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except (ValueError, x509.DuplicateExtension):
        raise ChainError(f"certificate '{describe(cert)}' has malformed extensions") from None


def _check_ca(issuer: x509.Certificate, child: x509.Certificate) -> None:
    """``issuer`` may issue certificates: a CA (RFC 5280 6.1.4 (k)) allowed keyCertSign (n)."""
    constraints = _extension(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        found = "has no BasicConstraints extension" if constraints is None else "says CA=false"
        raise ChainError(
            f"certificate '{describe(issuer)}' issued '{describe(child)}' but {found}: only a "
            "certificate with BasicConstraints CA=true may issue certificates",
            hint="the chain was not made by the vendor; pass the vendor's chain for this certificate",
        )
    usage = _extension(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise ChainError(
            f"certificate '{describe(issuer)}' issued '{describe(child)}' but its keyUsage does not "
            "allow keyCertSign: only a CA key allowed to sign certificates may issue them",
            hint="the chain was not made by the vendor; pass the vendor's chain for this certificate",
        )


@functools.lru_cache(maxsize=256)
def _check_issued_by(child: x509.Certificate, issuer: x509.Certificate) -> None:
    """Check one link. Results depend only on the two certificates' bytes, so successes are
    cached (a kernel re-attesting on the same chip repeats the same links); failures raise and
    are never cached. Validity times are checked on every call, outside this cache."""
    _check_ca(issuer, child)
    try:
        child.verify_directly_issued_by(issuer)
    except ValueError:
        raise ChainError(
            f"certificate '{describe(child)}' names issuer '{_name(child, True)}', "
            f"not '{_name(issuer, False)}'",
            hint="pass the chain for this certificate's product, in order from leaf to root",
        ) from None
    except (InvalidSignature, TypeError, UnsupportedAlgorithm):
        raise ChainError(
            f"certificate '{describe(child)}' is not signed by '{describe(issuer)}'",
            hint="pass the issuer chain that belongs to this certificate",
        ) from None


def _check_path_lengths(chain: Sequence[x509.Certificate]) -> None:
    """Each CA's pathLenConstraint bounds the non-self-issued CAs between it and the leaf."""
    for i in range(2, len(chain)):
        constraints = _extension(chain[i], x509.BasicConstraints)
        if constraints is None or constraints.path_length is None:
            continue
        below = [c for c in chain[1:i] if c.issuer != c.subject]
        if len(below) > constraints.path_length:
            raise ChainError(
                f"certificate '{describe(chain[i])}' has pathLenConstraint "
                f"{constraints.path_length}, so at most {constraints.path_length} CA "
                f"certificate(s) may stand below it, but the chain puts {len(below)} there "
                f"({', '.join(repr(describe(c)) for c in below)})",
                hint="the chain was not made by the vendor; pass the vendor's chain for this certificate",
            )


def _check_end_entity(leaf: x509.Certificate, role: str) -> None:
    """The certificate of a key that signs evidence: not a CA, allowed digitalSignature."""
    constraints = _extension(leaf, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise ChainError(
            f"{role} '{describe(leaf)}' has BasicConstraints CA=true: a certificate for a key that "
            "signs evidence must be an end-entity certificate, not a CA",
            hint="the certificate was not issued by the vendor for this purpose",
        )
    usage = _extension(leaf, x509.KeyUsage)
    if usage is not None and not usage.digital_signature:
        raise ChainError(
            f"{role} '{describe(leaf)}' has a keyUsage that does not allow digitalSignature, so "
            "its key may not sign evidence",
            hint="the certificate was not issued by the vendor for this purpose",
        )


def verify_chain(
    chain: Sequence[x509.Certificate],
    *,
    roots: TrustStore,
    at: datetime,
    end_entity: str | None = None,
) -> TrustAnchor:
    """Check ``chain`` (leaf first, root last) and return the pinned anchor it ends at.

    Args:
        end_entity: what the leaf is, for messages ("the VCEK", "the PCK certificate"), when
            it must be an end-entity certificate whose key signs evidence. Without it the leaf
            may be a CA (an ASK/ARK chain checked on its own).

    Raises:
        ChainError: a link is missing or mis-signed, an issuer is not a CA allowed to sign
            certificates, a path length constraint is exceeded, the leaf is not the end-entity
            certificate ``end_entity`` asks for, a certificate is outside its validity at
            ``at``, or the root is not pinned, whatever its subject says.
    """
    try:
        return _verify_chain(chain, roots=roots, at=at, end_entity=end_entity)
    except ValueError as exc:  # cryptography parses names and extensions lazily
        raise ChainError(f"a certificate in the chain is malformed ({exc})") from None


def _verify_chain(
    chain: Sequence[x509.Certificate], *, roots: TrustStore, at: datetime, end_entity: str | None
) -> TrustAnchor:
    if not chain:
        raise ChainError("no certificates to verify")
    for cert in chain:
        _check_validity(cert, at)
    root = chain[-1]
    root_fingerprint = _check_structure(tuple(chain), end_entity)
    anchor = roots.find(root_fingerprint)
    if anchor is None:
        raise ChainError(
            f"the chain ends at a root named '{describe(root)}' whose SHA-256 fingerprint "
            f"{root_fingerprint} is not pinned (pinned: {', '.join(roots.names()) or 'none'})",
            hint="evidence must chain to a genuine vendor root",
        )
    return anchor


@functools.lru_cache(maxsize=128)
def _check_structure(chain: tuple[x509.Certificate, ...], end_entity: str | None) -> str:
    """Everything about ``chain`` that does not depend on the time or the trust store.

    Links, CA rules, path lengths and the end-entity rules; returns the root's fingerprint.
    Successes are cached by the certificates (their bytes): a verifier judging one platform again
    and again repeats the same chain. Failures raise and are never cached. The root's own
    self-signature is not checked: the root is trusted only when its fingerprint, taken over the
    whole certificate including that signature, is pinned.
    """
    for child, issuer in itertools.pairwise(chain):
        _check_issued_by(child, issuer)
    _check_path_lengths(chain)
    if end_entity is not None:
        _check_end_entity(chain[0], end_entity)
    root = chain[-1]
    if root.issuer != root.subject:
        raise ChainError(
            f"the chain ends at '{describe(root)}', which is not a self-signed root",
            hint="include the root (for AMD the ARK, for Intel the SGX Root CA) in the chain file",
        )
    _check_ca(root, root)
    return fingerprint(root)

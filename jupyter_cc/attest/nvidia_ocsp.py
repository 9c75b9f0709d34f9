"""OCSP for NVIDIA's certificate chains: the GPU device chain and the RIM signing chain.

NVIDIA revokes GPU and RIM certificates through its OCSP responder (``nvidia_ocsp``, design
section 12), not CRLs. For each certificate with its issuer, :func:`ocsp_request` builds the
DER request (``cryptography``'s OCSP support) and :func:`check_response` judges the answer:

1. the response is ``successful`` and answers exactly this certificate (serial, issuer name
   and key hashes);
2. it is signed by the issuer itself, or by a responder certificate that the issuer signed for
   OCSP signing (extended key usage ``OCSPSigning``), valid at the time asked about;
3. ``thisUpdate`` is not in the future and ``nextUpdate`` not in the past (a response without
   ``nextUpdate`` cannot be cached and is refused: freshness must be provable);
4. the status is ``good``; ``revoked`` and ``unknown`` refuse (fail closed).

Which certificates are asked about (:func:`ocsp_targets`): every certificate below the root
of the RIM chain; of the GPU chain every certificate below the root except the leaf, which the
GPU's own firmware (FMC) mints at boot and NVIDIA's responder has no record of; its issuer (the
GPU's BROM certificate, which NVIDIA provisioned) is asked about instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from jupyter_cc.attest import der
from jupyter_cc.attest.certs import describe
from jupyter_cc.errors import BindingError, ChainError, FormatError, FreshnessError, SignatureError

__all__ = ["OcspStatus", "check_response", "ocsp_request", "ocsp_targets", "unique_pairs"]

_SKEW = timedelta(minutes=5)
# Answers whose signature verified before, by their SHA-256 and the issuer: the same bytes verify
# the same way every time (the cache holds one answer per certificate until its nextUpdate).
# Times, status and the certificate asked about are judged on every call. A delegated
# responder's own validity is judged when the answer is first seen, within the answer's life.
_MEMO = 256
_SIGNED: dict[tuple[bytes, bytes, bytes], int] = {}


@dataclass(frozen=True)
class OcspStatus:
    """A verified ``good`` answer: until when it may be used."""

    certificate: str
    this_update: datetime
    next_update: datetime


def ocsp_request(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """The DER OCSP request for ``cert`` (SHA-384 CertID, as NVIDIA's verifier asks)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA384())
    return builder.build().public_bytes(Encoding.DER)


def ocsp_targets(
    chain: list[x509.Certificate], *, skip_leaf: bool
) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """(certificate, issuer) pairs to ask about for a leaf-first chain ending at its root."""
    start = 1 if skip_leaf else 0
    return [(chain[i], chain[i + 1]) for i in range(start, len(chain) - 1)]


def unique_pairs(
    pairs: list[tuple[x509.Certificate, x509.Certificate]],
) -> list[tuple[x509.Certificate, x509.Certificate]]:
    """``pairs`` without repeats (two RIMs usually share one signing chain)."""
    seen: set[tuple[bytes, bytes]] = set()
    out = []
    for cert, issuer in pairs:
        key = (cert.fingerprint(hashes.SHA256()), issuer.fingerprint(hashes.SHA256()))
        if key not in seen:
            seen.add(key)
            out.append((cert, issuer))
    return out


def _signature_ok(signer: x509.Certificate, response: ocsp.OCSPResponse) -> bool:
    """Whether ``signer``'s key verifies the response's signature (EC or RSA)."""
    key = signer.public_key()
    algorithm = response.signature_hash_algorithm
    if algorithm is None:
        return False
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(response.signature, response.tbs_response_bytes, padding.PKCS1v15(), algorithm)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, ValueError):
        return False
    return True


def _issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _responder(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, at: datetime, what: str
) -> x509.Certificate:
    """The certificate that signed ``response``: the issuer, or a responder it delegated to."""
    if _signature_ok(issuer, response):
        return issuer
    for cert in response.certificates:
        if not _issued_by(cert, issuer) or not _signature_ok(cert, response):
            continue
        try:
            usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            continue
        if (
            ExtendedKeyUsageOID.OCSP_SIGNING in usage
            and cert.not_valid_before_utc <= at <= cert.not_valid_after_utc
        ):
            return cert
    raise SignatureError(
        f"the OCSP response about {what} is signed neither by its issuer '{describe(issuer)}' nor by "
        "a responder certificate the issuer authorised for OCSP signing"
    )


def check_response(
    der: bytes, cert: x509.Certificate, issuer: x509.Certificate, *, at: datetime, fresh: bool = True
) -> OcspStatus:
    """Judge one DER OCSP response about ``cert`` (see the module docstring).

    ``fresh=False`` lets an answer past its ``nextUpdate`` through (the collateral cache and an
    import keep stale entries, marked stale; the verifier always asks for fresh ones).

    Raises:
        FormatError: not an OCSP response, or one that is not ``successful``.
        SignatureError: not signed by the issuer or a delegated responder.
        BindingError: the response answers another certificate.
        FreshnessError: not yet valid, past ``nextUpdate``, or without ``nextUpdate``.
        ChainError: the certificate is revoked, or the responder does not know it.
    """
    what = f"'{describe(cert)}'"
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as exc:
        raise FormatError(f"the OCSP answer about {what} is not a DER OCSP response ({exc})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise FormatError(f"the OCSP responder answered {response.response_status.name} about {what}")
    single = _matching(der, response, cert, issuer, at, what)
    if single.this_update_utc > at + _SKEW:
        raise FreshnessError(
            f"the OCSP response about {what} is dated {single.this_update_utc:%Y-%m-%d %H:%M}Z, in the future"
        )
    if single.next_update_utc is None:
        raise FreshnessError(
            f"the OCSP response about {what} has no nextUpdate, so its freshness cannot be judged"
        )
    if fresh and single.next_update_utc < at:
        raise FreshnessError(
            f"the OCSP response about {what} expired at its nextUpdate "
            f"{single.next_update_utc:%Y-%m-%d %H:%M}Z"
        )
    if single.certificate_status == ocsp.OCSPCertStatus.REVOKED:
        when = single.revocation_time_utc
        raise ChainError(
            f"NVIDIA's OCSP responder says {what} was revoked"
            + (f" on {when:%Y-%m-%d}" if when else "")
            + (f" ({single.revocation_reason.name})" if single.revocation_reason else ""),
            hint="the GPU or RIM signing key is no longer trusted by NVIDIA",
        )
    if single.certificate_status != ocsp.OCSPCertStatus.GOOD:
        raise ChainError(f"NVIDIA's OCSP responder does not know {what} (status unknown)")
    return OcspStatus(describe(cert), single.this_update_utc, single.next_update_utc)


def _matching(
    der: bytes,
    response: ocsp.OCSPResponse,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    at: datetime,
    what: str,
) -> ocsp.OCSPSingleResponse:
    """The single response about ``cert``, in an answer signed by its issuer or a delegate.

    Both depend only on the bytes: remembered by the answer's SHA-256 and the two certificates.
    """
    key = (
        hashlib.sha256(der).digest(),
        cert.fingerprint(hashes.SHA256()),
        issuer.fingerprint(hashes.SHA256()),
    )
    singles = list(response.responses)
    index = _SIGNED.get(key)
    if index is None:
        found = [
            i
            for i, r in enumerate(singles)
            if r.serial_number == cert.serial_number and _same_issuer(r, issuer)
        ]
        if len(found) != 1:
            raise BindingError(f"the OCSP response does not answer about {what} (serial or issuer differ)")
        _responder(response, issuer, at, what)
        if len(_SIGNED) >= _MEMO:
            _SIGNED.pop(next(iter(_SIGNED)))
        index = _SIGNED[key] = found[0]
    return singles[index]


def _same_issuer(single: ocsp.OCSPSingleResponse, issuer: x509.Certificate) -> bool:
    """The CertID's issuer name and key hashes are ``issuer``'s (with the hash it names)."""
    algorithm = single.hash_algorithm
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    spki = issuer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    key = hashes.Hash(algorithm)
    key.update(_subject_public_key(spki))
    return single.issuer_name_hash == name.finalize() and single.issuer_key_hash == key.finalize()


def _subject_public_key(spki: bytes) -> bytes:
    """The BIT STRING contents (without the unused-bits byte) of a SubjectPublicKeyInfo."""
    items = der.items(spki, "a public key")
    if len(items) != 1:
        raise FormatError("a public key is not one DER SEQUENCE")
    inner = der.items(items[0][1], "a public key")
    if len(inner) != 2 or inner[1][0] != 0x03:
        raise FormatError("a public key has no BIT STRING")
    return inner[1][1][1:]

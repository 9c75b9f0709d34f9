"""Intel PCS v4 collateral for TDX: where to get each item, and whether what came is genuine.

Paths (design section 12) on the ``intel_pcs`` base: ``/tdx/certification/v4/tcb?fmspc=HEX``
(issuer chain in ``TCB-Info-Issuer-Chain``), ``/tdx/certification/v4/qe/identity``
(``SGX-Enclave-Identity-Issuer-Chain``), ``/sgx/certification/v4/pckcrl?ca=platform|processor&encoding=der``
(``SGX-PCK-CRL-Issuer-Chain``); on ``intel_certs``: ``/IntelSGXRootCA.der`` (the Root CA CRL).
Issuer chains come URL-encoded PEM in those headers.

Each ``check_*`` function judges one item as served, against the pinned Intel SGX Root CA (or
the trust store given): the issuer chain to a pinned root, valid at the verification time and
when the item was issued, the signature over the exact bytes, the id, version and FMSPC asked
for. It returns the item's ``nextUpdate``. Parsing is :mod:`jupyter_cc.attest.tdx.collateral`'s.
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Mapping, Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from jupyter_cc.attest.certs import describe, fingerprint, load_certificates, verify_chain
from jupyter_cc.attest.roots import INTEL_SGX_ROOT, TrustStore
from jupyter_cc.attest.tdx.collateral import load_crl, parse_qe_identity, parse_tcb_info
from jupyter_cc.collateral.fetch import Response
from jupyter_cc.errors import ChainError, CollateralError, SignatureError

__all__ = [
    "PCK_CAS",
    "SERVICE",
    "check_pck_crl",
    "check_qe_identity",
    "check_root_ca_crl",
    "check_tcb_info",
    "crl_signed_by",
    "header_chain",
    "intel_roots",
    "pck_crl_url",
    "qe_identity_url",
    "root_ca_crl_url",
    "tcb_info_url",
]

SERVICE = "Intel PCS"
PCK_CAS = ("platform", "processor")
TCB_SIGNING_CN = "Intel SGX TCB Signing"
_PCK_CA_CN = {"platform": "Intel SGX PCK Platform CA", "processor": "Intel SGX PCK Processor CA"}
_EXPECTED = {"tdx-tcb-info": ("TDX", 3), "tdx-qe-identity": ("TD_QE", 2)}


def intel_roots() -> TrustStore:
    return TrustStore.of(INTEL_SGX_ROOT)


def tcb_info_url(base: str, fmspc: str) -> str:
    return f"{base}/tdx/certification/v4/tcb?fmspc={fmspc}"


def qe_identity_url(base: str) -> str:
    return f"{base}/tdx/certification/v4/qe/identity"


def pck_crl_url(base: str, ca: str) -> str:
    return f"{base}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der"


def root_ca_crl_url(certs_base: str) -> str:
    return f"{certs_base}/IntelSGXRootCA.der"


def header_chain(response: Response, header: str, what: str) -> bytes:
    """The URL-decoded PEM issuer chain in ``header`` of ``response``.

    Raises:
        CollateralError: the header is absent or holds no certificate.
    """
    value = response.header(header)
    if not value:
        raise CollateralError(f"{SERVICE} sent the {what} without its {header} header")
    pem = urllib.parse.unquote(value).encode("ascii", "replace")
    load_certificates(pem, what=f"{header} header")
    return pem


def _chain(pem: bytes, what: str) -> list[x509.Certificate]:
    return load_certificates(pem, what=f"the issuer chain of the {what}")


def _verify_signer(
    chain: Sequence[x509.Certificate],
    *,
    cn: str,
    roots: TrustStore,
    times: Sequence[datetime],
    what: str,
    end_entity: str | None = None,
) -> None:
    if len(chain) < 2 or describe(chain[0]) != cn:
        names = ", ".join(f"'{describe(c)}'" for c in chain)
        raise ChainError(f"the {what} issuer chain is {names or 'empty'}, expected '{cn}' then the root")
    for when in times:
        try:
            verify_chain(chain, roots=roots, at=when, end_entity=end_entity)
        except ChainError as exc:
            raise ChainError(
                f"the {what} issuer chain does not hold at {when:%Y-%m-%dT%H:%M:%SZ}: {exc.message}"
            ) from None


def _check_doc_signature(cert: x509.Certificate, signed: bytes, sig: bytes, what: str) -> None:
    key = cert.public_key()
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignature
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError(
            f"the {what} signature does not verify with '{describe(cert)}' over the exact bytes of its body"
        ) from None


def _check_document(kind: str, body: bytes, chain_pem: bytes, at: datetime, roots: TrustStore) -> datetime:
    doc = parse_tcb_info(body) if kind == "tdx-tcb-info" else parse_qe_identity(body)
    what = "TCB info" if kind == "tdx-tcb-info" else "QE identity"
    want_id, want_version = _EXPECTED[kind]
    if doc.id != want_id or doc.version != want_version:
        raise CollateralError(
            f"the {what} is id '{doc.id}' version {doc.version:g}, "
            f"expected '{want_id}' version {want_version}"
        )
    chain = _chain(chain_pem, what)
    _verify_signer(
        chain,
        cn=TCB_SIGNING_CN,
        roots=roots,
        times=(at, doc.issue_date),
        what=what,
        end_entity="the collateral signing certificate",
    )
    _check_doc_signature(chain[0], doc.signed_bytes, doc.signature, what)
    return doc.next_update


def check_tcb_info(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge a TDX TCB info for ``params['fmspc']``; its nextUpdate.

    Raises:
        InputError, CollateralError, ChainError, SignatureError: the failed check.
    """
    next_update = _check_document("tdx-tcb-info", body, chain_pem, at, roots)
    fmspc = parse_tcb_info(body).fmspc.lower()
    if fmspc != params.get("fmspc", "").lower():
        raise CollateralError(f"the TCB info is for FMSPC {fmspc}, not the {params.get('fmspc')} asked for")
    return next_update


def check_qe_identity(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge the TD QE identity; its nextUpdate."""
    return _check_document("tdx-qe-identity", body, chain_pem, at, roots)


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """Whether ``crl`` names ``issuer`` and verifies with its key (EC, RSA PKCS#1 or RSA-PSS)."""
    if crl.issuer != issuer.subject:
        return False
    key = issuer.public_key()
    try:
        return crl.is_signature_valid(key)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        pass
    from jupyter_cc.collateral.kds import pss_valid

    return pss_valid(key, crl.signature, crl.tbs_certlist_bytes)


def _check_crl(body: bytes, issuer: x509.Certificate, at: datetime, what: str) -> datetime:
    crl = load_crl(body, what=what)
    if not crl_signed_by(crl, issuer):
        raise SignatureError(f"the {what} is not signed by '{describe(issuer)}'")
    if crl.next_update_utc is None:
        raise CollateralError(f"the {what} has no nextUpdate")
    if crl.last_update_utc > at:
        raise CollateralError(f"the {what} was issued after the verification time {at:%Y-%m-%dT%H:%M:%SZ}")
    return crl.next_update_utc


def check_pck_crl(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge a PCK Platform/Processor CA CRL with its issuer chain; its nextUpdate."""
    ca = params.get("ca", "")
    what = f"PCK {ca} CA CRL"
    chain = _chain(chain_pem, what)
    _verify_signer(chain, cn=_PCK_CA_CN.get(ca, "?"), roots=roots, times=(at,), what=what)
    return _check_crl(body, chain[0], at, what)


def check_root_ca_crl(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge the Intel SGX Root CA CRL with the root certificate in ``chain_pem``; its nextUpdate."""
    certs = _chain(chain_pem, "Root CA CRL")
    root = certs[-1]
    if roots.find(fingerprint(root)) is None:
        raise ChainError(f"'{describe(root)}' given for the Root CA CRL is not a pinned root")
    return _check_crl(body, root, at, "Intel SGX Root CA CRL")


@functools.lru_cache(maxsize=32)
def root_pem(chain_pem: bytes) -> bytes:
    """The last certificate (the root) of a PEM chain, as PEM (cached: it depends only on the bytes)."""
    root = load_certificates(chain_pem, what="issuer chain")[-1]
    return root.public_bytes(serialization.Encoding.PEM)

"""Intel TDX DCAP quotes (versions 4 and 5): parse them and verify them to the Intel SGX Root CA.

Layout and checks follow docs/attestation-formats.md section 2 (gotdx ``abi/abi.go`` and
``verify/verify.go``). A quote is a 48-byte header, a TD report body (584 bytes for TDX 1.0,
648 for TDX 1.5; v5 quotes name the body type and size), and signature data: the quote
signature by the attestation key, that key, and the quoting enclave's (QE) report signed by the
platform's PCK certificate, whose chain travels in the quote. Every length is bounds-checked, so
any input either parses or raises :class:`~jupyter_cc.errors.FormatError`; trailing padding
after the signature data (seen on real quotes) is kept as ``extra_bytes``.

Verification, in order (each failure its own error, naming the check):

1. the PCK chain from the quote (leaf, Platform/Processor CA, root) ends at a pinned root
   (``ChainError``), and no given CRL revokes it;
2. the quote signature (ECDSA P-256, big-endian r‖s) over header‖body verifies with the
   attestation key (``SignatureError``);
3. the QE report signature verifies with the PCK leaf key (``SignatureError``);
4. QE REPORTDATA = SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes (``BindingError``);
5. with collateral (:mod:`jupyter_cc.attest.tdx.collateral`): TCB info and QE identity are
   signed and fresh, the QE is the one the QE identity names, and the platform's TCB level is
   found; ``tcb_status`` then joins the claims (``CollateralError``, ``TcbError``).

>>> quote = parse_quote(open("quote.bin", "rb").read())   # doctest: +SKIP
>>> claims = verify_quote(quote, at=utcnow())             # doctest: +SKIP
>>> claims.get("mrtd")                                     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from jupyter_cc.attest.certs import describe, verify_chain
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.roots import INTEL_SGX_ROOT, TrustStore
from jupyter_cc.attest.tdx.collateral import (
    PckExtensions,
    TdxCollateral,
    check_revocation,
    load_collateral,
    load_crl,
    match_qe_identity,
    match_tcb_level,
    parse_pck_extensions,
    verify_collateral,
    worst_status,
)
from jupyter_cc.errors import BindingError, ChainError, FormatError, InputError, SignatureError

__all__ = [
    "BODY_TYPE_TDX10",
    "BODY_TYPE_TDX15",
    "QeReport",
    "TdxQuote",
    "TdxQuoteBody",
    "appraise_collateral",
    "parse_quote",
    "pck_chain",
    "quote_details",
    "verify_quote",
    "verify_tdx",
]

HEADER_SIZE = 48
TEE_TYPE_TDX = 0x81
ATTESTATION_KEY_ECDSA_P256 = 2
BODY_TYPE_TDX10 = 2
BODY_TYPE_TDX15 = 3
BODY_SIZES = {BODY_TYPE_TDX10: 584, BODY_TYPE_TDX15: 648}
QE_REPORT_SIZE = 384
CERT_DATA_QE_REPORT = 6
CERT_DATA_PCK_CHAIN = 5
TD_ATTRIBUTE_DEBUG = 1
PCK_LEAF_CN = "Intel SGX PCK Certificate"
PCK_INTERMEDIATE_CNS = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")


class _Reader:
    """Bounds-checked reads from the quote; running past the end is a FormatError."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise FormatError(
                f"the TDX quote ends inside its {what} (needs {n} bytes at offset {self.pos}, "
                f"{max(self.end - self.pos, 0)} left)",
                hint="pass the whole quote as produced by the quoting enclave",
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self, what: str) -> int:
        return int(struct.unpack("<H", self.take(2, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])


@dataclass(frozen=True)
class TdxQuoteBody:
    """The TD report body (TDX 1.0, or 1.5 with TEE_TCB_SVN2 and MRSERVICETD); bytes kept raw."""

    raw: bytes
    tee_tcb_svn: bytes
    mrseam: bytes
    mrsignerseam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mrservicetd: bytes | None = None

    @property
    def debug(self) -> bool:
        """TD attribute bit 0 (DEBUG): the host can read and change the TD's state."""
        return bool(self.td_attributes[0] & TD_ATTRIBUTE_DEBUG)


@dataclass(frozen=True)
class QeReport:
    """The quoting enclave's 384-byte SGX REPORT body."""

    raw: bytes
    cpu_svn: bytes
    miscselect: int
    attributes: bytes
    mrenclave: bytes
    mrsigner: bytes
    isv_prod_id: int
    isv_svn: int
    report_data: bytes


@dataclass(frozen=True)
class TdxQuote:
    """A TDX DCAP quote, v4 or v5. ``body_type`` is 2 for v4, whose body is the TDX 1.0 layout."""

    raw: bytes
    version: int
    attestation_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes
    body_type: int
    body: TdxQuoteBody
    signed_size: int
    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes
    extra_bytes: bytes

    @property
    def signed_bytes(self) -> bytes:
        """Header and body: what the attestation key signs."""
        return self.raw[: self.signed_size]

    @property
    def debug(self) -> bool:
        return self.body.debug


def _parse_body(raw: bytes, body_type: int) -> TdxQuoteBody:
    r = _Reader(raw)
    fields = {
        "tee_tcb_svn": r.take(16, "TEE_TCB_SVN"),
        "mrseam": r.take(48, "MRSEAM"),
        "mrsignerseam": r.take(48, "MRSIGNERSEAM"),
        "seam_attributes": r.take(8, "SEAMATTRIBUTES"),
        "td_attributes": r.take(8, "TDATTRIBUTES"),
        "xfam": r.take(8, "XFAM"),
        "mrtd": r.take(48, "MRTD"),
        "mrconfigid": r.take(48, "MRCONFIGID"),
        "mrowner": r.take(48, "MROWNER"),
        "mrownerconfig": r.take(48, "MROWNERCONFIG"),
    }
    rtmr = (r.take(48, "RTMR0"), r.take(48, "RTMR1"), r.take(48, "RTMR2"), r.take(48, "RTMR3"))
    report_data = r.take(64, "REPORTDATA")
    if body_type == BODY_TYPE_TDX15:
        return TdxQuoteBody(
            raw=raw,
            rtmr=rtmr,
            report_data=report_data,
            tee_tcb_svn2=r.take(16, "TEE_TCB_SVN2"),
            mrservicetd=r.take(48, "MRSERVICETD"),
            **fields,
        )
    return TdxQuoteBody(raw=raw, rtmr=rtmr, report_data=report_data, **fields)


def _parse_qe_report(raw: bytes) -> QeReport:
    return QeReport(
        raw=raw,
        cpu_svn=raw[0:16],
        miscselect=int.from_bytes(raw[16:20], "little"),
        attributes=raw[48:64],
        mrenclave=raw[64:96],
        mrsigner=raw[128:160],
        isv_prod_id=int.from_bytes(raw[256:258], "little"),
        isv_svn=int.from_bytes(raw[258:260], "little"),
        report_data=raw[320:384],
    )


def parse_quote(data: bytes) -> TdxQuote:
    """Parse a TDX DCAP quote, version 4 or 5 (body type 2 = TDX 1.0 or 3 = TDX 1.5).

    Raises:
        FormatError: too short, wrong version, TEE type, key type, body type or certification
            data type, or a length field that points past its container.
    """
    data = bytes(data)
    r = _Reader(data)
    version = r.u16("header")
    key_type = r.u16("header")
    tee_type = r.u32("header")
    if version not in (4, 5):
        raise FormatError(
            f"TDX quote version is {version}, expected 4 or 5",
            hint="pass a TDX DCAP quote (SGX quotes and TD reports are different evidence)",
        )
    if tee_type != TEE_TYPE_TDX:
        raise FormatError(
            f"the quote's TEE type is 0x{tee_type:x}, expected 0x81 (TDX)",
            hint="this is not a TD quote; an SGX enclave quote cannot be verified as tdx",
        )
    if key_type != ATTESTATION_KEY_ECDSA_P256:
        raise FormatError(f"the quote's attestation key type is {key_type}, expected 2 (ECDSA P-256)")
    # Reserved in Intel's v4/v5 header; go-tdx-guest reads PCE SVN then QE SVN here.
    pce_svn = r.u16("header")
    qe_svn = r.u16("header")
    qe_vendor_id = r.take(16, "header")
    user_data = r.take(20, "header")
    if version == 4:
        body_type = BODY_TYPE_TDX10
    else:
        body_type = r.u16("body descriptor")
        body_size = r.u32("body descriptor")
        if body_type not in BODY_SIZES:
            raise FormatError(f"the v5 quote's body type is {body_type}, expected 2 (TDX 1.0) or 3 (TDX 1.5)")
        if body_size != BODY_SIZES[body_type]:
            raise FormatError(
                f"the v5 quote's body type {body_type} needs a {BODY_SIZES[body_type]}-byte body, "
                f"the quote says {body_size}"
            )
    body = _parse_body(r.take(BODY_SIZES[body_type], "TD report body"), body_type)
    signed_size = r.pos
    sig_len = r.u32("signature data length")
    sig_end = r.pos + sig_len
    if sig_end > len(data):
        raise FormatError(
            f"the quote's signature data length {sig_len} runs past its end ({len(data) - r.pos} "
            "bytes follow the length)",
            hint="pass the whole quote as produced by the quoting enclave",
        )
    s = _Reader(data, r.pos, sig_end)
    signature = s.take(64, "quote signature")
    attestation_key = s.take(64, "attestation key")
    cert_type = s.u16("certification data")
    if cert_type != CERT_DATA_QE_REPORT:
        raise FormatError(
            f"the quote's certification data type is {cert_type}, expected 6 (QE report certification data)"
        )
    cert_size = s.u32("certification data")
    if s.pos + cert_size != sig_end:
        raise FormatError(
            f"the quote's certification data is {cert_size} bytes but {sig_end - s.pos} bytes of "
            "signature data are left for it"
        )
    qe_report = _parse_qe_report(s.take(QE_REPORT_SIZE, "QE report"))
    qe_report_signature = s.take(64, "QE report signature")
    qe_auth_data = s.take(s.u16("QE authentication data"), "QE authentication data")
    inner_type = s.u16("PCK certification data")
    if inner_type != CERT_DATA_PCK_CHAIN:
        raise FormatError(
            f"the QE certification data type is {inner_type}, expected 5 (PCK certificate chain)",
            hint="fetch the PCK chain for this platform and pass a quote that embeds it",
        )
    pck_size = s.u32("PCK certification data")
    pck_pem = s.take(pck_size, "PCK certificate chain")
    if s.pos != sig_end:
        raise FormatError(f"the quote's signature data has {sig_end - s.pos} unexplained bytes")
    return TdxQuote(
        raw=data,
        version=version,
        attestation_key_type=key_type,
        tee_type=tee_type,
        qe_svn=qe_svn,
        pce_svn=pce_svn,
        qe_vendor_id=qe_vendor_id,
        user_data=user_data,
        body_type=body_type,
        body=body,
        signed_size=signed_size,
        signature=signature,
        attestation_key=attestation_key,
        qe_report=qe_report,
        qe_report_signature=qe_report_signature,
        qe_auth_data=qe_auth_data,
        pck_chain_pem=pck_pem,
        extra_bytes=data[sig_end:],
    )


# --- verification ---------------------------------------------------------------------------


def pck_chain(quote: TdxQuote) -> list[x509.Certificate]:
    """The PCK chain embedded in ``quote``: leaf, Platform/Processor CA, root (not yet verified).

    Raises:
        FormatError: the PEM does not hold exactly three decodable certificates.
    """
    return list(_load_pck_chain(quote.pck_chain_pem.rstrip(b"\x00")))


@functools.lru_cache(maxsize=64)
def _load_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    # A platform's quotes all carry the same chain: decode it once (failures are not cached).
    try:
        with warnings.catch_warnings():
            # Intel's certificates decode without warnings; a damaged one that only warns
            # (a malformed name attribute, say) is refused here rather than half-trusted.
            warnings.simplefilter("error")
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            certs = x509.load_pem_x509_certificates(pem)
            for cert in certs:
                # Decode now what cryptography decodes lazily, so a malformed certificate is a
                # FormatError here rather than an exception in the middle of chain checks.
                cert.subject.rfc4514_string()
                cert.issuer.rfc4514_string()
                cert.extensions  # noqa: B018
                cert.public_key()
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        Warning,
        x509.InvalidVersion,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ):
        raise FormatError(
            "the quote's PCK certificate chain is not readable PEM certificates",
            hint="pass the quote exactly as produced; its certification data is damaged",
        ) from None
    if len(certs) != 3:
        raise FormatError(
            f"the quote's PCK certificate chain holds {len(certs)} certificate(s), expected 3 "
            "(PCK certificate, Platform/Processor CA, Root CA)"
        )
    return tuple(certs)


def _p256_key(raw: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise SignatureError(
            f"the {what} is not a point on P-256, so no signature can verify with it",
            hint="the quote was altered",
        ) from None


def _verify_p256(key: ec.EllipticCurvePublicKey, sig: bytes, message: bytes) -> bool:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_chain_names(chain: Sequence[x509.Certificate]) -> None:
    leaf, intermediate = describe(chain[0]), describe(chain[1])
    if leaf != PCK_LEAF_CN or intermediate not in PCK_INTERMEDIATE_CNS:
        raise ChainError(
            f"the quote's PCK chain is '{leaf}' issued by '{intermediate}', expected "
            f"'{PCK_LEAF_CN}' issued by an Intel SGX PCK Platform or Processor CA"
        )


def verify_quote(
    quote: TdxQuote,
    *,
    at: datetime,
    roots: TrustStore | None = None,
    collateral: TdxCollateral | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    kind: str = "tdx",
) -> Claims:
    """Verify ``quote`` to a pinned root and return its claims.

    Args:
        quote: a parsed quote.
        at: the verification time (certificates, CRLs and collateral must be valid then).
        roots: the roots accepted (default: the pinned Intel SGX Root CA only).
        collateral: Intel PCS TCB info and QE identity; adds ``tcb_status`` to the claims.
        crls: CRLs to check the PCK chain against, besides those in ``collateral``.
        kind: the evidence kind the claims are labelled with.

    Raises:
        FormatError: the embedded PCK chain is unreadable.
        ChainError: the PCK chain is mis-signed, expired, revoked or not pinned.
        SignatureError: the quote or QE report signature does not verify.
        BindingError: the QE report does not vouch for the attestation key.
        CollateralError, TcbError: collateral is invalid, stale, for another platform, or no
            TCB level matches.
    """
    roots = roots if roots is not None else TrustStore.of(INTEL_SGX_ROOT)
    # (1) PCK chain, to a pinned root, and not revoked.
    chain = pck_chain(quote)
    anchor = verify_chain(chain, roots=roots, at=at)
    _check_chain_names(chain)
    all_crls = (*crls, *(collateral.crls if collateral else ()))
    check_revocation(all_crls, chain, at=at)
    pck_key = chain[0].public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey) or pck_key.curve.name != "secp256r1":
        raise ChainError(f"the PCK certificate '{describe(chain[0])}' does not hold an EC P-256 key")
    pck = parse_pck_extensions(chain[0])
    # (2) Quote signature by the attestation key over header and body.
    attestation_key = _p256_key(quote.attestation_key, "quote's attestation key")
    if not _verify_p256(attestation_key, quote.signature, quote.signed_bytes):
        raise SignatureError(
            "the TDX quote signature does not verify with the quote's attestation key over the "
            "header and TD report body: the quote was altered",
            hint="pass the quote exactly as the quoting enclave produced it",
        )
    # (3) QE report signature by the PCK leaf.
    if not _verify_p256(pck_key, quote.qe_report_signature, quote.qe_report.raw):
        raise SignatureError(
            "the QE report signature does not verify with the PCK certificate's key: the QE "
            "report was altered or comes from another platform",
            hint="pass the quote exactly as the quoting enclave produced it",
        )
    # (4) The QE report vouches for the attestation key.
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest() + bytes(32)
    if quote.qe_report.report_data != expected:
        raise BindingError(
            f"the QE report's REPORTDATA {quote.qe_report.report_data[:32].hex()}... is not "
            f"SHA-256(attestation key ‖ QE auth data) {expected[:32].hex()} followed by zeros: "
            "the quoting enclave did not vouch for this attestation key",
            hint="the quote was altered or assembled from parts of different quotes",
        )
    details = quote_details(quote, pck)
    details["root"] = anchor.name
    # (5) Collateral: TCB status of the platform, the TDX module and the QE.
    if collateral is not None:
        details.update(appraise_collateral(quote, pck, collateral, at=at, roots=roots))
    return Claims(
        kind=kind,
        simulated=anchor.simulated,
        debug=quote.debug,
        report_data=quote.body.report_data,
        details=details,
    )


def appraise_collateral(
    quote: TdxQuote,
    pck: PckExtensions,
    collateral: TdxCollateral,
    *,
    at: datetime,
    roots: TrustStore | None = None,
) -> dict[str, Any]:
    """Verify ``collateral`` and look up the quote's TCB and QE status in it (claims, JSON-ready).

    ``tcb_status`` is the worst of the platform level, the TDX module level (when TEE_TCB_SVN
    names a module version) and the QE level; each is reported on its own too.

    Raises:
        ChainError, SignatureError, CollateralError, TcbError: see
        :func:`~jupyter_cc.attest.tdx.collateral.verify_collateral`,
        :func:`~jupyter_cc.attest.tdx.collateral.match_tcb_level` and
        :func:`~jupyter_cc.attest.tdx.collateral.match_qe_identity`.
    """
    verify_collateral(collateral, at=at, roots=roots)
    qe = quote.qe_report
    qe_match = match_qe_identity(
        collateral.qe_identity,
        miscselect=qe.miscselect,
        attributes=qe.attributes,
        mrsigner=qe.mrsigner,
        isvprodid=qe.isv_prod_id,
        isvsvn=qe.isv_svn,
    )
    tcb = match_tcb_level(
        collateral.tcb_info,
        pck,
        tee_tcb_svn=quote.body.tee_tcb_svn,
        mrsignerseam=quote.body.mrsignerseam,
        seam_attributes=quote.body.seam_attributes,
    )
    out: dict[str, Any] = {
        "tcb_status": worst_status(tcb.status, qe_match.status),
        "platform_tcb_status": tcb.level.tcb_status,
        "qe_tcb_status": qe_match.status,
        "tcb_date": tcb.level.tcb_date,
        "tcb_evaluation_data_number": collateral.tcb_info.tcb_evaluation_data_number,
        "advisory_ids": list(dict.fromkeys((*tcb.advisory_ids, *qe_match.advisory_ids))),
    }
    if tcb.module_level is not None:
        out["tdx_module_id"] = tcb.module_id
        out["tdx_module_tcb_status"] = tcb.module_level.tcb_status
    return out


def quote_details(quote: TdxQuote, pck: PckExtensions | None = None) -> dict[str, Any]:
    """The per-kind claims of a TDX quote (design section 4), JSON-ready."""
    body = quote.body
    details: dict[str, Any] = {
        "mrtd": body.mrtd.hex(),
        "rtmr": [r.hex() for r in body.rtmr],
        "td_attributes": body.td_attributes.hex(),
        "tee_tcb_svn": body.tee_tcb_svn.hex(),
        "quote_version": quote.version,
        "body_type": quote.body_type,
        "mrseam": body.mrseam.hex(),
        "mrsignerseam": body.mrsignerseam.hex(),
        "mrconfigid": body.mrconfigid.hex(),
        "mrowner": body.mrowner.hex(),
        "mrownerconfig": body.mrownerconfig.hex(),
        "xfam": body.xfam.hex(),
        "seam_attributes": body.seam_attributes.hex(),
        "qe_vendor_id": quote.qe_vendor_id.hex(),
    }
    if body.tee_tcb_svn2 is not None and body.mrservicetd is not None:
        details["tee_tcb_svn2"] = body.tee_tcb_svn2.hex()
        details["mrservicetd"] = body.mrservicetd.hex()
    if pck is not None:
        details["fmspc"] = pck.fmspc_hex
        details["pce_id"] = pck.pce_id_hex
    return details


def verify_tdx(
    quote_bytes: bytes,
    *,
    at: datetime,
    roots: TrustStore | None = None,
    tcb_info: bytes | None = None,
    qe_identity: bytes | None = None,
    collateral_chain: bytes | None = None,
    crls: Sequence[bytes] = (),
    kind: str = "tdx",
) -> Claims:
    """Parse and verify a quote with optional collateral, as ``jupyter-cc verify tdx`` does.

    TCB info, QE identity and their issuer chain go together: giving some but not all is an
    :class:`~jupyter_cc.errors.InputError` naming the missing option. CRLs (DER or PEM) may be
    given with or without them.

    Raises:
        InputError: incomplete or unreadable collateral.
        FormatError, ChainError, SignatureError, BindingError, CollateralError, TcbError: see
            :func:`parse_quote` and :func:`verify_quote`.
    """
    parts = {"--tcb-info": tcb_info, "--qe-identity": qe_identity, "--collateral-chain": collateral_chain}
    given = [name for name, value in parts.items() if value is not None]
    missing = [name for name, value in parts.items() if value is None]
    if given and missing:
        raise InputError(
            f"{', '.join(given)} given without {', '.join(missing)}",
            hint="TDX collateral needs the TCB info, the QE identity and their issuer chain together",
        )
    loaded_crls = [load_crl(c, what=f"CRL {i + 1}") for i, c in enumerate(crls)]
    collateral = None
    if tcb_info is not None and qe_identity is not None and collateral_chain is not None:
        collateral = load_collateral(
            tcb_info=tcb_info, qe_identity=qe_identity, issuer_chain=collateral_chain
        )
    quote = parse_quote(quote_bytes)
    return verify_quote(quote, at=at, roots=roots, collateral=collateral, crls=loaded_crls, kind=kind)

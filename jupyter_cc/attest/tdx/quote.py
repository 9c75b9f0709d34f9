"""Intel TDX DCAP quotes (versions 4 and 5): their byte layout, parsed without judgement.

Layout follows docs/attestation-formats.md section 2 (gotdx ``abi/abi.go``). A quote is a
48-byte header, a TD report body (584 bytes for TDX 1.0, 648 for TDX 1.5; v5 quotes name the
body type and size), and signature data: the quote signature by the attestation key, that key,
and the quoting enclave's (QE) report signed by the platform's PCK certificate, whose chain
travels in the quote. Every length is bounds-checked, so any input either parses or raises
:class:`~jupyter_cc.errors.FormatError`; trailing padding after the signature data (seen on
real quotes) is kept as ``extra_bytes``. Verification is :mod:`jupyter_cc.attest.tdx.pck`'s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jupyter_cc.attest.reader import Reader
from jupyter_cc.errors import FormatError

if TYPE_CHECKING:
    from jupyter_cc.attest.tdx.pck import PckExtensions

__all__ = [
    "BODY_TYPE_TDX10",
    "BODY_TYPE_TDX15",
    "QeReport",
    "TdxQuote",
    "TdxQuoteBody",
    "parse_quote",
    "quote_details",
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


def _reader(data: bytes, pos: int = 0, end: int | None = None) -> Reader:
    """Bounds-checked reads from the quote; running past the end is a FormatError."""
    return Reader(
        data,
        ends="the TDX quote ends inside its ",
        hint="pass the whole quote as produced by the quoting enclave",
        pos=pos,
        end=end,
    )


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
    r = _reader(raw)
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

    The result is immutable and the last few are kept by their bytes: finding a quote's
    collateral and verifying it read the same quote one after the other.

    Raises:
        FormatError: too short, wrong version, TEE type, key type, body type or certification
            data type, or a length field that points past its container.
    """
    return _parse_quote(bytes(data))


@functools.lru_cache(maxsize=8)
def _parse_quote(data: bytes) -> TdxQuote:
    r = _reader(data)
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
    s = _reader(data, r.pos, sig_end)
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

"""NVIDIA confidential GPU evidence: parse the SPDM measurement report, verify it to NVIDIA's root.

An H100 in CC mode returns, for a caller's 32-byte nonce, an SPDM 1.1 GET_MEASUREMENTS request
followed by the signed MEASUREMENTS response, and a PEM chain for the GPU's attestation key
(docs/attestation-formats.md section 6). Verification, in order:

1. the chain (leaf first) links to the pinned NVIDIA Device Identity CA, whatever the subject
   names of its certificates say;
2. the ECDSA P-384 / SHA-384 signature (r and s big-endian, at the offset the lengths give)
   verifies over request and response with the leaf's key;
3. the request nonce is the one the caller chose, when the caller gives it;
4. the FWID in the response's opaque data equals the FWID in the leaf's TCG DICE extension,
   which ties the signed report to the firmware the certificate was issued to.

5. the chip is of a supported architecture (:data:`SUPPORTED_CHIPS`: Hopper GH100), as named
   by the verified chain;
6. with ``collateral`` (:class:`~jupyter_cc.attest.nvidia_rim.GpuCollateral`, which
   :mod:`jupyter_cc.collateral.nvidia` gathers): the driver and VBIOS RIMs verify to the pinned
   NVIDIA CoRIM signing Root CA and every active measurement matches
   (:mod:`jupyter_cc.attest.nvidia_rim`); OCSP answers for the device chain (below the leaf the
   GPU mints itself) and both RIM chains verify and say ``good``
   (:mod:`jupyter_cc.attest.nvidia_ocsp`). A RIM or OCSP answer that is present and wrong is
   an error; one that is absent is claimed ``unchecked`` with the reason, for the policy.

Claims that the policy judges: ``arch``, ``driver_version``, ``vbios_version``, ``cc_mode``
(``on``: the GPU's attestation key signs measurement reports only in CC mode; ``ppcie`` when
the signed protected-PCIe field says the system is in multi-GPU protected PCIe mode instead),
``rim`` (``verified`` | ``unchecked``), ``revocation`` (``checked`` | ``unchecked``), and
``debug``: False only when the measurements matched NVIDIA's RIMs, which are signed for the
production (non-devtools) firmware state; without that comparison debug cannot be excluded and
is claimed True (fail closed). ``ppcie`` is the signed protected-PCIe opaque field when the
report has one.

>>> report = parse_spdm_report(decode_blob(open("h100.report.hex", "rb").read()))  # doctest: +SKIP
>>> claims = verify_nvidia(report.raw, chain_pem, at=utcnow(), nonce=my_nonce)      # doctest: +SKIP
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding

from jupyter_cc.attest import der
from jupyter_cc.attest.certs import describe, load_certificate, load_certificates, verify_chain
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.reader import Reader
from jupyter_cc.attest.roots import NVIDIA_DEVICE_ROOT, TrustStore
from jupyter_cc.errors import BindingError, ChainError, FormatError, InputError, SignatureError

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence
    from jupyter_cc.attest.nvidia_rim import GpuCollateral

__all__ = [
    "REQUEST_SIZE",
    "SIGNATURE_SIZE",
    "SUPPORTED_CHIPS",
    "MeasurementBlock",
    "OpaqueField",
    "SpdmReport",
    "dice_fwid",
    "parse_spdm_report",
    "supported_chip",
    "verify_evidence",
    "verify_nvidia",
]

SPDM_VERSION = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_SIZE = 37
NONCE_SIZE = 32
SIGNATURE_SIZE = 96
FWID_SIZE = 48
DMTF_SPEC = 0x01

OPAQUE_PPCIE = 21
PPCIE_ON = b"\xaa"  # the signed protected-PCIe status byte: 0xAA on, 0x55 off
# The chip families whose reports, chains and RIMs this verifier understands, by chip name.
SUPPORTED_CHIPS = {"GH100": "hopper"}
_CHIP = re.compile(r"\b(G[A-Z]\d{3})\b")

OPAQUE_DRIVER_VERSION = 3
OPAQUE_VBIOS_VERSION = 6
OPAQUE_FWID = 20
OPAQUE_NAMES = {
    3: "driver_version",
    4: "gpu_info",
    5: "sku",
    6: "vbios_version",
    7: "manufacturer_id",
    11: "nvdec0_status",
    12: "msrscnt",
    14: "board_id",
    15: "chip_sku",
    16: "chip_sku_mod",
    17: "project",
    18: "project_sku",
    19: "project_sku_mod",
    13: "cpr_info",
    20: "fwid",
    21: "protected_pcie_status",
    34: "opaque_data_version",
    35: "chip_info",
}

OID_DICE_TCB_INFO = "2.23.133.5.4.1"
# DER of the SHA-384 OID (2.16.840.1.101.3.4.2.2) as it appears in an FWID.
_SHA384_OID_DER = bytes.fromhex("0609608648016503040202")


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block: index, DMTF value type and the value (a digest on Hopper)."""

    index: int
    value_type: int
    value: bytes

    @property
    def is_digest(self) -> bool:
        """DMTF value type bit 7 clear: the value is a digest, not a raw bit stream."""
        return not self.value_type & 0x80


@dataclass(frozen=True)
class OpaqueField:
    """One NVIDIA opaque-data TLV of the response."""

    type: int
    value: bytes

    @property
    def name(self) -> str:
        return OPAQUE_NAMES.get(self.type, f"type_{self.type}")


@dataclass(frozen=True)
class SpdmReport:
    """A GET_MEASUREMENTS request and its signed MEASUREMENTS response, fields kept raw."""

    raw: bytes
    request: bytes
    response: bytes
    spdm_version: int
    request_param1: int
    request_param2: int
    nonce: bytes
    slot_id: int
    response_param1: int
    response_param2: int
    blocks: tuple[MeasurementBlock, ...]
    response_nonce: bytes
    opaque: bytes
    opaque_fields: tuple[OpaqueField, ...]
    signature_offset: int  # into ``response``
    signature: bytes
    trailing: int  # bytes after the signature, ignored (one real sample carries a 0x00)

    @property
    def signed_bytes(self) -> bytes:
        """request ‖ response up to the signature: what the GPU signed."""
        return self.request + self.response[: self.signature_offset]

    def field(self, type_: int) -> bytes | None:
        """The value of opaque TLV ``type_`` (the parser refuses duplicates of known types)."""
        for f in self.opaque_fields:
            if f.type == type_:
                return f.value
        return None

    @property
    def fwid(self) -> bytes | None:
        return self.field(OPAQUE_FWID)

    @property
    def driver_version(self) -> str | None:
        value = self.field(OPAQUE_DRIVER_VERSION)
        return None if value is None else _c_string(value)

    @property
    def vbios_version(self) -> str | None:
        value = self.field(OPAQUE_VBIOS_VERSION)
        return None if value is None else _vbios(value)


def _c_string(value: bytes) -> str:
    return value.split(b"\x00", 1)[0].decode("utf-8", "replace")


def _vbios(value: bytes) -> str:
    text = value.rstrip(b"\x00")
    if text and all(32 <= b < 127 for b in text):
        return text.decode("ascii")
    # Hopper: 8 little-endian bytes shown as five dotted hex pairs (nvtrust
    # utils.format_vbios_version), e.g. 00 9f 00 96 01 00 00 00 -> 96.00.9f.00.01.
    digits = value[::-1].hex()
    half = len(digits) // 2
    temp = digits[half:] + digits[max(half - 2, 0) : half]
    return ".".join(temp[i : i + 2] for i in range(0, len(temp), 2))


def _reader(data: bytes, what: str) -> Reader:
    """Bounds-checked little-endian reader; every short read is a FormatError."""
    return Reader(data, ends=f"the {what} ends inside ", hint="pass the complete report as NVML returned it")


def _parse_records(data: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    reader = _reader(data, "SPDM measurement record")
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    while reader.pos < len(data):
        index = reader.u8("a measurement block index")
        spec = reader.u8(f"measurement block {index}")
        size = reader.u16(f"measurement block {index}")
        body = _reader(reader.take(size, f"measurement block {index}"), f"measurement block {index}")
        if not spec & DMTF_SPEC:
            raise FormatError(
                f"measurement block {index} uses measurement specification 0x{spec:02x}; only the "
                "DMTF format (bit 0) is understood"
            )
        value_type = body.u8("its DMTF value type")
        value_size = body.u16("its DMTF value size")
        value = body.take(value_size, "its DMTF value")
        if body.pos != size:
            raise FormatError(
                f"measurement block {index} is {size} bytes but its DMTF value fills {body.pos}"
            )
        if index in seen:
            raise FormatError(f"measurement block index {index} appears twice")
        seen.add(index)
        blocks.append(MeasurementBlock(index=index, value_type=value_type, value=value))
    if len(blocks) != count:
        raise FormatError(f"the SPDM response announces {count} measurement blocks but holds {len(blocks)}")
    return tuple(blocks)


def _parse_opaque(data: bytes) -> tuple[OpaqueField, ...]:
    reader = _reader(data, "SPDM opaque data")
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while reader.pos < len(data):
        type_ = reader.u16("an opaque field type")
        size = reader.u16(f"opaque field {type_}")
        value = reader.take(size, f"opaque field {type_}")
        if type_ in OPAQUE_NAMES and type_ in seen:
            raise FormatError(f"opaque field {OPAQUE_NAMES[type_]} (type {type_}) appears twice")
        seen.add(type_)
        fields.append(OpaqueField(type=type_, value=value))
    return tuple(fields)


def parse_spdm_report(data: bytes) -> SpdmReport:
    """Parse NVML's attestation report: GET_MEASUREMENTS request ‖ MEASUREMENTS response.

    The signature is taken at the offset that the announced lengths give, not from the end of
    the input; bytes after it are counted in ``trailing`` and otherwise ignored.

    Raises:
        FormatError: the bytes are not an SPDM 1.1 signed measurement exchange.
    """
    if len(data) < REQUEST_SIZE:
        raise FormatError(
            f"an NVIDIA attestation report starts with a {REQUEST_SIZE}-byte SPDM request, "
            f"this input is {len(data)} bytes",
            hint="pass the report from nvmlDeviceGetConfComputeGpuAttestationReport (hex or binary)",
        )
    request, response = bytes(data[:REQUEST_SIZE]), bytes(data[REQUEST_SIZE:])
    if request[0] != SPDM_VERSION or request[1] != GET_MEASUREMENTS:
        raise FormatError(
            f"the report does not start with an SPDM 1.1 GET_MEASUREMENTS request (11 e0), "
            f"found {request[:2].hex(' ')}",
            hint="pass the GPU attestation report (request and response), not the certificate chain",
        )
    param1, param2 = request[2], request[3]
    if not param1 & 0x01:
        raise FormatError("the SPDM request did not ask for a signature (param1 bit 0 clear)")
    reader = _reader(response, "SPDM MEASUREMENTS response")
    version, code = reader.u8("the response header"), reader.u8("the response header")
    if version != SPDM_VERSION or code != MEASUREMENTS:
        raise FormatError(
            f"the SPDM response header is {version:02x} {code:02x}, expected 11 60 (SPDM 1.1 MEASUREMENTS)"
        )
    r_param1, r_param2 = reader.u8("the response header"), reader.u8("the response header")
    count = reader.u8("the number of measurement blocks")
    record_len = reader.u24("the measurement record length")
    blocks = _parse_records(reader.take(record_len, "the measurement record"), count)
    response_nonce = reader.take(NONCE_SIZE, "the response nonce")
    opaque_len = reader.u16("the opaque data length")
    opaque = reader.take(opaque_len, "the opaque data")
    fields = _parse_opaque(opaque)
    sig_offset = reader.pos
    signature = reader.take(SIGNATURE_SIZE, "the signature")
    fwid = next((f.value for f in fields if f.type == OPAQUE_FWID), None)
    if fwid is not None and len(fwid) != FWID_SIZE:
        raise FormatError(f"the opaque FWID is {len(fwid)} bytes, expected {FWID_SIZE} (SHA-384)")
    return SpdmReport(
        raw=bytes(data),
        request=request,
        response=response,
        spdm_version=version,
        request_param1=param1,
        request_param2=param2,
        nonce=request[4 : 4 + NONCE_SIZE],
        slot_id=request[36],
        response_param1=r_param1,
        response_param2=r_param2,
        blocks=blocks,
        response_nonce=response_nonce,
        opaque=opaque,
        opaque_fields=fields,
        signature_offset=sig_offset,
        signature=signature,
        trailing=len(response) - reader.pos,
    )


# --- the leaf's TCG DICE extension -----------------------------------------------------------


def _fwids(content: bytes, what: str, depth: int = 0) -> list[bytes]:
    """Every SHA-384 FWID (SEQUENCE { OID sha384, OCTET STRING }) inside constructed DER."""
    if depth > 8:
        raise FormatError(f"{what} nests DER deeper than expected")
    found: list[bytes] = []
    for tag, body in der.items(content, what):
        if not tag & 0x20:  # primitive
            continue
        if tag == 0x30 and body.startswith(_SHA384_OID_DER):
            rest = der.items(body[len(_SHA384_OID_DER) :], what)
            if len(rest) == 1 and rest[0][0] == 0x04:
                found.append(rest[0][1])
                continue
        found.extend(_fwids(body, what, depth + 1))
    return found


def dice_fwid(cert: x509.Certificate) -> bytes | None:
    """The SHA-384 FWID in ``cert``'s TCG DICE TcbInfo extension, or None if it has none.

    NVIDIA's GPU leaf carries ``SEQUENCE { INTEGER, SubjectPublicKeyInfo, SEQUENCE { sha384,
    OCTET STRING } }``; the FWID is the last SHA-384 digest in it (the "last 48 bytes" that
    trustee compares), found here by walking the DER rather than by offset.

    Raises:
        FormatError: the extension is not well-formed DER or holds no 48-byte SHA-384 FWID.
    """
    for ext in cert.extensions:
        if ext.oid.dotted_string != OID_DICE_TCB_INFO:
            continue
        value = ext.value
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        what = f"the DICE extension of '{describe(cert)}'"
        top = der.items(raw, what)
        if len(top) != 1 or top[0][0] != 0x30:
            raise FormatError(f"{what} is not a single DER SEQUENCE")
        fwids = _fwids(raw, what)
        if not fwids:
            raise FormatError(f"{what} holds no SHA-384 FWID")
        fwid = fwids[-1]
        if len(fwid) != FWID_SIZE:
            raise FormatError(f"{what} holds a {len(fwid)}-byte FWID, expected {FWID_SIZE}")
        return fwid
    return None


# --- verification ----------------------------------------------------------------------------


def _chain(chain_pem: bytes, root_pem: bytes | None) -> list[x509.Certificate]:
    certs = load_certificates(chain_pem, what="GPU certificate chain")
    if root_pem is None:
        return certs
    root = load_certificate(root_pem, what="NVIDIA root certificate")
    last = certs[-1]
    if last.public_bytes(Encoding.DER) == root.public_bytes(Encoding.DER):
        return certs
    if last.issuer == last.subject and len(certs) > 1:
        raise ChainError(
            f"the GPU chain already ends at the self-signed '{describe(last)}', "
            f"which is not the root certificate given separately ('{describe(root)}')",
            hint="pass the chain without a root, or the root it ends at",
        )
    return [*certs, root]


def _verify_signature(report: SpdmReport, key: ec.EllipticCurvePublicKey) -> None:
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed_bytes, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise SignatureError(
            "the GPU attestation report's signature does not verify with the leaf certificate's "
            "key: the report was altered or comes from another GPU",
            hint="pass the certificate chain NVML returned together with this report",
        ) from None


def verify_nvidia(
    report: bytes | SpdmReport,
    chain_pem: bytes,
    *,
    at: datetime,
    roots: TrustStore | None = None,
    nonce: bytes | None = None,
    root_pem: bytes | None = None,
    collateral: GpuCollateral | None = None,
) -> Claims:
    """Verify an NVIDIA GPU attestation report with its certificate chain (kind ``nvidia``).

    Args:
        report: the raw report bytes (decode hex or base64 with ``decode_blob`` first) or a
            parsed :class:`SpdmReport`.
        chain_pem: the GPU certificate chain, leaf first; the root may be included or not.
        at: the verification time.
        roots: the roots accepted (default: only the pinned NVIDIA Device Identity CA).
        nonce: the 32-byte nonce the caller asked the GPU to sign, if it is to be checked.
        root_pem: the root certificate, appended when the chain file lacks it. It adds no
            trust: the root must still be pinned in ``roots``.
        collateral: RIMs and OCSP answers (module docstring, step 6); None: both unchecked.

    Raises:
        FormatError, ChainError, SignatureError, BindingError: the failed check, by name.
        MeasurementError: a measurement or version differs from NVIDIA's signed RIMs.
    """
    if at.tzinfo is None:
        raise InputError("the verification time must carry a timezone (use UTC)")
    parsed = report if isinstance(report, SpdmReport) else parse_spdm_report(report)
    if nonce is not None and len(nonce) != NONCE_SIZE:
        raise InputError(f"the expected GPU nonce must be {NONCE_SIZE} bytes, {len(nonce)} were given")
    certs = _chain(chain_pem, root_pem)
    if roots is None:
        roots = TrustStore.of(NVIDIA_DEVICE_ROOT)
    anchor = verify_chain(certs, roots=roots, at=at, end_entity="the GPU attestation certificate")
    leaf = certs[0]
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ChainError(f"the GPU leaf certificate '{describe(leaf)}' does not hold an EC P-384 key")
    _verify_signature(parsed, key)
    if nonce is not None and parsed.nonce != nonce:
        raise BindingError(
            f"the GPU report answers nonce {parsed.nonce.hex()}, not the expected {nonce.hex()}",
            hint="the report is a replay or was requested by someone else; request a fresh one",
        )
    report_fwid = parsed.fwid
    leaf_fwid = dice_fwid(leaf)
    if report_fwid is not None:
        if leaf_fwid is None:
            raise BindingError(
                f"the GPU report carries FWID {report_fwid.hex()[:16]}... but the leaf "
                f"'{describe(leaf)}' has no DICE TcbInfo extension to compare it with"
            )
        if leaf_fwid != report_fwid:
            raise BindingError(
                f"the GPU report's FWID {report_fwid.hex()[:16]}... differs from the leaf "
                f"certificate's {leaf_fwid.hex()[:16]}...",
                hint="report and chain come from different firmware; pass both from the same GPU",
            )
    chip = supported_chip(certs)
    appraised = _appraise_collateral(parsed, certs, collateral, at)
    details = report_details(parsed) | {"root": anchor.name, "fwid_checked": report_fwid is not None}
    ppcie = parsed.field(OPAQUE_PPCIE) == PPCIE_ON
    details |= {
        "chip": chip,
        "arch": SUPPORTED_CHIPS[chip],
        "cc_mode": "ppcie" if ppcie else "on",
    } | appraised
    return Claims(
        kind="nvidia",
        simulated=anchor.simulated,
        debug=appraised["rim"] != "verified",
        report_data=parsed.nonce,
        details=details,
    )


def supported_chip(chain: list[x509.Certificate]) -> str:
    """The chip (``GH100``) the verified chain names; FormatError for an unsupported one."""
    for cert in chain:
        found = _CHIP.search(describe(cert))
        if found is None:
            continue
        if found.group(1) not in SUPPORTED_CHIPS:
            raise FormatError(
                f"the GPU is a {found.group(1)}, an architecture this verifier does not support "
                f"(supported: {', '.join(f'{c} ({a})' for c, a in SUPPORTED_CHIPS.items())})"
            )
        return found.group(1)
    raise FormatError("the GPU certificate chain names no chip (like GH100), so its architecture is unknown")


def _appraise_collateral(
    report: SpdmReport, certs: list[x509.Certificate], collateral: GpuCollateral | None, at: datetime
) -> dict[str, Any]:
    """RIM and OCSP claims (module docstring, step 6); raises for anything present and wrong."""
    from jupyter_cc.attest.nvidia_ocsp import ocsp_targets, unique_pairs
    from jupyter_cc.attest.nvidia_rim import appraise_rims, verify_rim

    notes = list(collateral.notes) if collateral is not None else ["no RIM or OCSP collateral was given"]
    out: dict[str, Any] = {"rim": "unchecked", "revocation": "unchecked"}
    pairs = ocsp_targets(certs, skip_leaf=True)
    if collateral is not None and collateral.driver_rim is not None and collateral.vbios_rim is not None:
        rim_roots = collateral.rim_roots
        driver = verify_rim(collateral.driver_rim, at=at, roots=rim_roots, what="driver RIM")
        vbios = verify_rim(collateral.vbios_rim, at=at, roots=rim_roots, what="VBIOS RIM")
        out |= appraise_rims(report, driver=driver, vbios=vbios).details()
        pairs += ocsp_targets(list(driver.chain), skip_leaf=False) + ocsp_targets(
            list(vbios.chain), skip_leaf=False
        )
    if collateral is not None:
        missing = _check_ocsp(unique_pairs(pairs), collateral.ocsp, at)
        notes += [f"no OCSP answer about '{name}'" for name in missing if not any(name in n for n in notes)]
        if not missing and out["rim"] == "verified":
            out["revocation"] = "checked"
    if notes and (out["rim"] != "verified" or out["revocation"] != "checked"):
        out["collateral_notes"] = notes
    return out


def _check_ocsp(
    pairs: list[tuple[x509.Certificate, x509.Certificate]], responses: tuple[bytes, ...], at: datetime
) -> list[str]:
    """Judge the answer about each (certificate, issuer); the names of those with none."""
    from cryptography.x509 import ocsp

    by_serial: dict[int, list[bytes]] = {}
    for der_bytes in responses:
        try:
            parsed = ocsp.load_der_ocsp_response(der_bytes)
            serials = [r.serial_number for r in parsed.responses]
        except ValueError:
            raise FormatError("an OCSP answer given for the GPU is not a DER OCSP response") from None
        for serial in serials:
            by_serial.setdefault(serial, []).append(der_bytes)
    missing = []
    for cert, issuer in pairs:
        if not any(
            _answered(der_bytes, cert, issuer, at) for der_bytes in by_serial.get(cert.serial_number, [])
        ):
            missing.append(describe(cert))
    return missing


def _answered(der_bytes: bytes, cert: x509.Certificate, issuer: x509.Certificate, at: datetime) -> bool:
    """Whether this answer is about ``cert`` from ``issuer`` (then judged: revoked, stale or
    forged raise); False for an answer about another issuer's certificate of the same serial."""
    from jupyter_cc.attest.nvidia_ocsp import check_response

    try:
        check_response(der_bytes, cert, issuer, at=at)
    except BindingError:
        return False
    return True


def report_details(report: SpdmReport) -> dict[str, Any]:
    """The per-kind claims of a GPU report (design section 4), JSON-ready."""
    fwid = report.fwid
    details: dict[str, Any] = {
        "measurements": len(report.blocks),
        "fwid": fwid.hex() if fwid is not None else None,
        "nonce": report.nonce.hex(),
        "spdm_version": f"{report.spdm_version >> 4}.{report.spdm_version & 0xF}",
        "measurement_blocks": [{"index": b.index, "digest": b.value.hex()} for b in report.blocks],
        "trailing_bytes": report.trailing,
    }
    if report.driver_version is not None:
        details["driver_version"] = report.driver_version
    if report.vbios_version is not None:
        details["vbios_version"] = report.vbios_version
    ppcie = report.field(OPAQUE_PPCIE)
    if ppcie is not None:
        details["ppcie"] = ppcie.hex()
    return details


def verify_evidence(ev: Evidence, *, at: datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``nvidia``: the SPDM report with the GPU chain beside it."""
    chain = ev.require("chain_pem", "the GPU certificate chain", "pass --chain with the chain NVML returned")
    return verify_nvidia(ev.binary(), chain, at=at, roots=roots, nonce=ev.nonce, collateral=ev.gpu_collateral)

"""The Azure vTPM's HCL report and its runtime data: layout, parsing, and how they bind together.

On an Azure CVM the paravisor (HCL) asks the CPU for a hardware report (an SEV-SNP
ATTESTATION_REPORT or a TDX TDREPORT) whose REPORT_DATA starts with a hash of the HCL's
*runtime data*: a JSON document naming the vTPM's attestation key (HCLAkPub) and endorsement
key (HCLEkPub), the VM configuration and 64 bytes of user data. The HCL writes the result into
TPM NV index 0x01400001. Layout (docs/attestation-formats.md section 3.1, little-endian):

====== ===== ==========================================================================
offset size  field
====== ===== ==========================================================================
0x000  4     signature ``HCLA``
0x004  4     header version
0x008  4     report size
0x00C  4     request type
0x010  4     status (then 12 reserved bytes)
0x020  1184  hardware report: SNP ATTESTATION_REPORT, or a TDREPORT in its first 1024 bytes
0x4C0  20    IGVM request data: data_size, version, report_type (2 SNP, 4 TDX),
             report_data_hash_type (1 SHA-256, 2 SHA-384, 3 SHA-512), variable_data_size
0x4D4  n     variable data (the runtime JSON), then NUL padding to the NV index size
====== ===== ==========================================================================

Only the hardware report is signed, so the chain of trust is: hardware signature → REPORT_DATA
→ hash of the runtime data → HCLAkPub → TPM quote (PCRs and the verifier's nonce). Each link is
checked in this package; what is *acceptable* (secure boot, measurements) is left to the policy.

Signatures are checked by :mod:`jupyter_cc.attest.azure.verify`.

>>> hcl = verify_hcl_binding(open("hcl-report.bin", "rb").read())   # doctest: +SKIP
>>> hcl.report_type_name, hcl.runtime.vm_configuration["secure-boot"]  # doctest: +SKIP
('snp', True)
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from jupyter_cc.attest import snp
from jupyter_cc.attest.claims import Claims, freeze
from jupyter_cc.decoding import b64decode_any, decode_hex, strict_json
from jupyter_cc.errors import BindingError, FormatError, InputError

__all__ = [
    "HASH_TYPES",
    "HCL_SIGNATURE",
    "REPORT_TYPES",
    "REPORT_TYPE_SNP",
    "REPORT_TYPE_TDX",
    "TD_REPORT_SIZE",
    "VARIABLE_DATA_OFFSET",
    "HclReport",
    "RuntimeData",
    "TdReport",
    "azure_details",
    "bind_td_quote",
    "parse_hcl_report",
    "parse_runtime_data",
    "parse_td_report",
    "verify_hcl_binding",
]

HCL_SIGNATURE = b"HCLA"
HW_REPORT_OFFSET = 0x20
HW_REPORT_SIZE = 1184
IGVM_OFFSET = 0x4C0
VARIABLE_DATA_OFFSET = 0x4D4
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
REPORT_TYPES = {REPORT_TYPE_SNP: "snp", REPORT_TYPE_TDX: "tdx"}
# Other report types exist (1 VBS, 3 TrustedLaunch) but carry no TEE hardware report.
OTHER_REPORT_TYPES = {1: "VBS", 3: "TrustedLaunch"}
HASH_TYPES: Mapping[int, tuple[str, Callable[[bytes], bytes]]] = {
    1: ("sha256", lambda b: hashlib.sha256(b).digest()),
    2: ("sha384", lambda b: hashlib.sha384(b).digest()),
    3: ("sha512", lambda b: hashlib.sha512(b).digest()),
}
SNP_REPORT_DATA = slice(0x50, 0x90)
TD_REPORT_SIZE = 1024
TDX_REPORT_TYPE_BYTE = 0x81
AK_KID = "HCLAkPub"
EK_KID = "HCLEkPub"


def _hex(data: bytes, n: int = 16) -> str:
    """A hex prefix of ``data`` for messages: the first ``n`` bytes, "..." when cut."""
    text = data[:n].hex()
    return text + "..." if len(data) > n else text or "(empty)"


# --- runtime data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeData:
    """The HCL runtime JSON, typed where the verifier relies on it.

    Attributes:
        document: the whole JSON object, read-only.
        keys: RSA public keys by ``kid`` (``HCLAkPub``, ``HCLEkPub``); keys of other types are
            in ``document`` only.
        vm_configuration: the ``vm-configuration`` object (empty when absent).
        user_data: the ``user-data`` bytes (hex-decoded), or None when absent.
    """

    document: Mapping[str, Any]
    keys: Mapping[str, rsa.RSAPublicKey]
    vm_configuration: Mapping[str, Any]
    user_data: bytes | None

    @property
    def ak_pub(self) -> rsa.RSAPublicKey:
        """HCLAkPub, the vTPM attestation key that signs TPM quotes."""
        return self._key(AK_KID)

    @property
    def ek_pub(self) -> rsa.RSAPublicKey:
        """HCLEkPub, the vTPM endorsement key."""
        return self._key(EK_KID)

    def _key(self, kid: str) -> rsa.RSAPublicKey:
        if kid not in self.keys:
            raise FormatError(
                f"the HCL runtime data has no RSA key with kid {kid} (found: "
                f"{', '.join(sorted(self.keys)) or 'none'})",
                hint="pass the HCL report read from TPM NV index 0x01400001 of an Azure CVM",
            )
        return self.keys[kid]

    def flag(self, name: str) -> bool | None:
        """A boolean of ``vm-configuration`` (``secure-boot``, ``tpm-enabled``), None if absent."""
        value = self.vm_configuration.get(name)
        if value is None or isinstance(value, bool):
            return value
        raise FormatError(f"HCL runtime vm-configuration {name} is {value!r}, expected true or false")

    def to_json(self) -> dict[str, Any]:
        """The runtime JSON as plain dicts and lists."""
        return _plain(self.document)  # type: ignore[no-any-return]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _b64_int(value: Any, field: str, kid: str) -> int:
    if not isinstance(value, str):
        raise FormatError(f"HCL runtime key {kid} field {field} is not a base64 string")
    try:
        raw = b64decode_any(value, what=f"HCL runtime key {kid} field {field}")
    except InputError as exc:
        raise FormatError(exc.message, hint=exc.hint) from None
    return int.from_bytes(raw, "big")


def _rsa_key(entry: Mapping[str, Any], kid: str) -> rsa.RSAPublicKey:
    n = _b64_int(entry.get("n"), "n", kid)
    e = _b64_int(entry.get("e"), "e", kid)
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise FormatError(f"HCL runtime key {kid} is not a valid RSA public key ({exc})") from None


def parse_runtime_data(data: bytes) -> RuntimeData:
    """Parse the HCL runtime JSON (the report's variable data).

    ``n`` and ``e`` are base64url by JWK, but Azure services are not consistent, so either
    alphabet is accepted, padded or not; a value that mixes the two is refused.

    Raises:
        FormatError: not a UTF-8 JSON object, repeated keys, malformed ``keys`` entries or
            RSA values, a ``vm-configuration`` that is not an object, or ``user-data`` not hex.
    """
    try:
        doc = strict_json(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(
            f"the HCL runtime data is not UTF-8 JSON ({str(exc)[:80]})",
            hint="pass the HCL report exactly as read from TPM NV index 0x01400001",
        ) from None
    if not isinstance(doc, dict):
        raise FormatError(f"the HCL runtime data is a JSON {type(doc).__name__}, expected an object")
    keys: dict[str, rsa.RSAPublicKey] = {}
    entries = doc.get("keys", [])
    if not isinstance(entries, list):
        raise FormatError("the HCL runtime data's 'keys' is not a list")
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            raise FormatError("an entry of the HCL runtime data's 'keys' is not an object with a 'kid'")
        kid = entry["kid"]
        if kid in seen:
            raise FormatError(f"the HCL runtime data names the key {kid} twice")
        seen.add(kid)
        if entry.get("kty") == "RSA":
            keys[kid] = _rsa_key(entry, kid)
    config = doc.get("vm-configuration", {})
    if not isinstance(config, dict):
        raise FormatError("the HCL runtime data's 'vm-configuration' is not an object")
    user_data = None
    if "user-data" in doc:
        value = doc["user-data"]
        if not isinstance(value, str):
            raise FormatError("the HCL runtime data's 'user-data' is not a hex string")
        try:
            user_data = decode_hex(value, what="the HCL runtime data's 'user-data'")
        except InputError as exc:
            raise FormatError(exc.message) from None
    return RuntimeData(document=freeze(doc), keys=keys, vm_configuration=freeze(config), user_data=user_data)


# --- TDREPORT -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TdReport:
    """A TDX TDREPORT_STRUCT (1024 bytes): REPORTMACSTRUCT, TEE_TCB_INFO and TDINFO."""

    raw: bytes
    report_type: bytes
    cpusvn: bytes
    tee_tcb_info_hash: bytes
    tee_info_hash: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_info: bytes
    attributes: bytes
    xfam: bytes
    mrtd: bytes
    mrconfigid: bytes
    mrowner: bytes
    mrownerconfig: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    servtd_hash: bytes


def parse_td_report(data: bytes) -> TdReport:
    """Parse a TDREPORT (the first 1024 bytes of ``data``; Azure pads it to 1184).

    Raises:
        FormatError: fewer than 1024 bytes, or REPORTTYPE.TYPE is not 0x81 (TDX).
    """
    if len(data) < TD_REPORT_SIZE:
        raise FormatError(f"a TDREPORT is {TD_REPORT_SIZE} bytes, this input is {len(data)}")
    raw = bytes(data[:TD_REPORT_SIZE])
    if raw[0] != TDX_REPORT_TYPE_BYTE:
        raise FormatError(
            f"TDREPORT REPORTTYPE.TYPE is 0x{raw[0]:02x}, expected 0x{TDX_REPORT_TYPE_BYTE:02x} (TDX)",
            hint="the HCL report says TDX but its hardware report is not a TDREPORT",
        )
    info = 512
    rtmr = tuple(raw[info + 208 + 48 * i : info + 256 + 48 * i] for i in range(4))
    return TdReport(
        raw=raw,
        report_type=raw[0:8],
        cpusvn=raw[16:32],
        tee_tcb_info_hash=raw[32:80],
        tee_info_hash=raw[80:128],
        report_data=raw[0x80:0xC0],
        mac=raw[0xE0:0x100],
        tee_tcb_info=raw[256:495],
        attributes=raw[info : info + 8],
        xfam=raw[info + 8 : info + 16],
        mrtd=raw[info + 16 : info + 64],
        mrconfigid=raw[info + 64 : info + 112],
        mrowner=raw[info + 112 : info + 160],
        mrownerconfig=raw[info + 160 : info + 208],
        rtmr=(rtmr[0], rtmr[1], rtmr[2], rtmr[3]),
        servtd_hash=raw[info + 400 : info + 448],
    )


# --- HCL report -----------------------------------------------------------------------------


@dataclass(frozen=True)
class HclReport:
    """An Azure HCL report (NV index 0x01400001), its runtime data parsed.

    ``hw_report`` is the whole 1184-byte hardware report area; :meth:`snp_report` and
    :meth:`td_report` parse it for the report type the IGVM request data names.
    """

    raw: bytes
    header_version: int
    report_size: int
    request_type: int
    status: int
    hw_report: bytes
    data_size: int
    igvm_version: int
    report_type: int
    report_data_hash_type: int
    variable_data: bytes
    runtime: RuntimeData

    @property
    def report_type_name(self) -> str:
        """``snp`` or ``tdx``."""
        return REPORT_TYPES[self.report_type]

    @property
    def hash_name(self) -> str:
        """``sha256``, ``sha384`` or ``sha512``: how the runtime data is bound."""
        return HASH_TYPES[self.report_data_hash_type][0]

    @property
    def hw_report_data(self) -> bytes:
        """The 64 REPORT_DATA bytes of the hardware report (SNP 0x50, TDREPORT 0x80)."""
        return _hw_report_data(self.report_type, self.hw_report)

    @property
    def runtime_digest(self) -> bytes:
        """The hash of the variable data with the declared hash type."""
        return HASH_TYPES[self.report_data_hash_type][1](self.variable_data)

    def snp_report(self) -> snp.SnpReport:
        """The inner SEV-SNP report, parsed (FormatError for a TDX HCL report)."""
        if self.report_type != REPORT_TYPE_SNP:
            raise FormatError(
                f"the HCL report holds a {self.report_type_name.upper()} report, not an SEV-SNP report",
                hint="verify it as az-tdx-vtpm",
            )
        return snp.parse_report(self.hw_report)

    def td_report(self) -> TdReport:
        """The inner TDREPORT, parsed (FormatError for an SNP HCL report)."""
        if self.report_type != REPORT_TYPE_TDX:
            raise FormatError(
                f"the HCL report holds an {self.report_type_name.upper()} report, not a TDREPORT",
                hint="verify it as az-snp-vtpm",
            )
        return parse_td_report(self.hw_report)


@dataclass(frozen=True)
class _Layout:
    header: tuple[int, int, int, int]
    hw_report: bytes
    igvm: tuple[int, int, int, int, int]
    variable_data: bytes


def _hw_report_data(report_type: int, hw_report: bytes) -> bytes:
    if report_type == REPORT_TYPE_SNP:
        return hw_report[SNP_REPORT_DATA]
    return hw_report[0x80:0xC0]


def _layout(data: bytes) -> _Layout:
    data = bytes(data)
    if len(data) < VARIABLE_DATA_OFFSET:
        raise FormatError(
            f"an HCL report is at least {VARIABLE_DATA_OFFSET} bytes (header, hardware report and "
            f"IGVM request data), this input is {len(data)}",
            hint="pass the whole content of TPM NV index 0x01400001",
        )
    if data[:4] != HCL_SIGNATURE:
        raise FormatError(
            f"an HCL report starts with 'HCLA', this input starts with {data[:4].hex()}",
            hint="pass the content of TPM NV index 0x01400001 (raw, hex or base64)",
        )
    header = struct.unpack_from("<4I", data, 4)
    data_size, version, report_type, hash_type, var_size = struct.unpack_from("<5I", data, IGVM_OFFSET)
    if report_type not in REPORT_TYPES:
        other = OTHER_REPORT_TYPES.get(report_type)
        raise FormatError(
            f"the HCL report's report_type is {report_type}"
            + (f" ({other})" if other else "")
            + ", expected 2 (SEV-SNP) or 4 (TDX)",
            hint="only confidential VMs carry a TEE hardware report",
        )
    if hash_type not in HASH_TYPES:
        raise FormatError(
            f"the HCL report's report_data_hash_type is {hash_type}, expected 1 (SHA-256), "
            "2 (SHA-384) or 3 (SHA-512)"
        )
    end = VARIABLE_DATA_OFFSET + var_size
    if end > len(data):
        raise FormatError(
            f"the HCL report declares {var_size} bytes of runtime data but only "
            f"{len(data) - VARIABLE_DATA_OFFSET} follow the header",
            hint="the report was truncated; read the whole NV index",
        )
    return _Layout(
        header=(header[0], header[1], header[2], header[3]),
        hw_report=data[HW_REPORT_OFFSET : HW_REPORT_OFFSET + HW_REPORT_SIZE],
        igvm=(data_size, version, report_type, hash_type, var_size),
        variable_data=data[VARIABLE_DATA_OFFSET:end],
    )


def _report(data: bytes, layout: _Layout) -> HclReport:
    runtime = parse_runtime_data(layout.variable_data)
    if layout.igvm[2] == REPORT_TYPE_TDX:
        parse_td_report(layout.hw_report)
    return HclReport(
        raw=bytes(data),
        header_version=layout.header[0],
        report_size=layout.header[1],
        request_type=layout.header[2],
        status=layout.header[3],
        hw_report=layout.hw_report,
        data_size=layout.igvm[0],
        igvm_version=layout.igvm[1],
        report_type=layout.igvm[2],
        report_data_hash_type=layout.igvm[3],
        variable_data=layout.variable_data,
        runtime=runtime,
    )


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse an HCL report and its runtime JSON; nothing is verified.

    Bytes after the runtime data (the NUL padding up to the NV index size) are ignored, so
    reports of any NV size parse.

    Raises:
        FormatError: too short, not ``HCLA``, unknown report or hash type, runtime data that
            runs past the end or is not the runtime JSON, a TDX report that is not a TDREPORT.
    """
    return _report(data, _layout(data))


def _check_binding(layout: _Layout) -> None:
    report_type, hash_type = layout.igvm[2], layout.igvm[3]
    name, digest_of = HASH_TYPES[hash_type]
    expected = digest_of(layout.variable_data)
    observed = _hw_report_data(report_type, layout.hw_report)[: len(expected)]
    if not hmac.compare_digest(expected, observed):
        where = "SNP REPORT_DATA" if report_type == REPORT_TYPE_SNP else "TDREPORT REPORTDATA"
        raise BindingError(
            f"{where}[0:{len(expected)}] does not hold the {name.upper()} of the HCL runtime data "
            f"(expected {_hex(expected)}, found {_hex(observed)})",
            hint="the runtime data (keys, VM configuration) was altered or belongs to another report",
        )


_WRONG_TYPE = {
    REPORT_TYPE_SNP: (
        "the HCL report holds a TDX report, not an SEV-SNP report",
        "verify it as az-tdx-vtpm with its TD quote",
    ),
    REPORT_TYPE_TDX: (
        "the HCL report holds an SEV-SNP report, not a TDREPORT",
        "verify it as az-snp-vtpm with its VCEK",
    ),
}


def verify_hcl_binding(hcl: bytes, *, report_type: int | None = None) -> HclReport:
    """Check that the hardware report's REPORT_DATA commits to the runtime data; parse the rest.

    This is the part of Azure CVM evidence that needs no signature: it proves the runtime data
    belongs to the hardware report, and is only worth something once that report is verified
    (:func:`~jupyter_cc.attest.azure.verify.verify_az_snp_vtpm`,
    :func:`~jupyter_cc.attest.azure.verify.verify_az_tdx_vtpm`). The binding is checked on the
    raw bytes before the JSON is parsed, so any change to the runtime data is a BindingError.

    Args:
        report_type: when given (``REPORT_TYPE_SNP`` or ``REPORT_TYPE_TDX``), the hardware
            report must be of this type, checked before the binding.

    Raises:
        FormatError: see :func:`parse_hcl_report`; or the report is not of ``report_type``.
        BindingError: hash(runtime data) differs from the start of REPORT_DATA.
    """
    layout = _layout(hcl)
    if report_type is not None and layout.igvm[2] != report_type:
        message, hint = _WRONG_TYPE[report_type]
        raise FormatError(message, hint=hint)
    _check_binding(layout)
    return _report(hcl, layout)


# --- binding to the verified hardware evidence --------------------------------------------


def azure_details(hcl: HclReport) -> dict[str, Any]:
    """The claims Azure kinds add to the hardware claims: the runtime data and VM flags."""
    runtime = hcl.runtime
    return {
        "runtime": runtime.to_json(),
        "vm_configuration": _plain(runtime.vm_configuration),
        "user_data": runtime.user_data.hex() if runtime.user_data is not None else None,
        "hcl_report_type": hcl.report_type_name,
        "hcl_hash_type": hcl.hash_name,
        "secure_boot": runtime.flag("secure-boot"),
        "tpm_enabled": runtime.flag("tpm-enabled"),
    }


def bind_td_quote(td: TdReport, quote_claims: Claims) -> None:
    """Check that a verified TD quote was made from ``td``: same REPORTDATA, MRTD and RTMRs.

    ``quote_claims`` are the claims of :func:`jupyter_cc.attest.tdx.verify_tdx` (design
    section 4: ``report_data`` bytes, ``mrtd`` hex, ``rtmr`` four hex strings).

    Raises:
        BindingError: a value differs; the message names it with both hex prefixes.
    """
    if not hmac.compare_digest(bytes(quote_claims.report_data), td.report_data):
        raise BindingError(
            "the TD quote's REPORTDATA differs from the HCL report's TDREPORT (TDREPORT "
            f"{_hex(td.report_data)}, quote {_hex(bytes(quote_claims.report_data))})",
            hint="pass the TD quote made from this HCL report's TDREPORT",
        )
    pairs: list[tuple[str, Any, bytes]] = [("MRTD", quote_claims.get("mrtd"), td.mrtd)]
    rtmrs = quote_claims.get("rtmr")
    if not isinstance(rtmrs, Sequence) or isinstance(rtmrs, str) or len(rtmrs) != 4:
        raise BindingError("the TD quote's claims carry no list of four RTMRs to compare with the TDREPORT")
    pairs += [(f"RTMR[{i}]", rtmrs[i], td.rtmr[i]) for i in range(4)]
    for name, quoted, local in pairs:
        observed = bytes.fromhex(quoted) if isinstance(quoted, str) else quoted
        if not isinstance(observed, bytes) or not hmac.compare_digest(observed, local):
            shown = _hex(observed) if isinstance(observed, bytes) else repr(observed)
            raise BindingError(
                f"the TD quote's {name} differs from the HCL report's TDREPORT (TDREPORT {_hex(local)}, "
                f"quote {shown})",
                hint="pass the TD quote made from this HCL report's TDREPORT",
            )

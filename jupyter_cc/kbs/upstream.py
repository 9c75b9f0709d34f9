"""Upstream Trustee evidence, translated into the project's verifier inputs.

guest-components' attesters send their own evidence formats as ``primary_evidence`` of the
KBS 0.4.x ``tee-evidence``, and device evidence in ``additional_evidence`` (a JSON text mapping
a ``kbs_types::Tee`` name to that device's evidence). This module reads those formats into
:class:`~jupyter_cc.attest.evidence.Evidence`, so the broker verifies them with the very
verifiers ``jupyter-cc verify`` runs; it verifies nothing itself.

Formats read (``Request.tee`` names the primary one; the evidence must be of that kind):

* ``snp``: ``{"attestation_report": <virtee/sev AttestationReport, serde fields>,
  "cert_chain": [{"cert_type": "VCEK"|"VLEK"|"ASK"|"ARK"|..., "data": <DER bytes>}]}``. The
  report's fields are put back at their offsets in the 1184-byte report (docs/attestation-formats.md
  section 1.1); a report given whole (base64, hex or a byte list) is taken as is.
* ``tdx``: ``{"quote": <base64 TD quote>, "cc_eventlog": ...}``.
* ``az-snp-vtpm``: ``{"version": 1, "tpm_quote": {"signature", "message", "pcrs"}, "hcl_report",
  "vcek"}`` (hex quote parts, base64url report and DER VCEK; older attesters: byte lists and a PEM
  VCEK). The TPM quote's qualifying data must be the runtime-data digest itself.
* ``az-tdx-vtpm``: ``{"tpm_quote": {...}, "hcl_report", "td_quote"}``, the same way.
* ``sample``: ``{"svn": "1", "report_data": <base64>}``: unsigned, so its claims are
  ``sim-snp`` and simulated, which only a policy with ``allow_simulated = true`` accepts. A
  jupyter-cc client adds the simulated TEE's signed report as ``"jupyter-cc"``; then that report is
  verified too.
* jupyter-cc's own form ``{"kind": ..., "evidence": {...}}`` (the evidence bundle's fields), under
  the ``tee`` its kind has in the registry.
* additional ``nvidia``: ``{"device_evidence_list": [{"arch", "uuid", "evidence", "certificate"}]}``,
  base64 SPDM report and PEM chain; each GPU signs the first 32 bytes of the device digest.

``init-data`` (``{"format": "toml"|"json", "body": ...}``) is hashed with the algorithm its body
names (``algorithm``, default sha384) and must equal SNP HOST_DATA or TDX MRCONFIGID (zero padded
or cut to the field's size, as trustee does); :func:`init_data_claims` is what the broker adds
to the claims for resource policies.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import tomllib
from cryptography import x509

from jupyter_cc.attest.certs import load_certificates
from jupyter_cc.attest.evidence import Evidence
from jupyter_cc.attest.kinds import KINDS
from jupyter_cc.attest.kinds import kind as registered_kind
from jupyter_cc.decoding import b64decode_any, strict_json
from jupyter_cc.errors import BindingError, FormatError, InputError

__all__ = [
    "MAX_ADDITIONAL",
    "UPSTREAM_TEES",
    "InitData",
    "Primary",
    "additional_evidence",
    "init_data_claims",
    "parse_init_data",
    "primary_evidence",
    "serialize_snp_report",
    "snp_report_bytes",
]

UPSTREAM_TEES = frozenset(
    {k.trustee_tee for k in KINDS if k.trustee_tee}
    | {"sgx", "cca", "csv", "se", "hygondcu", "dpu", "tpm", "sampledevice"}
)
"""``kbs_types::Tee`` names as serde writes them; ``auth`` accepts them all."""

VERIFIED_TEES = {k.trustee_tee: k.name for k in KINDS if k.trustee_tee and k.tee_choice and not k.simulated}
"""Primary TEEs whose upstream evidence this broker verifies, and the kind it becomes."""

MAX_ADDITIONAL = 8
"""Most devices one ``additional_evidence`` may carry."""

_NATIVE_TEE = {k.name: k.trustee_tee for k in KINDS if k.trustee_tee}
_SNP_SIZE = 0x4A0
_TCB_FIELDS = ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb")

# (field, offset, size): an integer (size 1, 4 or 8, little-endian) or a byte array.
_SNP_LAYOUT: tuple[tuple[str, int, int], ...] = (
    ("version", 0x000, 4),
    ("guest_svn", 0x004, 4),
    ("policy", 0x008, 8),
    ("family_id", 0x010, 16),
    ("image_id", 0x020, 16),
    ("vmpl", 0x030, 4),
    ("sig_algo", 0x034, 4),
    ("current_tcb", 0x038, 8),
    ("plat_info", 0x040, 8),
    ("key_info", 0x048, 4),
    ("report_data", 0x050, 64),
    ("measurement", 0x090, 48),
    ("host_data", 0x0C0, 32),
    ("id_key_digest", 0x0E0, 48),
    ("author_key_digest", 0x110, 48),
    ("report_id", 0x140, 32),
    ("report_id_ma", 0x160, 32),
    ("reported_tcb", 0x180, 8),
    ("cpuid_fam_id", 0x188, 1),
    ("cpuid_mod_id", 0x189, 1),
    ("cpuid_step", 0x18A, 1),
    ("chip_id", 0x1A0, 64),
    ("committed_tcb", 0x1E0, 8),
    ("current_build", 0x1E8, 1),
    ("current_minor", 0x1E9, 1),
    ("current_major", 0x1EA, 1),
    ("committed_build", 0x1EC, 1),
    ("committed_minor", 0x1ED, 1),
    ("committed_major", 0x1EE, 1),
    ("launch_tcb", 0x1F0, 8),
    ("launch_mit_vector", 0x1F8, 8),
    ("current_mit_vector", 0x200, 8),
)
_ALIASES = {"key_info": ("key_info", "author_key_en", "_author_key_en", "signer_info")}
_HEX = re.compile(r"\A(?:[0-9a-fA-F]{2})+\Z")


# --- bytes in the encodings upstream attesters use ---------------------------------------------


def _bytes(value: Any, what: str, *, text: str = "base64") -> bytes:
    """A byte field: a list of 0..255, or text in ``text`` (``base64`` either alphabet, or ``hex``)."""
    if isinstance(value, list):
        if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            raise FormatError(f"{what} must be a list of bytes (0 to 255)")
        return bytes(value)
    if not isinstance(value, str):
        raise FormatError(f"{what} must be {text} text or a list of bytes")
    if text == "hex":
        if not _HEX.match(value):
            raise FormatError(f"{what} is not hex text")
        return bytes.fromhex(value)
    try:
        return b64decode_any(value, what=what)
    except InputError as exc:
        raise FormatError(exc.message) from None


def _object(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{what} must be a JSON object")
    return value


def _certificate(value: Any, what: str) -> x509.Certificate:
    """A certificate given as PEM text, base64 DER or a DER byte list."""
    if isinstance(value, str) and "-----BEGIN" in value:
        data = value.encode("ascii", "replace")
    else:
        data = _bytes(value, what)
    try:
        certs = load_certificates(data, what=what)
    except InputError as exc:
        raise FormatError(exc.message) from None
    if not certs:
        raise FormatError(f"{what} holds no certificate")
    return certs[0]


# --- SNP ---------------------------------------------------------------------------------------


def _int_field(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << (8 * size):
        raise FormatError(f"snp attestation_report.{name} must be an integer of {size} bytes")
    return value.to_bytes(size, "little")


def _tcb_field(value: Any, name: str) -> bytes:
    """A TCB_VERSION as sev writes it: ``{bootloader, tee, snp, microcode[, fmc]}`` or its u64."""
    if isinstance(value, int):
        return _int_field(value, name, 8)
    tcb = _object(value, f"snp attestation_report.{name}")
    parts = {k: tcb.get(k) or 0 for k in ("fmc", "bootloader", "tee", "snp", "microcode")}
    if not all(isinstance(v, int) and 0 <= v <= 255 for v in parts.values()):
        raise FormatError(f"snp attestation_report.{name} has a component that is not a byte")
    if tcb.get("fmc") is not None:  # Turin layout (docs/attestation-formats.md section 1.4)
        order = (parts["fmc"], parts["bootloader"], parts["tee"], parts["snp"], 0, 0, 0, parts["microcode"])
    else:
        order = (parts["bootloader"], parts["tee"], 0, 0, 0, 0, parts["snp"], parts["microcode"])
    return bytes(order)


def _field_value(report: Mapping[str, Any], name: str) -> Any:
    for alias in _ALIASES.get(name, (name,)):
        if alias in report:
            return report[alias]
    return None


def snp_report_bytes(report: Any) -> bytes:
    """The 1184-byte SNP report from sev's serde object, or from the whole report as bytes.

    Raises:
        FormatError: a field is missing, of the wrong size, or the report is not 1184 bytes.
    """
    if not isinstance(report, Mapping):
        raw = _bytes(report, "snp attestation_report", text="hex" if _is_hex(report) else "base64")
        if len(raw) != _SNP_SIZE:
            raise FormatError(f"snp attestation_report is {len(raw)} bytes, not {_SNP_SIZE}")
        return raw
    out = bytearray(_SNP_SIZE)
    for name, offset, size in _SNP_LAYOUT:
        value = _field_value(report, name)
        if value is None:
            if name in ("version", "report_data", "measurement", "chip_id", "reported_tcb"):
                raise FormatError(f"snp attestation_report has no {name}")
            continue
        if name in _TCB_FIELDS:
            data = _tcb_field(value, name)
        elif size in (1, 4, 8) and name not in ("family_id", "image_id"):
            data = _int_field(value, name, size)
        else:
            data = _bytes(value, f"snp attestation_report.{name}", text="hex" if _is_hex(value) else "base64")
        if len(data) != size:
            raise FormatError(f"snp attestation_report.{name} is {len(data)} bytes, not {size}")
        out[offset : offset + size] = data
    signature = _object(report.get("signature"), "snp attestation_report.signature")
    for part, offset in (("r", 0x2A0), ("s", 0x2E8)):
        data = _bytes(signature.get(part), f"snp signature.{part}")
        if len(data) != 72:
            raise FormatError(f"snp signature.{part} is {len(data)} bytes, not 72")
        out[offset : offset + 72] = data
    return bytes(out)


def _is_hex(value: Any) -> bool:
    return isinstance(value, str) and bool(_HEX.match(value))


def serialize_snp_report(raw: bytes) -> dict[str, Any]:
    """sev's serde object for a 1184-byte report (byte arrays as lists): the inverse of the above."""
    if len(raw) != _SNP_SIZE:
        raise InputError(f"an SNP report is {_SNP_SIZE} bytes, got {len(raw)}")
    doc: dict[str, Any] = {}
    for name, offset, size in _SNP_LAYOUT:
        chunk = raw[offset : offset + size]
        if name in _TCB_FIELDS:
            doc[name] = {"bootloader": chunk[0], "tee": chunk[1], "snp": chunk[6], "microcode": chunk[7]}
        elif size in (1, 4, 8) and name not in ("family_id", "image_id"):
            doc[name] = int.from_bytes(chunk, "little")
        else:
            doc[name] = list(chunk)
    doc["signature"] = {"r": list(raw[0x2A0:0x2E8]), "s": list(raw[0x2E8:0x330])}
    return doc


def _snp(primary: Mapping[str, Any]) -> Evidence:
    report = snp_report_bytes(primary.get("attestation_report"))
    entries = primary.get("cert_chain")
    if entries is None or entries == []:
        return Evidence(kind="snp", report=report)  # the collateral service fetches the VCEK
    if not isinstance(entries, list):
        raise FormatError("snp cert_chain must be a list of {cert_type, data}")
    vek: x509.Certificate | None = None
    chain: list[x509.Certificate] = []
    for i, entry in enumerate(entries[:8]):
        item = _object(entry, f"snp cert_chain[{i}]")
        cert_type = str(item.get("cert_type", "")).upper()
        if cert_type not in ("VCEK", "VLEK", "ASK", "ASVK", "ARK"):
            continue
        cert = _certificate(item.get("data"), f"snp cert_chain[{i}] ({cert_type})")
        if cert_type in ("VCEK", "VLEK"):
            if vek is not None:
                raise FormatError("snp cert_chain has more than one VCEK or VLEK")
            vek = cert
        else:
            chain.append(cert)
    if vek is None:
        raise FormatError("snp cert_chain has no VCEK or VLEK")
    chain.sort(key=lambda c: c.subject == c.issuer)  # ASK/ASVK first, then ARK
    return Evidence(kind="snp", report=report, vek=vek, chain=tuple(chain))


# --- TDX and Azure -----------------------------------------------------------------------------


def _tdx(primary: Mapping[str, Any]) -> Evidence:
    return Evidence(kind="tdx", report=_bytes(primary.get("quote"), "tdx quote"))


def _tpm_quote(primary: Mapping[str, Any], tee: str) -> tuple[bytes, bytes]:
    quote = _object(primary.get("tpm_quote"), f"{tee} tpm_quote")
    parts = []
    for name in ("message", "signature"):
        value = quote.get(name)
        parts.append(
            _bytes(value, f"{tee} tpm_quote.{name}", text="hex" if isinstance(value, str) else "base64")
        )
    return parts[0], parts[1]


def _az_snp(primary: Mapping[str, Any], digest: bytes) -> Evidence:
    message, signature = _tpm_quote(primary, "az-snp-vtpm")
    return Evidence(
        kind="az-snp-vtpm",
        report=_bytes(primary.get("hcl_report"), "az-snp-vtpm hcl_report"),
        vek=_certificate(primary.get("vcek"), "az-snp-vtpm vcek"),
        tpm_quote=message,
        tpm_sig=signature,
        nonce=digest,
    )


def _az_tdx(primary: Mapping[str, Any], digest: bytes) -> Evidence:
    message, signature = _tpm_quote(primary, "az-tdx-vtpm")
    return Evidence(
        kind="az-tdx-vtpm",
        report=_bytes(primary.get("hcl_report"), "az-tdx-vtpm hcl_report"),
        td_quote=_bytes(primary.get("td_quote"), "az-tdx-vtpm td_quote"),
        tpm_quote=message,
        tpm_sig=signature,
        nonce=digest,
    )


# --- jupyter-cc's own form ---------------------------------------------------------------------

_NATIVE_BYTES = ("td_quote", "tpm_quote", "tpm_sig", "tcb_info", "qe_identity", "collateral_chain")


def _native(primary: Mapping[str, Any], tee: str) -> Evidence:
    kind = primary.get("kind")
    fields = _object(primary.get("evidence"), "jupyter-cc evidence")
    if not isinstance(kind, str) or _NATIVE_TEE.get(kind) != tee:
        raise FormatError(f"jupyter-cc evidence of kind {str(kind)[:40]!r} is not {tee} evidence")
    chain_pem = fields.get("chain")
    chain = (
        load_certificates(chain_pem.encode("ascii", "replace"), what="chain")
        if isinstance(chain_pem, str)
        else []
    )
    crls = fields.get("crls") or []
    if not isinstance(crls, list):
        raise FormatError("jupyter-cc evidence field crls must be a list")
    ev = Evidence(
        kind=kind,
        report=_bytes(fields.get("report"), f"{kind} report"),
        vek=_certificate(fields["vcek"], f"{kind} vcek") if fields.get("vcek") is not None else None,
        chain=tuple(chain),
        chain_pem=chain_pem.encode("ascii", "replace") if isinstance(chain_pem, str) else None,
        crls=tuple(_bytes(c, "crl") for c in crls),
    )
    extra: dict[str, Any] = {
        k: _bytes(fields[k], f"{kind} {k}") for k in _NATIVE_BYTES if fields.get(k) is not None
    }
    return replace(ev, **extra)


# --- the primary evidence ----------------------------------------------------------------------


@dataclass(frozen=True)
class Primary:
    """The primary evidence, read.

    Attributes:
        evidence: what the verifier gets, or None for unsigned ``sample`` evidence.
        format: the format it came in (``snp``, ``tdx``, ``az-snp-vtpm``, ``az-tdx-vtpm``,
            ``sample``, ``jupyter-cc``).
        report_data: the REPORT_DATA an unsigned ``sample`` claims (None otherwise).
        tpm_bound: the binding is the TPM quote's qualifying data (upstream Azure), which the
            verifier checks against ``evidence.nonce``, not REPORT_DATA.
    """

    evidence: Evidence | None
    format: str
    report_data: bytes | None = None
    tpm_bound: bool = False


def _sample(primary: Mapping[str, Any]) -> Primary:
    if not isinstance(primary.get("svn"), str):
        raise FormatError('sample evidence must be {"svn": "...", "report_data": "<base64>"}')
    claimed = _bytes(primary.get("report_data"), "sample report_data")
    signed = primary.get("jupyter-cc")
    if signed is not None:
        return Primary(_native(_object(signed, "sample jupyter-cc"), "sample"), "sample", claimed)
    return Primary(None, "sample", claimed)


def primary_evidence(tee: str, primary: Any, digest: bytes) -> Primary:
    """Read ``primary_evidence`` sent under ``Request.tee`` = ``tee``; ``digest`` is the runtime digest.

    Raises:
        FormatError: not evidence of ``tee`` in a format above (one sentence naming what is off).
    """
    doc = _object(primary, f"{tee} primary_evidence")
    if "kind" in doc and "evidence" in doc:
        return Primary(_native(doc, tee), "jupyter-cc")
    if tee == "sample":
        return _sample(doc)
    if tee == "snp":
        return Primary(_snp(doc), "snp")
    if tee == "tdx":
        return Primary(_tdx(doc), "tdx")
    if tee == "az-snp-vtpm":
        return Primary(_az_snp(doc, digest), "az-snp-vtpm", tpm_bound=True)
    if tee == "az-tdx-vtpm":
        return Primary(_az_tdx(doc, digest), "az-tdx-vtpm", tpm_bound=True)
    raise FormatError(
        f"this broker has no verifier for {tee} evidence (it verifies {', '.join(VERIFIED_TEES)})"
    )


# --- additional (device) evidence --------------------------------------------------------------


def additional_evidence(text: str, device_digest: bytes) -> tuple[Evidence, ...]:
    """The GPU evidence in ``additional_evidence`` (empty text: none), each with its nonce set.

    Raises:
        FormatError: not a JSON object of ``tee: evidence``, a device this broker cannot verify
            (so the request is refused rather than the device ignored), or malformed GPU evidence.
    """
    if not text:
        return ()
    try:
        doc = strict_json(text)
    except (ValueError, RecursionError):
        raise FormatError("additional_evidence is not JSON text") from None
    if not isinstance(doc, dict):
        raise FormatError("additional_evidence must be a JSON object of tee: evidence")
    unknown = sorted(str(k)[:40] for k in doc if k != "nvidia")
    if unknown:
        raise FormatError(
            f"additional_evidence names devices this broker cannot verify: {', '.join(unknown)}"
        )
    if "nvidia" not in doc:
        return ()
    devices = _object(doc["nvidia"], "nvidia evidence").get("device_evidence_list")
    if not isinstance(devices, list) or not devices or len(devices) > MAX_ADDITIONAL:
        raise FormatError(f"nvidia evidence must list 1 to {MAX_ADDITIONAL} devices in device_evidence_list")
    nonce = device_digest[:32].ljust(32, b"\x00")
    out = []
    for i, entry in enumerate(devices):
        device = _object(entry, f"nvidia device {i}")
        chain = _bytes(device.get("certificate"), f"nvidia device {i} certificate")
        out.append(
            Evidence(
                kind="nvidia",
                report=_bytes(device.get("evidence"), f"nvidia device {i} evidence"),
                chain_pem=chain,
                nonce=nonce,
            )
        )
    return tuple(out)


# --- init-data ---------------------------------------------------------------------------------

_INIT_HASHES = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
# By family, for evidence whose REPORT_DATA the TEE itself signs (not the Azure vTPM kinds).
_INIT_FIELD = {"snp": ("host_data", 32), "tdx": ("mrconfigid", 48)}
MAX_INIT_DATA = 64 * 1024


@dataclass(frozen=True)
class InitData:
    """``init-data`` as sent: its format, body, the digest of the body and the parsed document."""

    format: str
    body: str
    algorithm: str
    digest: bytes
    document: Mapping[str, Any]


def parse_init_data(value: Any) -> InitData | None:
    """Read ``init-data`` (None when absent); :class:`FormatError` names what is malformed."""
    if value is None:
        return None
    doc = _object(value, "init-data")
    fmt, body = doc.get("format"), doc.get("body")
    if fmt not in ("toml", "json") or not isinstance(body, str):
        raise FormatError('init-data must be {"format": "toml" or "json", "body": "<text>"}')
    if len(body) > MAX_INIT_DATA:
        raise FormatError(f"init-data body is larger than {MAX_INIT_DATA} bytes")
    try:
        parsed: Any = tomllib.loads(body) if fmt == "toml" else json.loads(body)
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise FormatError(f"init-data body is not valid {fmt} ({exc.__class__.__name__})") from None
    if not isinstance(parsed, dict):
        raise FormatError("init-data body must be a table of keys")
    algorithm = str(parsed.get("algorithm", "sha384")).lower()
    if algorithm not in _INIT_HASHES:
        raise FormatError(f"init-data algorithm {algorithm[:20]!r} is not sha256, sha384 or sha512")
    digest = _INIT_HASHES[algorithm](body.encode("utf-8")).digest()
    return InitData(str(fmt), body, algorithm, digest, parsed)


def check_init_data(init: InitData, kind: str, details: Mapping[str, Any]) -> None:
    """The init-data digest must be the evidence's HOST_DATA (SNP) or MRCONFIGID (TDX).

    Raises:
        BindingError: another value, or evidence of a kind with no such field.
    """
    entry = registered_kind(kind)
    family = entry.family if entry is not None and not entry.azure_vtpm else None
    if family not in _INIT_FIELD:
        raise BindingError(f"init-data cannot be checked for {kind} evidence (no HOST_DATA or MRCONFIGID)")
    name, size = _INIT_FIELD[family]
    expected = init.digest[:size].ljust(size, b"\x00")
    try:
        seen = binascii.unhexlify(str(details.get(name) or ""))
    except binascii.Error:
        seen = b""
    if seen != expected:
        raise BindingError(
            f"the evidence's {name.upper()} is not the {init.algorithm} digest of the init-data"
        )


def init_data_claims(init: InitData) -> dict[str, Any]:
    """What resource policies are offered about the init-data: digest, algorithm, parsed body."""
    return {
        "digest": init.digest.hex(),
        "algorithm": init.algorithm,
        "format": init.format,
        "data": init.document,
    }

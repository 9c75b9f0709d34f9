"""Intel PCS collateral for TDX quotes: TCB info, QE identity, CRLs and the PCK extensions.

A TDX quote proves which TD produced it; whether the platform and quoting enclave behind it are
*current* is what Intel's collateral says. This module parses that collateral exactly as Intel's
Provisioning Certification Service (PCS) serves it and checks it (docs/attestation-formats.md
section 2.4, step 7; go-tdx-guest ``verify/verify.go``):

* **TCB info** (``/tdx/certification/v4/tcb?fmspc=...``) and **QE identity**
  (``/tdx/certification/v4/qe/identity``) are JSON documents whose ``signature`` (hex r‖s,
  ECDSA P-256 with SHA-256) covers the *exact bytes* of the ``tcbInfo`` / ``enclaveIdentity``
  value as it appears in the file. The bytes are sliced from the text, never re-serialized.
  The signer is "Intel SGX TCB Signing", chained to the pinned Intel SGX Root CA.
* **CRLs** (Root CA CRL, PCK Platform/Processor CRL) are verified with their issuer from the
  quote's own PCK chain and consulted for the serials of that chain.
* The **PCK certificate's SGX extension** (OID 1.2.840.113741.1.13.1) names the platform's
  FMSPC, PCE-ID and TCB (16 CPU SVN components and the PCE SVN); it is read with a small,
  bounds-checked DER walker.
* **Matching**: the TCB level is the first level of the TCB info whose SGX components, PCE SVN
  and TDX components (TEE_TCB_SVN; bytes 0-1 skipped when byte 1 names a module version, then
  the module's level from ``tdxModuleIdentities``) are all at or below the platform's. The QE
  level is the first QE identity level whose ISVSVN is at or below the QE report's.

Nothing here decides whether a status is acceptable: statuses are returned as Intel names them
(``UpToDate``, ``OutOfDate``, ...) and appraisal belongs to :mod:`jupyter_cc.policy`.

>>> collateral = load_collateral(tcb_info=tcb, qe_identity=qe, issuer_chain=pem)  # doctest: +SKIP
>>> verify_collateral(collateral, at=utcnow())                                      # doctest: +SKIP
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from jupyter_cc.attest import der
from jupyter_cc.attest.certs import describe, load_certificates, verify_chain
from jupyter_cc.attest.roots import INTEL_SGX_ROOT, TrustAnchor, TrustStore
from jupyter_cc.decoding import JSON_DECODER
from jupyter_cc.errors import (
    ChainError,
    CollateralError,
    FormatError,
    InputError,
    SignatureError,
    TcbError,
)

__all__ = [
    "STATUS_ORDER",
    "ModuleTcbLevel",
    "PckExtensions",
    "QeIdentity",
    "QeMatch",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TcbMatch",
    "TdxCollateral",
    "TdxModuleIdentity",
    "check_revocation",
    "load_collateral",
    "load_crl",
    "match_qe_identity",
    "match_tcb_level",
    "parse_pck_extensions",
    "parse_qe_identity",
    "parse_tcb_info",
    "verify_collateral",
    "worst_status",
]

TCB_INFO_ID = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID = "TD_QE"
QE_IDENTITY_VERSION = 2
TCB_SIGNING_CN = "Intel SGX TCB Signing"

SGX_EXT_OID = "1.2.840.113741.1.13.1"
_OID_PPID = f"{SGX_EXT_OID}.1"
_OID_TCB = f"{SGX_EXT_OID}.2"
_OID_PCESVN = f"{_OID_TCB}.17"
_OID_CPUSVN = f"{_OID_TCB}.18"
_OID_PCEID = f"{SGX_EXT_OID}.3"
_OID_FMSPC = f"{SGX_EXT_OID}.4"
_OID_SGX_TYPE = f"{SGX_EXT_OID}.5"

# Intel's TCB statuses from best to worst; ``worst_status`` combines platform, module and QE.
STATUS_ORDER = (
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
    "Revoked",
)

_FETCH_HINT = "fetch fresh collateral from Intel PCS, or pass --at with a time inside its validity"


# --- PCK certificate SGX extension ------------------------------------------------------------


def _der_pairs(content: bytes, what: str) -> dict[str, tuple[int, bytes]]:
    """A SEQUENCE OF SEQUENCE { OID, value } as {oid: (value tag, value content)}."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, inner in der.items(content, what):
        if tag != 0x30:
            raise FormatError(f"{what} holds an element that is not a SEQUENCE")
        parts = der.items(inner, what)
        if len(parts) != 2 or parts[0][0] != 0x06:
            raise FormatError(f"{what} holds an element that is not (OID, value)")
        oid = der.oid(parts[0][1], what)
        if oid in out:
            raise FormatError(f"{what} names {oid} twice")
        out[oid] = parts[1]
    return out


@dataclass(frozen=True)
class PckExtensions:
    """What Intel vouches for in a PCK certificate (its SGX extension)."""

    fmspc: bytes
    pce_id: bytes
    pce_svn: int
    cpu_svn: bytes
    cpu_svn_components: tuple[int, ...]
    ppid: bytes | None = None
    sgx_type: int | None = None

    @property
    def fmspc_hex(self) -> str:
        return self.fmspc.hex()

    @property
    def pce_id_hex(self) -> str:
        return self.pce_id.hex()


@functools.lru_cache(maxsize=64)
def parse_pck_extensions(cert: x509.Certificate) -> PckExtensions:
    """Read FMSPC, PCE-ID and the TCB from a PCK certificate's SGX extension.

    Raises:
        FormatError: the extension is missing or malformed.
    """
    what = f"the SGX extension ({SGX_EXT_OID}) of '{describe(cert)}'"
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(SGX_EXT_OID)).value
    except x509.ExtensionNotFound:
        raise FormatError(
            f"certificate '{describe(cert)}' has no SGX extension ({SGX_EXT_OID})",
            hint="the quote's first certificate must be an Intel SGX PCK certificate",
        ) from None
    except (ValueError, x509.DuplicateExtension):
        raise FormatError(f"the extensions of '{describe(cert)}' cannot be decoded") from None
    if not isinstance(ext, x509.UnrecognizedExtension):
        raise FormatError(f"{what} has an unexpected type")
    top = der.items(ext.value, what)
    if len(top) != 1 or top[0][0] != 0x30:
        raise FormatError(f"{what} is not one DER SEQUENCE")
    fields = _der_pairs(top[0][1], what)
    for oid, name in ((_OID_TCB, "TCB"), (_OID_PCEID, "PCE-ID"), (_OID_FMSPC, "FMSPC")):
        if oid not in fields:
            raise FormatError(f"{what} lacks the {name} field ({oid})")
    tcb_tag, tcb_content = fields[_OID_TCB]
    if tcb_tag != 0x30:
        raise FormatError(f"{what}: the TCB field is not a SEQUENCE")
    tcb = _der_pairs(tcb_content, f"{what} TCB")
    components = []
    for i in range(1, 17):
        oid = f"{_OID_TCB}.{i}"
        if oid not in tcb:
            raise FormatError(f"{what} lacks TCB component {i} ({oid})")
        components.append(der.uint(*tcb[oid], f"{what} TCB component {i}", bits=8))
    if _OID_PCESVN not in tcb or _OID_CPUSVN not in tcb:
        raise FormatError(f"{what} lacks the PCESVN or CPUSVN field")
    sgx_type = None
    if _OID_SGX_TYPE in fields:
        sgx_type = der.uint(*fields[_OID_SGX_TYPE], f"{what} SGX type", bits=8)
    return PckExtensions(
        fmspc=der.octets(*fields[_OID_FMSPC], f"{what} FMSPC", 6),
        pce_id=der.octets(*fields[_OID_PCEID], f"{what} PCE-ID", 2),
        pce_svn=der.uint(*tcb[_OID_PCESVN], f"{what} PCESVN", bits=16),
        cpu_svn=der.octets(*tcb[_OID_CPUSVN], f"{what} CPUSVN", 16),
        cpu_svn_components=tuple(components),
        ppid=der.octets(*fields[_OID_PPID], f"{what} PPID") if _OID_PPID in fields else None,
        sgx_type=sgx_type,
    )


# --- collateral JSON ---------------------------------------------------------------------------


def _signed_document(raw: bytes, body_key: str, what: str) -> tuple[dict[str, Any], bytes, bytes]:
    """(parsed body, exact raw bytes of the body value, signature) of a PCS response."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 JSON") from None
    decoder = JSON_DECODER
    spans: dict[str, tuple[int, int]] = {}
    values: dict[str, Any] = {}
    try:
        pos = _skip_ws(text, 0)
        if text[pos : pos + 1] != "{":
            raise ValueError("not a JSON object")
        pos = _skip_ws(text, pos + 1)
        while text[pos : pos + 1] != "}":
            key, pos = decoder.raw_decode(text, pos)
            if not isinstance(key, str) or key in values:
                raise ValueError("bad or duplicate top-level key")
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] != ":":
                raise ValueError("expected ':'")
            start = _skip_ws(text, pos + 1)
            values[key], pos = decoder.raw_decode(text, start)
            spans[key] = (start, pos)
            pos = _skip_ws(text, pos)
            if text[pos : pos + 1] == ",":
                pos = _skip_ws(text, pos + 1)
            elif text[pos : pos + 1] != "}":
                raise ValueError("expected ',' or '}'")
        if text[_skip_ws(text, pos + 1) :]:
            raise ValueError("text after the JSON object")
    except (ValueError, RecursionError) as exc:
        raise InputError(
            f"{what} is not a PCS JSON response ({str(exc).rstrip('.')})",
            hint="pass the response body of Intel PCS exactly as served",
        ) from None
    if body_key not in values or "signature" not in values:
        raise InputError(
            f"{what} has no '{body_key}' and 'signature' members",
            hint="pass the response body of Intel PCS exactly as served",
        )
    body = values[body_key]
    signature = values["signature"]
    if not isinstance(body, dict):
        raise CollateralError(f"{what}: '{body_key}' is not a JSON object")
    try:
        sig = bytes.fromhex(signature) if isinstance(signature, str) else b""
    except ValueError:
        sig = b""
    if len(sig) != 64:
        raise CollateralError(f"{what}: 'signature' is not 128 hex digits (ECDSA P-256 r‖s)")
    start, end = spans[body_key]
    return body, text[start:end].encode("utf-8"), sig


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _Fields:
    """Typed access to a JSON object; every wrong type is a CollateralError naming the field."""

    def __init__(self, data: Mapping[str, Any], what: str):
        self.data = data
        self.what = what

    def _get(self, key: str, kinds: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.data:
            if default is not ...:
                return default
            raise CollateralError(f"{self.what} lacks '{key}'")
        value = self.data[key]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise CollateralError(f"{self.what}: '{key}' has the wrong JSON type")
        return value

    def text(self, key: str) -> str:
        return str(self._get(key, str))

    def integer(self, key: str, default: Any = ...) -> int:
        value = self._get(key, (int, float), default)
        if isinstance(value, float):
            if not value.is_integer():
                raise CollateralError(f"{self.what}: '{key}' is not an integer")
            value = int(value)
        return int(value)

    def number(self, key: str) -> float:
        return float(self._get(key, (int, float)))

    def hexbytes(self, key: str, size: int) -> bytes:
        value = self.text(key)
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise CollateralError(f"{self.what}: '{key}' is not hex") from None
        if len(raw) != size:
            raise CollateralError(f"{self.what}: '{key}' is {len(raw)} bytes, expected {size}")
        return raw

    def timestamp(self, key: str) -> datetime:
        value = self.text(key)
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise CollateralError(f"{self.what}: '{key}' is not an ISO 8601 time ({value!r})") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed

    def items(self, key: str, default: Any = ...) -> list[Any]:
        return list(self._get(key, list, default))

    def obj(self, key: str) -> _Fields:
        return _Fields(self._get(key, dict), f"{self.what} {key}")

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.items(key, [])
        if not all(isinstance(v, str) for v in values):
            raise CollateralError(f"{self.what}: '{key}' is not a list of strings")
        return tuple(values)


def _svns(fields: _Fields, key: str, default: Any = ...) -> tuple[int, ...]:
    out = []
    for i, item in enumerate(fields.items(key, default)):
        if not isinstance(item, dict):
            raise CollateralError(f"{fields.what}: '{key}' item {i} is not an object")
        out.append(_Fields(item, f"{fields.what} {key}[{i}]").integer("svn"))
    return tuple(out)


@dataclass(frozen=True)
class TcbLevel:
    """One platform TCB level of the TCB info, best first as Intel orders them."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleTcbLevel:
    """A TCB level of a TDX module identity (by the module's ISVSVN) or of the QE identity."""

    isvsvn: int
    tcb_date: str
    tcb_status: str
    advisory_ids: tuple[str, ...] = ()


QeTcbLevel = ModuleTcbLevel


@dataclass(frozen=True)
class TdxModuleIdentity:
    """A ``tdxModuleIdentities`` entry: levels for one TDX module major version ("TDX_01")."""

    id: str
    mrsigner: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...]


@dataclass(frozen=True)
class TcbInfo:
    """A PCS TCB info response. ``signed_bytes`` is the exact ``tcbInfo`` text the signature covers."""

    raw: bytes
    signed_bytes: bytes
    signature: bytes
    id: str
    version: float
    issue_date: datetime
    next_update: datetime
    fmspc: str
    pce_id: str
    tcb_type: int
    tcb_evaluation_data_number: int
    module_mrsigner: bytes
    module_attributes: bytes
    module_attributes_mask: bytes
    module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]


@dataclass(frozen=True)
class QeIdentity:
    """A PCS QE identity response. ``signed_bytes`` is the exact ``enclaveIdentity`` text."""

    raw: bytes
    signed_bytes: bytes
    signature: bytes
    id: str
    version: float
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mrsigner: bytes
    isvprodid: int
    tcb_levels: tuple[ModuleTcbLevel, ...]


def _module_levels(fields: _Fields) -> tuple[ModuleTcbLevel, ...]:
    out = []
    for i, item in enumerate(fields.items("tcbLevels")):
        if not isinstance(item, dict):
            raise CollateralError(f"{fields.what}: tcbLevels[{i}] is not an object")
        level = _Fields(item, f"{fields.what} tcbLevels[{i}]")
        out.append(
            ModuleTcbLevel(
                isvsvn=level.obj("tcb").integer("isvsvn"),
                tcb_date=level.text("tcbDate"),
                tcb_status=level.text("tcbStatus"),
                advisory_ids=level.strings("advisoryIDs"),
            )
        )
    return tuple(out)


def parse_tcb_info(raw: bytes) -> TcbInfo:
    """Parse a PCS TDX TCB info response (``{"tcbInfo": {...}, "signature": "..."}``).

    Raises:
        InputError: the bytes are not a PCS JSON response.
        CollateralError: a field is missing or has the wrong type.
    """
    body, signed, sig = _signed_document(raw, "tcbInfo", "TCB info")
    info = _Fields(body, "TCB info")
    module = info.obj("tdxModule") if "tdxModule" in body else None
    identities = []
    for i, item in enumerate(info.items("tdxModuleIdentities", [])):
        if not isinstance(item, dict):
            raise CollateralError(f"TCB info tdxModuleIdentities[{i}] is not an object")
        ident = _Fields(item, f"TCB info tdxModuleIdentities[{i}]")
        identities.append(
            TdxModuleIdentity(
                id=ident.text("id"),
                mrsigner=ident.hexbytes("mrsigner", 48),
                attributes=ident.hexbytes("attributes", 8),
                attributes_mask=ident.hexbytes("attributesMask", 8),
                tcb_levels=_module_levels(ident),
            )
        )
    levels = []
    for i, item in enumerate(info.items("tcbLevels")):
        if not isinstance(item, dict):
            raise CollateralError(f"TCB info tcbLevels[{i}] is not an object")
        level = _Fields(item, f"TCB info tcbLevels[{i}]")
        tcb = level.obj("tcb")
        levels.append(
            TcbLevel(
                sgx_components=_svns(tcb, "sgxtcbcomponents"),
                pce_svn=tcb.integer("pcesvn"),
                tdx_components=_svns(tcb, "tdxtcbcomponents", []),
                tcb_date=level.text("tcbDate"),
                tcb_status=level.text("tcbStatus"),
                advisory_ids=level.strings("advisoryIDs"),
            )
        )
    return TcbInfo(
        raw=bytes(raw),
        signed_bytes=signed,
        signature=sig,
        id=info.text("id"),
        version=info.number("version"),
        issue_date=info.timestamp("issueDate"),
        next_update=info.timestamp("nextUpdate"),
        fmspc=info.text("fmspc"),
        pce_id=info.text("pceId"),
        tcb_type=info.integer("tcbType", 0),
        tcb_evaluation_data_number=info.integer("tcbEvaluationDataNumber", 0),
        module_mrsigner=module.hexbytes("mrsigner", 48) if module else b"",
        module_attributes=module.hexbytes("attributes", 8) if module else b"",
        module_attributes_mask=module.hexbytes("attributesMask", 8) if module else b"",
        module_identities=tuple(identities),
        tcb_levels=tuple(levels),
    )


def parse_qe_identity(raw: bytes) -> QeIdentity:
    """Parse a PCS QE identity response (``{"enclaveIdentity": {...}, "signature": "..."}``).

    Raises:
        InputError: the bytes are not a PCS JSON response.
        CollateralError: a field is missing or has the wrong type.
    """
    body, signed, sig = _signed_document(raw, "enclaveIdentity", "QE identity")
    ident = _Fields(body, "QE identity")
    return QeIdentity(
        raw=bytes(raw),
        signed_bytes=signed,
        signature=sig,
        id=ident.text("id"),
        version=ident.number("version"),
        issue_date=ident.timestamp("issueDate"),
        next_update=ident.timestamp("nextUpdate"),
        tcb_evaluation_data_number=ident.integer("tcbEvaluationDataNumber", 0),
        miscselect=ident.hexbytes("miscselect", 4),
        miscselect_mask=ident.hexbytes("miscselectMask", 4),
        attributes=ident.hexbytes("attributes", 16),
        attributes_mask=ident.hexbytes("attributesMask", 16),
        mrsigner=ident.hexbytes("mrsigner", 32),
        isvprodid=ident.integer("isvprodid"),
        tcb_levels=_module_levels(ident),
    )


def load_crl(data: bytes, *, what: str = "CRL") -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes.

    Raises:
        InputError: the bytes are not a CRL.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if b"-----BEGIN X509 CRL-----" in data:
                return x509.load_pem_x509_crl(data)
            return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise InputError(
            f"{what} is not a readable X.509 CRL ({str(exc).rstrip('.')})",
            hint="pass the DER CRL as Intel PCS serves it",
        ) from None


@dataclass(frozen=True)
class TdxCollateral:
    """Everything Intel PCS serves for appraising one TDX quote.

    Attributes:
        tcb_info: the parsed TCB info for the platform's FMSPC.
        qe_identity: the parsed TD_QE identity.
        issuer_chain: "Intel SGX TCB Signing" then the Intel SGX Root CA (the PCS
            ``TCB-Info-Issuer-Chain`` / ``SGX-Enclave-Identity-Issuer-Chain`` header, URL-decoded).
        crls: optional Root CA CRL and PCK Platform/Processor CA CRL.
    """

    tcb_info: TcbInfo
    qe_identity: QeIdentity
    issuer_chain: tuple[x509.Certificate, ...]
    crls: tuple[x509.CertificateRevocationList, ...] = ()


def load_collateral(
    *,
    tcb_info: bytes,
    qe_identity: bytes,
    issuer_chain: bytes | Sequence[x509.Certificate],
    crls: Iterable[bytes | x509.CertificateRevocationList] = (),
) -> TdxCollateral:
    """Parse the PCS responses, the issuer chain (PEM) and CRLs (DER or PEM) into collateral.

    Raises:
        InputError: something is not readable as what it was given as.
        CollateralError: a PCS document lacks a field or has one of the wrong type.
    """
    if isinstance(issuer_chain, (bytes, bytearray)):
        chain = tuple(load_certificates(bytes(issuer_chain), what="collateral issuer chain"))
    else:
        chain = tuple(issuer_chain)
    loaded = tuple(
        c if isinstance(c, x509.CertificateRevocationList) else load_crl(c, what=f"CRL {i + 1}")
        for i, c in enumerate(crls)
    )
    return TdxCollateral(
        tcb_info=parse_tcb_info(tcb_info),
        qe_identity=parse_qe_identity(qe_identity),
        issuer_chain=chain,
        crls=loaded,
    )


# --- verification ---------------------------------------------------------------------------


def _check_signing_chain(
    chain: Sequence[x509.Certificate], *, roots: TrustStore, at: datetime
) -> tuple[ec.EllipticCurvePublicKey, TrustAnchor]:
    if len(chain) < 2:
        raise ChainError(
            f"the collateral issuer chain holds {len(chain)} certificate(s), expected "
            f"'{TCB_SIGNING_CN}' and the Intel SGX Root CA",
            hint="pass --collateral-chain with the PCS TCB-Info-Issuer-Chain (URL-decoded PEM)",
        )
    if describe(chain[0]) != TCB_SIGNING_CN:
        raise ChainError(
            f"the collateral is signed by '{describe(chain[0])}', expected '{TCB_SIGNING_CN}'",
            hint="pass the PCS TCB-Info-Issuer-Chain (URL-decoded PEM), signing certificate first",
        )
    anchor = verify_chain(chain, roots=roots, at=at)
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ChainError(f"'{describe(chain[0])}' does not hold an EC P-256 key")
    return key, anchor


def _check_signature(key: ec.EllipticCurvePublicKey, signed: bytes, sig: bytes, what: str) -> None:
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError(
            f"the {what} signature does not verify with '{TCB_SIGNING_CN}' over the exact bytes of "
            "its body: the document was altered or belongs to another issuer chain",
            hint="pass the PCS response exactly as served, with its issuer chain",
        ) from None


def _check_fresh(what: str, issue: datetime, next_update: datetime, at: datetime) -> None:
    if at > next_update:
        raise CollateralError(
            f"the {what} is stale: its nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} is before the "
            f"verification time {at:%Y-%m-%dT%H:%M:%SZ} (issued {issue:%Y-%m-%dT%H:%M:%SZ})",
            hint=_FETCH_HINT,
        )


def verify_collateral(
    collateral: TdxCollateral, *, at: datetime, roots: TrustStore | None = None
) -> TrustAnchor:
    """Check the TCB info and QE identity: signer chain, signatures, ids, versions, freshness.

    A Root CA CRL among ``collateral.crls`` is also checked against the signing certificate.

    Returns:
        the pinned root the signing chain ends at.

    Raises:
        ChainError: the issuer chain is not "Intel SGX TCB Signing" to a pinned root, or revoked.
        SignatureError: a document's signature does not cover its exact body bytes.
        CollateralError: wrong id or version, no TCB levels, or stale (``nextUpdate`` passed).
    """
    roots = roots if roots is not None else TrustStore.of(INTEL_SGX_ROOT)
    info, ident = collateral.tcb_info, collateral.qe_identity
    if info.id != TCB_INFO_ID or info.version != TCB_INFO_VERSION:
        raise CollateralError(
            f"the TCB info is id '{info.id}' version {info.version:g}, expected '{TCB_INFO_ID}' "
            f"version {TCB_INFO_VERSION}",
            hint="fetch the TDX TCB info (/tdx/certification/v4/tcb), not the SGX one",
        )
    if ident.id != QE_IDENTITY_ID or ident.version != QE_IDENTITY_VERSION:
        raise CollateralError(
            f"the QE identity is id '{ident.id}' version {ident.version:g}, expected "
            f"'{QE_IDENTITY_ID}' version {QE_IDENTITY_VERSION}",
            hint="fetch the TD quoting enclave identity (/tdx/certification/v4/qe/identity)",
        )
    # Staleness first, as go-tdx-guest does: stale collateral usually also means an expired
    # signing certificate, and "fetch fresh collateral" is the message that helps.
    _check_fresh("TCB info", info.issue_date, info.next_update, at)
    _check_fresh("QE identity", ident.issue_date, ident.next_update, at)
    key, anchor = _check_signing_chain(collateral.issuer_chain, roots=roots, at=at)
    _check_signature(key, info.signed_bytes, info.signature, "TCB info")
    _check_signature(key, ident.signed_bytes, ident.signature, "QE identity")
    if not info.tcb_levels:
        raise CollateralError("the TCB info lists no TCB levels")
    if not ident.tcb_levels:
        raise CollateralError("the QE identity lists no TCB levels")
    check_revocation(collateral.crls, collateral.issuer_chain, at=at, what="collateral issuer chain")
    return anchor


def check_revocation(
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    what: str = "PCK chain",
) -> int:
    """Check a verified ``chain`` (leaf first) against the CRLs whose issuer is in it.

    Each CRL issued by a certificate of ``chain`` must verify with that certificate and be
    current at ``at``; no certificate it issued may be listed. CRLs from other issuers are
    ignored here (a Root CA CRL applies to every chain, a PCK CRL only to the PCK chain).

    Returns:
        how many CRLs applied.

    Raises:
        CollateralError: a CRL does not verify with its issuer, or is stale.
        ChainError: a certificate of the chain is revoked.
    """
    applied = 0
    for crl in crls:
        for i, issuer in enumerate(chain):
            if crl.issuer != issuer.subject:
                continue
            public = issuer.public_key()
            valid = isinstance(public, ec.EllipticCurvePublicKey) and crl.is_signature_valid(public)
            if not valid:
                raise CollateralError(
                    f"the CRL naming '{describe(issuer)}' as issuer is not signed by the "
                    f"'{describe(issuer)}' of the {what}",
                    hint="pass the CRLs Intel PCS serves for this chain",
                )
            next_update = crl.next_update_utc
            if next_update is not None and at > next_update:
                raise CollateralError(
                    f"the CRL of '{describe(issuer)}' is stale: its nextUpdate "
                    f"{next_update:%Y-%m-%dT%H:%M:%SZ} is before the verification time "
                    f"{at:%Y-%m-%dT%H:%M:%SZ}",
                    hint=_FETCH_HINT,
                )
            applied += 1
            for child in chain[:i]:
                if child.issuer != issuer.subject:
                    continue
                entry = crl.get_revoked_certificate_by_serial_number(child.serial_number)
                if entry is not None:
                    raise ChainError(
                        f"certificate '{describe(child)}' (serial {child.serial_number:x}) of the "
                        f"{what} was revoked by '{describe(issuer)}' at "
                        f"{entry.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ}",
                        hint="the platform's keys are no longer trusted by Intel",
                    )
    return applied


# --- matching ---------------------------------------------------------------------------------


def worst_status(*statuses: str) -> str:
    """The worst of Intel TCB statuses (unknown names rank below ``Revoked``)."""

    def rank(status: str) -> int:
        return STATUS_ORDER.index(status) if status in STATUS_ORDER else len(STATUS_ORDER)

    return max(statuses, key=rank)


@dataclass(frozen=True)
class TcbMatch:
    """The platform's standing according to the TCB info.

    ``status`` is the worse of the platform level's and (when TEE_TCB_SVN names a module
    version) the TDX module level's status.
    """

    status: str
    level: TcbLevel
    module_id: str | None = None
    module_level: ModuleTcbLevel | None = None

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        extra = self.module_level.advisory_ids if self.module_level else ()
        return tuple(dict.fromkeys((*self.level.advisory_ids, *extra)))


@dataclass(frozen=True)
class QeMatch:
    """The quoting enclave's standing according to the QE identity."""

    status: str
    level: ModuleTcbLevel

    @property
    def advisory_ids(self) -> tuple[str, ...]:
        return self.level.advisory_ids


def _at_least(observed: Sequence[int], required: Sequence[int], start: int = 0) -> bool:
    if len(observed) != len(required):
        return False
    return all(observed[i] >= required[i] for i in range(start, len(observed)))


def match_tcb_level(
    info: TcbInfo,
    pck: PckExtensions,
    *,
    tee_tcb_svn: bytes,
    mrsignerseam: bytes,
    seam_attributes: bytes,
) -> TcbMatch:
    """Find the platform's TCB level in ``info`` (verified beforehand) as go-tdx-guest does.

    Raises:
        CollateralError: the TCB info is for another FMSPC or PCE-ID.
        TcbError: the TDX module signer or SEAM attributes differ from the TCB info, or no TCB
            level (or TDX module level) matches the platform.
    """
    if info.fmspc.lower() != pck.fmspc_hex:
        raise CollateralError(
            f"the TCB info is for FMSPC {info.fmspc} but the PCK certificate names {pck.fmspc_hex}",
            hint=f"fetch the TCB info for fmspc={pck.fmspc_hex}",
        )
    if info.pce_id.lower() != pck.pce_id_hex:
        raise CollateralError(
            f"the TCB info is for PCE-ID {info.pce_id} but the PCK certificate names {pck.pce_id_hex}",
            hint="fetch the TCB info that belongs to this platform",
        )
    if info.module_mrsigner != mrsignerseam:
        raise TcbError(
            f"MRSIGNERSEAM {mrsignerseam.hex()} is not the TDX module signer the TCB info names "
            f"({info.module_mrsigner.hex()})",
            hint="the TD does not run on an Intel-signed TDX module",
        )
    masked = bytes(a & m for a, m in zip(seam_attributes, info.module_attributes_mask, strict=False))
    if len(info.module_attributes_mask) != len(seam_attributes) or masked != info.module_attributes:
        raise TcbError(
            f"SEAMATTRIBUTES {seam_attributes.hex()} masked with "
            f"{info.module_attributes_mask.hex()} is {masked.hex()}, but the TCB info requires "
            f"{info.module_attributes.hex()}",
        )
    skip = 2 if len(tee_tcb_svn) > 1 and tee_tcb_svn[1] > 0 else 0
    level = next(
        (
            lv
            for lv in info.tcb_levels
            if _at_least(pck.cpu_svn_components, lv.sgx_components)
            and pck.pce_svn >= lv.pce_svn
            and _at_least(tee_tcb_svn, lv.tdx_components, skip)
        ),
        None,
    )
    if level is None:
        raise TcbError(
            "no TCB level in the TCB info matches the platform (CPU SVN components "
            f"{list(pck.cpu_svn_components)}, PCE SVN {pck.pce_svn}, TEE_TCB_SVN {tee_tcb_svn.hex()})",
            hint="the platform's TCB is older than every level Intel lists, or the TCB info is "
            "for another platform; fetch current TCB info for fmspc=" + pck.fmspc_hex,
        )
    if not skip:
        return TcbMatch(status=level.tcb_status, level=level)
    module_id = f"TDX_{tee_tcb_svn[1]:02X}"
    identity = next((m for m in info.module_identities if m.id.upper() == module_id), None)
    if identity is None:
        raise TcbError(
            f"the TCB info has no TDX module identity {module_id}, which TEE_TCB_SVN "
            f"{tee_tcb_svn.hex()} names",
            hint="fetch current TCB info from Intel PCS",
        )
    module_level = next((lv for lv in identity.tcb_levels if tee_tcb_svn[0] >= lv.isvsvn), None)
    if module_level is None:
        raise TcbError(
            f"no TCB level of TDX module identity {module_id} matches the module's ISVSVN {tee_tcb_svn[0]}",
        )
    return TcbMatch(
        status=worst_status(level.tcb_status, module_level.tcb_status),
        level=level,
        module_id=module_id,
        module_level=module_level,
    )


def match_qe_identity(
    identity: QeIdentity,
    *,
    miscselect: int,
    attributes: bytes,
    mrsigner: bytes,
    isvprodid: int,
    isvsvn: int,
) -> QeMatch:
    """Check a QE report's identity against ``identity`` and find its TCB level.

    Raises:
        CollateralError: MISCSELECT or ATTRIBUTES (masked), MRSIGNER or ISVPRODID differ: the
            quote's QE is not the enclave the QE identity describes.
        TcbError: no QE TCB level is at or below the report's ISVSVN.
    """
    mask = int.from_bytes(identity.miscselect_mask, "little")
    want = int.from_bytes(identity.miscselect, "little")
    if miscselect & mask != want:
        raise CollateralError(
            f"the QE report's MISCSELECT 0x{miscselect:08x} masked with 0x{mask:08x} is "
            f"0x{miscselect & mask:08x}, but the QE identity requires 0x{want:08x}"
        )
    masked = bytes(a & m for a, m in zip(attributes, identity.attributes_mask, strict=False))
    if len(attributes) != len(identity.attributes_mask) or masked != identity.attributes:
        raise CollateralError(
            f"the QE report's ATTRIBUTES {attributes.hex()} masked are {masked.hex()}, but the QE "
            f"identity requires {identity.attributes.hex()}"
        )
    if mrsigner != identity.mrsigner:
        raise CollateralError(
            f"the QE report's MRSIGNER {mrsigner.hex()} is not the {identity.mrsigner.hex()} the "
            "QE identity names: the quote did not come from Intel's TD quoting enclave"
        )
    if isvprodid != identity.isvprodid:
        raise CollateralError(
            f"the QE report's ISVPRODID {isvprodid} is not the {identity.isvprodid} the QE identity names"
        )
    level = next((lv for lv in identity.tcb_levels if lv.isvsvn <= isvsvn), None)
    if level is None:
        raise TcbError(
            f"no TCB level in the QE identity matches the QE's ISVSVN {isvsvn}",
            hint="the quoting enclave is older than every level Intel lists",
        )
    return QeMatch(status=level.tcb_status, level=level)

"""Intel PCS collateral for TDX quotes: TCB info, QE identity and CRLs, parsed as served.

A TDX quote proves which TD produced it; whether the platform and quoting enclave behind it are
*current* is what Intel's collateral says. This module reads that collateral exactly as Intel's
Provisioning Certification Service (PCS) serves it (docs/attestation-formats.md section 2.4,
step 7; go-tdx-guest ``verify/verify.go``); :mod:`jupyter_cc.attest.tdx.tcb` checks it:

* **TCB info** (``/tdx/certification/v4/tcb?fmspc=...``) and **QE identity**
  (``/tdx/certification/v4/qe/identity``) are JSON documents whose ``signature`` (hex r‖s,
  ECDSA P-256 with SHA-256) covers the *exact bytes* of the ``tcbInfo`` / ``enclaveIdentity``
  value as it appears in the file. The bytes are sliced from the text, never re-serialized.
  The signer is "Intel SGX TCB Signing", chained to the pinned Intel SGX Root CA.
* **CRLs** (Root CA CRL, PCK Platform/Processor CRL), DER or PEM.

>>> collateral = load_collateral(tcb_info=tcb, qe_identity=qe, issuer_chain=pem)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cryptography import x509

from jupyter_cc.attest import revocation
from jupyter_cc.attest.certs import load_certificates
from jupyter_cc.decoding import JSON_DECODER
from jupyter_cc.errors import CollateralError, InputError

__all__ = [
    "ModuleTcbLevel",
    "QeIdentity",
    "QeTcbLevel",
    "TcbInfo",
    "TcbLevel",
    "TdxCollateral",
    "TdxModuleIdentity",
    "load_collateral",
    "load_crl",
    "parse_qe_identity",
    "parse_tcb_info",
]

# --- collateral JSON ---------------------------------------------------------------------------


def _signed_document(raw: bytes, body_key: str, what: str) -> tuple[_Fields, bytes, bytes]:
    """(parsed body, exact raw bytes of the body value, signature) of a PCS response."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{what} is not UTF-8 JSON") from None
    try:
        values, spans = _top_level_members(text)
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
    return _Fields(body, what), text[start:end].encode("utf-8"), sig


def _top_level_members(text: str) -> tuple[dict[str, Any], dict[str, tuple[int, int]]]:
    """The members of the JSON object ``text`` and where each value's text starts and ends.

    Raises:
        ValueError: ``text`` is not exactly one JSON object with distinct keys.
    """
    decoder = JSON_DECODER
    spans: dict[str, tuple[int, int]] = {}
    values: dict[str, Any] = {}
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
    return values, spans


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
class _PcsDocument:
    """What every signed PCS response has: its bytes, the signed body, the signature, the header."""

    raw: bytes
    signed_bytes: bytes
    signature: bytes
    id: str
    version: float
    issue_date: datetime
    next_update: datetime


def _header(raw: bytes, signed: bytes, sig: bytes, body: _Fields) -> dict[str, Any]:
    """The :class:`_PcsDocument` fields of a response by name, read from its parsed ``body``."""
    return vars(
        _PcsDocument(
            raw=bytes(raw),
            signed_bytes=signed,
            signature=sig,
            id=body.text("id"),
            version=body.number("version"),
            issue_date=body.timestamp("issueDate"),
            next_update=body.timestamp("nextUpdate"),
        )
    )


@dataclass(frozen=True)
class TcbInfo(_PcsDocument):
    """A PCS TCB info response. ``signed_bytes`` is the exact ``tcbInfo`` text the signature covers."""

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
class QeIdentity(_PcsDocument):
    """A PCS QE identity response. ``signed_bytes`` is the exact ``enclaveIdentity`` text."""

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

    The same bytes give the same (immutable) result, parsed once: a verifier sees one TCB info
    for every quote of a platform until its nextUpdate.

    Raises:
        InputError: the bytes are not a PCS JSON response.
        CollateralError: a field is missing or has the wrong type.
    """
    return _parse_tcb_info(bytes(raw))


@functools.lru_cache(maxsize=32)
def _parse_tcb_info(raw: bytes) -> TcbInfo:
    info, signed, sig = _signed_document(raw, "tcbInfo", "TCB info")
    module = info.obj("tdxModule") if "tdxModule" in info.data else None
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
        **_header(raw, signed, sig, info),
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

    Parsed once per distinct bytes, as :func:`parse_tcb_info`.

    Raises:
        InputError: the bytes are not a PCS JSON response.
        CollateralError: a field is missing or has the wrong type.
    """
    return _parse_qe_identity(bytes(raw))


@functools.lru_cache(maxsize=8)
def _parse_qe_identity(raw: bytes) -> QeIdentity:
    ident, signed, sig = _signed_document(raw, "enclaveIdentity", "QE identity")
    return QeIdentity(
        **_header(raw, signed, sig, ident),
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
    """A CRL from DER or PEM bytes, as Intel PCS serves them.

    Raises:
        InputError: the bytes are not a CRL.
    """
    return revocation.load_crl(data, what=what, hint="pass the DER CRL as Intel PCS serves it")


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


@functools.lru_cache(maxsize=16)
def _issuer_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    return tuple(load_certificates(pem, what="collateral issuer chain"))


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
        chain = _issuer_chain(bytes(issuer_chain))
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

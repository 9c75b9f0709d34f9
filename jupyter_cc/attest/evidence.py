"""One entry point for every evidence kind, and the guest agent's evidence bundle.

:class:`Evidence` gathers what one verification needs (the report and whichever certificates,
collateral or keys its kind uses); :func:`verify` sends it to the kind's verifier and returns
:class:`Claims` (the registry, :mod:`jupyter_cc.attest.kinds`, names each kind's verifier).
The CLI fills an ``Evidence`` from files, the provisioner from the bundle the guest agent
returns (:func:`parse_bundle`), so both run the same checks.

Bundle format (JSON, version 2)::

    {"format": "jupyter-cc-evidence", "version": 2, "kind": "sim-snp",
     "nonce": "<64 hex>", "host_key_sha256": "<64 hex>", "source": "...", "collected_at": "...",
     "evidence": {"report": "<base64>", "vcek": "<PEM>", "chain": "<PEM>", ...},
     "gpus": [{"kind": "nvidia", "report": "<base64>", "chain": "<PEM>"}],
     "bound": {"gpu-evidence": "<64 hex>"}}

REPORT_DATA is the labelled input of :mod:`jupyter_cc.attest.binding` over the nonce, the host
key digest and every ``bound`` value; GPU ``i`` signs ``gpu_nonce(nonce, i)`` and the GPU list as
a whole is bound as ``gpu-evidence``.

Binary fields are base64 (either alphabet), certificates PEM. ``evidence`` keys by kind:
``report`` (SNP report, TD quote, or HCL report for Azure kinds), ``vcek``, ``chain``,
``td_quote``, ``tpm_quote``, ``tpm_sig``, ``tcb_info``, ``qe_identity``, ``collateral_chain``,
``crls`` (a list of base64 DER CRLs). Collateral in a bundle is a hint: it counts only where it
verifies to the chain's CAs, so a guest can leave it out (``revocation: unchecked``) but not
forge it.
"""

from __future__ import annotations

import hmac
import importlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypedDict

from cryptography import x509

from jupyter_cc.attest.binding import (
    GPU_EVIDENCE,
    NONCE_SIZE,
    check_report_data,
    expected_report_data,
    gpu_evidence_digest,
    gpu_nonce,
    parse_bound,
)
from jupyter_cc.attest.certs import load_certificates
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.kinds import AZURE_KINDS, KIND_NAMES
from jupyter_cc.attest.kinds import kind as registered_kind
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.decoding import b64decode_any, decode_hex, strict_json
from jupyter_cc.errors import BindingError, CCError, FormatError, InputError

__all__ = [
    "BUNDLE_FORMAT",
    "Bundle",
    "Evidence",
    "TdxCollateralInputs",
    "bound_report_data",
    "parse_bundle",
    "serialize_bundle",
    "verify",
    "verify_bundle",
]

BUNDLE_FORMAT = "jupyter-cc-evidence"
BUNDLE_VERSION = 2  # version 2: the labelled REPORT_DATA input of jupyter_cc.attest.binding
_MAX_BUNDLE = 4 * 1024 * 1024


class TdxCollateralInputs(TypedDict):
    """The Intel PCS collateral evidence may carry, as the TDX verifiers take it by keyword."""

    tcb_info: bytes | None
    qe_identity: bytes | None
    collateral_chain: bytes | None
    crls: Sequence[bytes]
    allow_stale_days: int


@dataclass(frozen=True)
class Evidence:
    """Everything one verification needs; which fields matter depends on ``kind``."""

    kind: str
    report: bytes | str
    vek: x509.Certificate | None = None
    chain: tuple[x509.Certificate, ...] = ()
    chain_pem: bytes | None = None
    td_quote: bytes | None = None
    tpm_quote: bytes | None = None
    tpm_sig: bytes | None = None
    tcb_info: bytes | None = None
    qe_identity: bytes | None = None
    collateral_chain: bytes | None = None
    crls: tuple[bytes, ...] = ()
    jwks: bytes | None = None
    issuer: str | None = None
    nonce: bytes | None = None
    gpus: tuple[Evidence, ...] = ()
    allow_stale_days: int = 0
    gpu_collateral: Any = None  # nvidia: a jupyter_cc.attest.nvidia_rim.GpuCollateral (RIMs, OCSP)

    def binary(self) -> bytes:
        """``report`` as bytes; :class:`InputError` when it is text (only MAA tokens are)."""
        if isinstance(self.report, str):
            raise InputError(f"{self.kind} evidence is binary, not text")
        return self.report

    def require(self, name: str, what: str, hint: str) -> Any:
        """The field ``name``, which this kind cannot be verified without (``what`` names it)."""
        value = getattr(self, name)
        if value is None:
            raise InputError(f"verifying {self.kind} evidence needs {what}", hint=hint)
        return value

    def tdx_collateral(self) -> TdxCollateralInputs:
        """The TDX collateral fields, for ``verify_tdx(..., **ev.tdx_collateral())``."""
        return {
            "tcb_info": self.tcb_info,
            "qe_identity": self.qe_identity,
            "collateral_chain": self.collateral_chain,
            "crls": self.crls,
            "allow_stale_days": self.allow_stale_days,
        }


def _verifier(name: str) -> Callable[..., Claims]:
    """The registered verifier of kind ``name``, imported on first use."""
    entry = registered_kind(name)
    if entry is None:
        raise InputError(f"unknown evidence kind '{name}'", hint=f"use one of {', '.join(KIND_NAMES)}")
    module, _, function = entry.verifier.partition(":")
    verifier: Callable[..., Claims] = getattr(importlib.import_module(module), function)
    return verifier


def _verify_one(ev: Evidence, at: datetime, roots: TrustStore | None) -> Claims:
    return _verifier(ev.kind)(ev, at=at, roots=roots)


def verify(
    ev: Evidence,
    *,
    at: datetime,
    roots: TrustStore | None = None,
    allow_stale_days: int | None = None,
    crls: Sequence[bytes] = (),
) -> Claims:
    """Verify ``ev`` and any GPU evidence beside it; return the CPU claims with ``gpu`` set.

    ``crls`` (DER or PEM) are checked besides those ``ev`` carries: the verifier's own, from
    its collateral cache. A CRL counts only if a CA of the evidence's chain signed it.

    ``allow_stale_days`` (default: ``ev.allow_stale_days``, 0) lets collateral and CRLs be at
    most that many days past their nextUpdate, for a policy's ``[collateral] max_stale_days``;
    claims say how stale they were in ``collateral_stale_days``.

    Raises:
        EvidenceError: a check failed (its subclass names which).
        InputError: something ``ev.kind`` needs is missing.
    """
    if allow_stale_days is not None:
        ev = replace(ev, allow_stale_days=allow_stale_days)
    if crls:
        ev = replace(ev, crls=(*ev.crls, *crls))
    claims = _verify_one(ev, at, roots)
    if ev.gpus:
        gpu_claims = tuple(_verify_gpu(i, g, at, roots) for i, g in enumerate(ev.gpus))
        claims = replace(claims, gpu=gpu_claims[0], gpus=gpu_claims)
    return claims


def _verify_gpu(index: int, ev: Evidence, at: datetime, roots: TrustStore | None) -> Claims:
    """Verify GPU ``index``: only NVIDIA evidence is GPU evidence; a failure names the GPU."""
    if ev.kind != "nvidia":
        raise FormatError(
            f"GPU {index}: the bundle's gpus list holds {ev.kind or 'unnamed'} evidence, not an NVIDIA "
            "GPU attestation report",
            hint="only kind nvidia entries are GPU evidence; collect GPU evidence through NVML",
        )
    try:
        return _verify_one(ev, at, roots)
    except CCError as exc:
        raise type(exc)(f"GPU {index}: {exc.message}", hint=exc.hint, source=exc.source) from None


# --- bundles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """A parsed evidence bundle: the evidence and what its REPORT_DATA must bind."""

    evidence: Evidence
    nonce: bytes
    host_key_sha256: bytes
    source: str = ""
    collected_at: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    bound: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def report_data(self) -> bytes:
        return expected_report_data(self.nonce, self.host_key_sha256, self.bound)


def _field_bytes(evidence: Mapping[str, Any], key: str) -> bytes | None:
    value = evidence.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FormatError(f"evidence bundle field '{key}' must be a base64 string")
    try:
        return b64decode_any(value, what=f"evidence bundle field '{key}'")
    except InputError as exc:
        raise FormatError(exc.message) from None


def _field_certs(evidence: Mapping[str, Any], key: str) -> tuple[x509.Certificate, ...]:
    value = evidence.get(key)
    if value is None:
        return ()
    if not isinstance(value, str):
        raise FormatError(f"evidence bundle field '{key}' must be PEM text")
    try:
        return tuple(
            load_certificates(value.encode("ascii", "replace"), what=f"evidence bundle field '{key}'")
        )
    except InputError as exc:
        raise FormatError(exc.message) from None


def _field_crls(evidence: Mapping[str, Any]) -> tuple[bytes, ...]:
    value = evidence.get("crls")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError("evidence bundle field 'crls' must be a list of base64 strings")
    return tuple(_field_bytes({"crls": v}, "crls") or b"" for v in value)


def _evidence_from(kind: str, evidence: Mapping[str, Any], nonce: bytes | None) -> Evidence:
    if kind not in KIND_NAMES:
        raise FormatError(f"evidence bundle names unknown kind '{kind}' (known: {', '.join(KIND_NAMES)})")
    if not isinstance(evidence, Mapping):
        raise FormatError("evidence bundle field 'evidence' must be an object")
    report = _field_bytes(evidence, "report")
    if report is None:
        raise FormatError(f"evidence bundle for {kind} has no 'report'")
    vek = _field_certs(evidence, "vcek")
    chain_pem = evidence.get("chain")
    return Evidence(
        kind=kind,
        report=report,
        vek=vek[0] if vek else None,
        chain=_field_certs(evidence, "chain"),
        chain_pem=chain_pem.encode("ascii", "replace") if isinstance(chain_pem, str) else None,
        td_quote=_field_bytes(evidence, "td_quote"),
        tpm_quote=_field_bytes(evidence, "tpm_quote"),
        tpm_sig=_field_bytes(evidence, "tpm_sig"),
        tcb_info=_field_bytes(evidence, "tcb_info"),
        qe_identity=_field_bytes(evidence, "qe_identity"),
        collateral_chain=_field_bytes(evidence, "collateral_chain"),
        crls=_field_crls(evidence),
        nonce=nonce,
    )


def parse_bundle(data: bytes) -> Bundle:
    """Parse the guest agent's evidence bundle (JSON); :class:`FormatError` on any deviation."""
    if len(data) > _MAX_BUNDLE:
        raise FormatError(f"evidence bundle is {len(data)} bytes, more than the {_MAX_BUNDLE} allowed")
    try:
        doc = strict_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"evidence bundle is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise FormatError(f'not a jupyter-cc evidence bundle (expected "format": "{BUNDLE_FORMAT}")')
    if doc.get("version") != BUNDLE_VERSION:
        raise FormatError(
            f"evidence bundle version {doc.get('version')!r} is not supported (expected {BUNDLE_VERSION}); "
            "the guest runs another jupyter-cc release"
        )
    try:
        nonce = decode_hex(str(doc.get("nonce", "")), what="bundle nonce")
        host_key = decode_hex(str(doc.get("host_key_sha256", "")), what="bundle host_key_sha256")
    except InputError as exc:
        raise FormatError(exc.message) from None
    kind = str(doc.get("kind", ""))
    gpus_raw = doc.get("gpus", [])
    if not isinstance(gpus_raw, list):
        raise FormatError("evidence bundle field 'gpus' must be a list")
    if len(nonce) != NONCE_SIZE or len(host_key) != 32:
        raise FormatError("evidence bundle nonce and host_key_sha256 must be 32 bytes each")
    bound = parse_bound(doc.get("bound"))
    gpus = []
    for index, g in enumerate(gpus_raw):
        if not isinstance(g, dict):
            raise FormatError("each entry of 'gpus' must be an object")
        gpus.append(_evidence_from(str(g.get("kind", "")), g, gpu_nonce(nonce, index)))
    ev = _evidence_from(kind, doc.get("evidence") or {}, None)
    if ev.kind in AZURE_KINDS and ev.tpm_quote is not None:
        # The guest quotes with the first 32 bytes of the bound REPORT_DATA as qualifying data.
        ev = replace(ev, nonce=expected_report_data(nonce, host_key, bound)[:32])
    ev = replace(ev, gpus=tuple(gpus))
    extra = {k: v for k, v in doc.items() if k not in ("evidence", "gpus", "bound")}
    return Bundle(
        evidence=ev,
        nonce=nonce,
        host_key_sha256=host_key,
        source=str(doc.get("source", "")),
        collected_at=str(doc.get("collected_at", "")),
        extra=extra,
        bound=bound,
    )


def bound_report_data(claims: Claims) -> bytes:
    """The bytes a guest controls in this kind of evidence (Azure: the runtime user-data)."""
    if claims.kind in AZURE_KINDS:
        user_data = claims.get("user_data")
        return bytes.fromhex(user_data) if isinstance(user_data, str) else b""
    return claims.report_data


def verify_bundle(
    bundle: Bundle,
    *,
    at: datetime,
    nonce: bytes | None = None,
    host_key_sha256: bytes | None = None,
    roots: TrustStore | None = None,
    allow_stale_days: int | None = None,
    crls: Sequence[bytes] = (),
) -> Claims:
    """Verify a bundle and its binding: REPORT_DATA must be the contract hash of its nonce and key.

    Args:
        nonce: the nonce the verifier sent; when given the bundle must carry exactly it.
        host_key_sha256: digest of the host key seen in the SSH handshake; when given the bundle
            must have bound exactly it (a relay with another key fails here).
        allow_stale_days, crls: as for :func:`verify`.
    """
    if nonce is not None:
        check_report_data(bundle.nonce, nonce, what="the bundle's nonce")
    if host_key_sha256 is not None:
        check_report_data(bundle.host_key_sha256, host_key_sha256, what="the bound SSH host key digest")
    check_gpu_binding(bundle)
    claims = verify(bundle.evidence, at=at, roots=roots, allow_stale_days=allow_stale_days, crls=crls)
    check_report_data(bound_report_data(claims), bundle.report_data)
    return claims


def gpu_digest_entries(gpus: Sequence[Evidence]) -> list[tuple[str, bytes, bytes]]:
    """What :func:`~jupyter_cc.attest.binding.gpu_evidence_digest` covers for each GPU entry."""
    return [(g.kind, g.binary(), g.chain_pem or b"") for g in gpus]


def check_gpu_binding(bundle: Bundle) -> None:
    """The bundle's GPU list must be exactly the one bound into REPORT_DATA, as a whole.

    Raises:
        BindingError: GPU evidence was added, dropped, reordered or swapped after binding.
    """
    gpus = bundle.evidence.gpus
    bound = bundle.bound.get(GPU_EVIDENCE)
    if not gpus and bound is None:
        return
    digest = gpu_evidence_digest(gpu_digest_entries(gpus))
    if bound is None or not hmac.compare_digest(bound, digest):
        raise BindingError(
            f"the bundle's {len(gpus)} GPU evidence entries are not the GPU evidence bound into REPORT_DATA",
            hint="GPU evidence was added, dropped or swapped after binding; collect fresh evidence",
        )


def serialize_bundle(
    kind: str,
    evidence: Mapping[str, str],
    *,
    nonce: bytes,
    host_key_sha256: bytes,
    source: str,
    collected_at: str,
    gpus: Sequence[Mapping[str, str]] = (),
    notes: Sequence[str] = (),
    bound: Mapping[str, bytes] | None = None,
) -> bytes:
    """The JSON a guest agent returns (the inverse of :func:`parse_bundle`).

    ``bound`` holds the optional labelled values bound into REPORT_DATA (with GPUs, at least
    ``gpu-evidence``: :func:`bound_gpu_digest`). ``notes`` say which evidence sources were not
    used and why; they are informational and not covered by any signature.
    """
    doc: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "kind": kind,
        "nonce": nonce.hex(),
        "host_key_sha256": host_key_sha256.hex(),
        "source": source,
        "collected_at": collected_at,
        "evidence": dict(evidence),
        "gpus": [dict(g) for g in gpus],
    }
    if bound:
        doc["bound"] = {label: value.hex() for label, value in sorted(bound.items())}
    if notes:
        doc["notes"] = list(notes)
    return json.dumps(doc, indent=1).encode()


def bound_gpu_digest(gpus: Sequence[Mapping[str, str]]) -> bytes:
    """The ``gpu-evidence`` value for bundle ``gpus`` entries, read as :func:`parse_bundle` reads them."""
    parsed = [_evidence_from(str(g.get("kind", "")), g, None) for g in gpus]
    return gpu_evidence_digest(gpu_digest_entries(parsed))

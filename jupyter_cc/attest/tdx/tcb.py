"""Appraising TDX collateral: is it genuine and fresh, and where does the platform stand in it.

* :func:`verify_collateral`: the TCB info and QE identity are signed by "Intel SGX TCB Signing"
  chained to a pinned root, have the expected ids and versions, and are fresh.
* :func:`check_revocation`: CRLs, verified with their issuer from the chain they apply to, list
  no certificate of that chain (:mod:`jupyter_cc.attest.revocation`).
* Freshness: documents and CRLs past ``nextUpdate`` are refused unless the caller allows some
  days (``allow_stale_days``); :func:`collateral_stale_days` says how stale they are.
* **Matching**: the TCB level is the first level of the TCB info whose SGX components, PCE SVN
  and TDX components (TEE_TCB_SVN; bytes 0-1 skipped when byte 1 names a module version, then
  the module's level from ``tdxModuleIdentities``) are all at or below the platform's. The QE
  level is the first QE identity level whose ISVSVN is at or below the QE report's.

Nothing here decides whether a status is acceptable: statuses are returned as Intel names them
(:data:`~jupyter_cc.attest.kinds.TCB_STATUSES`, best first) and appraisal belongs to
:mod:`jupyter_cc.policy`.

>>> verify_collateral(collateral, at=utcnow())  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from jupyter_cc.attest.certs import describe, verify_chain
from jupyter_cc.attest.kinds import TCB_STATUSES
from jupyter_cc.attest.revocation import AppliedCrl, CrlHints, apply_crls, stale_days, staleness_note
from jupyter_cc.attest.roots import INTEL_SGX_ROOT, TrustAnchor, TrustStore
from jupyter_cc.attest.tdx.collateral import ModuleTcbLevel, QeIdentity, TcbInfo, TcbLevel, TdxCollateral
from jupyter_cc.errors import ChainError, CollateralError, SignatureError, TcbError

if TYPE_CHECKING:
    from jupyter_cc.attest.tdx.pck import PckExtensions

__all__ = [
    "QeMatch",
    "TcbMatch",
    "apply_revocation",
    "check_revocation",
    "collateral_stale_days",
    "match_qe_identity",
    "match_tcb_level",
    "verify_collateral",
    "worst_status",
]

TCB_INFO_ID = "TDX"
TCB_INFO_VERSION = 3
QE_IDENTITY_ID = "TD_QE"
QE_IDENTITY_VERSION = 2
TCB_SIGNING_CN = "Intel SGX TCB Signing"
_FETCH_HINT = "fetch fresh collateral from Intel PCS, or pass --at with a time inside its validity"


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
    anchor = verify_chain(chain, roots=roots, at=at, end_entity="the collateral signing certificate")
    key = chain[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ChainError(f"'{describe(chain[0])}' does not hold an EC P-256 key")
    return key, anchor


@functools.lru_cache(maxsize=64)
def _signature_holds(key_der: bytes, signed: bytes, sig: bytes) -> bool:
    """Whether ``sig`` (raw r||s) over ``signed`` verifies with the P-256 key ``key_der``.

    The answer depends only on these bytes, so it is cached: a verifier judging one platform
    again and again (kernels re-attesting, a broker) checks each collateral document once.
    """
    key = serialization.load_der_public_key(key_der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _check_signature(key: ec.EllipticCurvePublicKey, signed: bytes, sig: bytes, what: str) -> None:
    key_der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if not _signature_holds(key_der, signed, sig):
        raise SignatureError(
            f"the {what} signature does not verify with '{TCB_SIGNING_CN}' over the exact bytes of "
            "its body: the document was altered or belongs to another issuer chain",
            hint="pass the PCS response exactly as served, with its issuer chain",
        )


def _check_fresh(
    what: str, issue: datetime, next_update: datetime, at: datetime, allow_stale_days: int
) -> int:
    days = stale_days(next_update, at)
    if days > allow_stale_days:
        raise CollateralError(
            f"the {what} is stale: its nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} is before the "
            f"verification time {at:%Y-%m-%dT%H:%M:%SZ} (issued {issue:%Y-%m-%dT%H:%M:%SZ})"
            f"{staleness_note(days, allow_stale_days)}",
            hint=_FETCH_HINT,
        )
    return days


def collateral_stale_days(collateral: TdxCollateral, at: datetime) -> int:
    """Days the staler of the TCB info and QE identity is past its nextUpdate (0: both current)."""
    return max(
        stale_days(collateral.tcb_info.next_update, at), stale_days(collateral.qe_identity.next_update, at)
    )


def verify_collateral(
    collateral: TdxCollateral,
    *,
    at: datetime,
    roots: TrustStore | None = None,
    allow_stale_days: int = 0,
) -> TrustAnchor:
    """Check the TCB info and QE identity: signer chain, signatures, ids, versions, freshness.

    A Root CA CRL among ``collateral.crls`` is also checked against the signing certificate.
    Documents and CRLs past their nextUpdate are refused, unless by at most
    ``allow_stale_days`` days (:func:`collateral_stale_days` says by how many).

    Returns:
        the pinned root the signing chain ends at.

    Raises:
        ChainError: the issuer chain is not "Intel SGX TCB Signing" to a pinned root, or revoked.
        SignatureError: a document's signature does not cover its exact body bytes.
        CollateralError: wrong id or version, no TCB levels, or stale (``nextUpdate`` passed).
    """
    roots = roots if roots is not None else TrustStore.of(INTEL_SGX_ROOT)
    memo = _memo_key(collateral, roots, allow_stale_days)
    known = _VERIFIED.get(memo)
    if known is not None and known.holds(collateral, at):
        return known.anchor
    anchor = _verify_collateral(collateral, at=at, roots=roots, allow_stale_days=allow_stale_days)
    window = _window(collateral)
    if window is not None:
        if len(_VERIFIED) >= 32:
            _VERIFIED.clear()
        _VERIFIED[memo] = _Verified(collateral, window[0], window[1], anchor)
    return anchor


@dataclass(frozen=True)
class _Verified:
    """Collateral that passed every check, and the times between which all of them hold."""

    collateral: TdxCollateral
    not_before: datetime
    not_after: datetime
    anchor: TrustAnchor

    def holds(self, collateral: TdxCollateral, at: datetime) -> bool:
        # The documents and CRLs are parsed once per distinct bytes (the same objects come back),
        # so identity is the check that this is the very collateral that was verified.
        mine = self.collateral
        return (
            mine.tcb_info is collateral.tcb_info
            and mine.qe_identity is collateral.qe_identity
            and mine.issuer_chain == collateral.issuer_chain
            and len(mine.crls) == len(collateral.crls)
            and all(a is b for a, b in zip(mine.crls, collateral.crls, strict=True))
            and self.not_before <= at <= self.not_after
        )


# Verified collateral by what it is made of, the roots and the staleness allowed: a verifier
# judging one platform again and again (kernels re-attesting, a broker) checks its collateral's
# signatures, chain and CRLs once, and then only whether the time is still inside the window
# where every check holds. Failures are never remembered.
_VERIFIED: dict[tuple[object, ...], _Verified] = {}


def _memo_key(collateral: TdxCollateral, roots: TrustStore, allow_stale_days: int) -> tuple[object, ...]:
    return (
        id(collateral.tcb_info),
        id(collateral.qe_identity),
        tuple(id(c) for c in collateral.crls),
        tuple(sorted(roots.anchors)),
        allow_stale_days,
    )


def _window(collateral: TdxCollateral) -> tuple[datetime, datetime] | None:
    """When every time check of :func:`_verify_collateral` passes for sure, without allowance.

    From the latest notBefore of the issuer chain to the earliest of its notAfter and the
    nextUpdate of each document and CRL; None when a CRL has no nextUpdate (always re-checked).
    Outside the window the full checks run again.
    """
    chain = collateral.issuer_chain
    ends = [c.not_valid_after_utc for c in chain]
    ends += [collateral.tcb_info.next_update, collateral.qe_identity.next_update]
    for crl in collateral.crls:
        if crl.next_update_utc is None:
            return None
        ends.append(crl.next_update_utc)
    if not chain:
        return None
    return max(c.not_valid_before_utc for c in chain), min(ends)


def _verify_collateral(
    collateral: TdxCollateral, *, at: datetime, roots: TrustStore, allow_stale_days: int
) -> TrustAnchor:
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
    _check_fresh("TCB info", info.issue_date, info.next_update, at, allow_stale_days)
    _check_fresh("QE identity", ident.issue_date, ident.next_update, at, allow_stale_days)
    key, anchor = _check_signing_chain(collateral.issuer_chain, roots=roots, at=at)
    _check_signature(key, info.signed_bytes, info.signature, "TCB info")
    _check_signature(key, ident.signed_bytes, ident.signature, "QE identity")
    if not info.tcb_levels:
        raise CollateralError("the TCB info lists no TCB levels")
    if not ident.tcb_levels:
        raise CollateralError("the QE identity lists no TCB levels")
    check_revocation(
        collateral.crls,
        collateral.issuer_chain,
        at=at,
        what="collateral issuer chain",
        allow_stale_days=allow_stale_days,
    )
    return anchor


_TDX_CRL_HINTS = CrlHints(
    sign="pass the CRLs Intel PCS serves for this chain",
    stale=_FETCH_HINT,
    revoked="the platform's keys are no longer trusted by Intel",
)


def apply_revocation(
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    what: str = "PCK chain",
    allow_stale_days: int = 0,
) -> list[AppliedCrl]:
    """:func:`check_revocation`, returning the CRLs that applied (with their CA and age)."""
    return apply_crls(crls, chain, at=at, what=what, hints=_TDX_CRL_HINTS, allow_stale_days=allow_stale_days)


def check_revocation(
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    what: str = "PCK chain",
    allow_stale_days: int = 0,
) -> int:
    """Check a verified ``chain`` (leaf first) against the CRLs whose issuer is a CA in it.

    Each CRL issued by a CA of ``chain`` must verify with that certificate and be current at
    ``at`` (or at most ``allow_stale_days`` past its nextUpdate); no certificate it issued may be
    listed. CRLs from other issuers are ignored here (a Root CA CRL applies to every chain, a
    PCK CRL only to the PCK chain).

    Returns:
        how many CRLs applied.

    Raises:
        CollateralError: a CRL does not verify with its issuer, or is stale.
        ChainError: a certificate of the chain is revoked.
    """
    return len(apply_revocation(crls, chain, at=at, what=what, allow_stale_days=allow_stale_days))


# --- matching ---------------------------------------------------------------------------------


def worst_status(*statuses: str) -> str:
    """The worst of Intel TCB statuses (unknown names rank below ``Revoked``)."""

    def rank(status: str) -> int:
        return TCB_STATUSES.index(status) if status in TCB_STATUSES else len(TCB_STATUSES)

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

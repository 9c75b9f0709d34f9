"""Revocation lists and the age of collateral, shared by the SNP and TDX verifiers.

A CRL counts only when it is issued by a CA of the (already verified) chain it is checked
against: its issuer name is that CA's subject, its signature verifies with that CA's key, and it
is current at the verification time (``nextUpdate`` not passed). Collateral past its
``nextUpdate`` is *stale*; verifiers refuse it unless the caller allows some days
(``allow_stale_days``, for a policy's ``[collateral] max_stale_days``), and report how many days
the stalest item was past in the claim ``collateral_stale_days`` (0: every item is current).

Claims say ``revocation: "checked"`` when valid CRLs covering the chain were used, else
``"unchecked"`` (design section 12).

>>> from datetime import timezone
>>> stale_days(datetime(2024, 1, 1, tzinfo=timezone.utc), datetime(2024, 1, 2, 1, tzinfo=timezone.utc))
2
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.utils import CryptographyDeprecationWarning

from jupyter_cc.attest.certs import describe
from jupyter_cc.errors import ChainError, CollateralError, InputError

__all__ = [
    "CHECKED",
    "UNCHECKED",
    "AppliedCrl",
    "CrlHints",
    "apply_crls",
    "check_amd_crls",
    "crl_issuer",
    "load_amd_crls",
    "load_crl",
    "stale_days",
    "staleness_note",
    "verify_crl",
]

CHECKED = "checked"
UNCHECKED = "unchecked"
_DAY = 86400.0


def stale_days(next_update: datetime | None, at: datetime) -> int:
    """Whole days (rounded up) ``at`` is past ``next_update``; 0 when it is not past (or none)."""
    if next_update is None or at <= next_update:
        return 0
    return math.ceil((at - next_update).total_seconds() / _DAY)


def staleness_note(days: int, allowed: int) -> str:
    """The end of a staleness refusal when some days were allowed (empty when none were)."""
    return f", {days} days past, more than the {allowed} allowed" if allowed > 0 else ""


def load_crl(
    data: bytes, *, what: str = "CRL", hint: str = "pass the DER CRL"
) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes (the same bytes give the same, immutable object).

    Raises:
        InputError: the bytes are not a CRL.
    """
    try:
        return _parse_crl(bytes(data))
    except ValueError as exc:
        raise InputError(f"{what} is not a readable X.509 CRL ({str(exc).rstrip('.')})", hint=hint) from None


@functools.lru_cache(maxsize=64)
def _parse_crl(data: bytes) -> x509.CertificateRevocationList:
    # Verifiers see the same CRLs for every report until their nextUpdate; parse them once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        if b"-----BEGIN X509 CRL-----" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)


@dataclass(frozen=True)
class AppliedCrl:
    """A CRL that verified with a CA of the chain: the CA's position (leaf = 0) and its age."""

    crl: x509.CertificateRevocationList
    issuer: x509.Certificate
    position: int
    stale_days: int


def crl_issuer(crl: x509.CertificateRevocationList, chain: Sequence[x509.Certificate]) -> int | None:
    """The position in ``chain`` of the certificate whose subject is the CRL's issuer, or None.

    Names are compared as DER bytes, the exact encoding both carry.
    """
    try:
        issuer = _issuer_der(crl)
        return next((i for i, cert in enumerate(chain) if _subject_der(cert) == issuer), None)
    except ValueError:  # a malformed name never matches
        return None


# CRL objects are not hashable; the issuer of each one seen is kept by identity, holding the object
# so its id cannot be reused while the entry exists (load_crl hands out the same object per bytes).
_ISSUERS: dict[int, tuple[x509.CertificateRevocationList, bytes]] = {}


def _issuer_der(crl: x509.CertificateRevocationList) -> bytes:
    known = _ISSUERS.get(id(crl))
    if known is not None and known[0] is crl:
        return known[1]
    der = crl.issuer.public_bytes()
    if len(_ISSUERS) >= 128:
        _ISSUERS.clear()
    _ISSUERS[id(crl)] = (crl, der)
    return der


@functools.lru_cache(maxsize=256)
def _subject_der(cert: x509.Certificate) -> bytes:
    return cert.subject.public_bytes()


@functools.lru_cache(maxsize=256)
def _issuer_of_der(cert: x509.Certificate) -> bytes:
    return cert.issuer.public_bytes()


# Successful CRL signature checks, by the CRL object (held, as in _ISSUERS) and the issuer
# certificate (its bytes): a verifier re-checks the same CRL for every report. Failures are never
# cached.
_VERIFIED: dict[tuple[int, x509.Certificate], x509.CertificateRevocationList] = {}


def _signature_valid(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = (id(crl), issuer)
    if _VERIFIED.get(key) is crl:
        return True
    try:
        valid = bool(crl.is_signature_valid(issuer.public_key()))  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):
        return False
    if valid:
        if len(_VERIFIED) >= 256:
            _VERIFIED.clear()
        _VERIFIED[key] = crl
    return valid


def verify_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    *,
    at: datetime,
    what: str,
    sign_hint: str,
    stale_hint: str,
    allow_stale_days: int = 0,
) -> int:
    """Check that ``issuer`` (of the ``what``) signed ``crl`` and that it is fresh enough.

    Returns:
        the days the CRL is past its ``nextUpdate`` (0 when current).

    Raises:
        CollateralError: the signature does not verify, or the CRL is staler than allowed.
    """
    name = describe(issuer)
    if not _signature_valid(crl, issuer):
        raise CollateralError(
            f"the CRL naming '{name}' as issuer is not signed by the '{name}' of the {what}",
            hint=sign_hint,
        )
    next_update = crl.next_update_utc
    days = stale_days(next_update, at)
    if days > allow_stale_days:
        assert next_update is not None
        raise CollateralError(
            f"the CRL of '{name}' is stale: its nextUpdate {next_update:%Y-%m-%dT%H:%M:%SZ} is before "
            f"the verification time {at:%Y-%m-%dT%H:%M:%SZ}{staleness_note(days, allow_stale_days)}",
            hint=stale_hint,
        )
    return days


def _check_listed(
    applied: AppliedCrl, chain: Sequence[x509.Certificate], *, what: str, hint: str, direct_only: bool
) -> None:
    for child in chain[: applied.position]:
        if direct_only and _issuer_of_der(child) != _subject_der(applied.issuer):
            continue
        entry = applied.crl.get_revoked_certificate_by_serial_number(child.serial_number)
        if entry is not None:
            raise ChainError(
                f"certificate '{describe(child)}' (serial {child.serial_number:x}) of the {what} was "
                f"revoked by '{describe(applied.issuer)}' at {entry.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ}",
                hint=hint,
            )


@dataclass(frozen=True)
class CrlHints:
    """What to tell the user when a CRL is mis-signed, stale, revokes, or is for another chain."""

    sign: str
    stale: str
    revoked: str
    foreign: str | None = None


def apply_crls(
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    what: str,
    hints: CrlHints,
    allow_stale_days: int = 0,
    direct_only: bool = True,
) -> list[AppliedCrl]:
    """Check a verified ``chain`` (leaf first) against the CRLs issued by its CAs.

    A CRL applies when its issuer is a CA of ``chain`` (not the leaf); it must then verify with
    that CA's key and be fresh enough (:func:`verify_crl`), and may list no certificate below
    that CA: only those the CA issued directly with ``direct_only``, else every one below it
    (AMD's ARK-issued CRL speaks for the whole product line). CRLs of other issuers are ignored,
    unless ``hints.foreign`` is set: then each refuses.

    Raises:
        CollateralError: a CRL does not verify, is stale, or (``hints.foreign``) is for another chain.
        ChainError: a certificate of the chain is revoked.
    """
    memo = (tuple(id(c) for c in crls), tuple(chain), what, direct_only, hints)
    known = _APPLIED.get(memo)
    if known is not None and all(a is b for a, b in zip(known[0], crls, strict=True)) and at <= known[1]:
        return list(known[2])
    applied = _apply_crls(
        crls, chain, at=at, what=what, hints=hints, allow_stale_days=allow_stale_days, direct_only=direct_only
    )
    # Within every applied CRL's nextUpdate the same CRLs give the same answer (signatures and
    # listings depend only on the bytes, ages are 0): remember successes until the first of them.
    fresh_until = [c.crl.next_update_utc for c in applied]
    if all(fresh_until) and all(c.stale_days == 0 for c in applied):
        if len(_APPLIED) >= 64:
            _APPLIED.clear()
        until = min((t for t in fresh_until if t is not None), default=datetime.max.replace(tzinfo=at.tzinfo))
        _APPLIED[memo] = (tuple(crls), until, tuple(applied))
    return applied


_APPLIED: dict[
    tuple[object, ...], tuple[tuple[x509.CertificateRevocationList, ...], datetime, tuple[AppliedCrl, ...]]
] = {}


def _apply_crls(
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    *,
    at: datetime,
    what: str,
    hints: CrlHints,
    allow_stale_days: int,
    direct_only: bool,
) -> list[AppliedCrl]:
    applied = []
    for crl in crls:
        position = crl_issuer(crl, chain[1:])
        if position is None:
            if hints.foreign is not None:
                raise CollateralError(
                    f"the CRL issued by '{_full_name(crl.issuer)}' is not for the {what}, whose CAs "
                    f"are {', '.join(repr(_full_name(c.subject)) for c in chain[1:])}",
                    hint=hints.foreign,
                )
            continue
        issuer = chain[position + 1]
        days = verify_crl(
            crl,
            issuer,
            at=at,
            what=what,
            sign_hint=hints.sign,
            stale_hint=hints.stale,
            allow_stale_days=allow_stale_days,
        )
        one = AppliedCrl(crl=crl, issuer=issuer, position=position + 1, stale_days=days)
        _check_listed(one, chain, what=what, hint=hints.revoked, direct_only=direct_only)
        applied.append(one)
    return applied


def _full_name(name: x509.Name) -> str:
    try:
        return name.rfc4514_string() or "an empty name"
    except ValueError:
        return "a malformed name"


# --- AMD SEV-SNP ---------------------------------------------------------------------------


def _kds_crl(product: str) -> str:
    return f"AMD KDS /vcek/v1/{product}/crl (VLEK: /vlek/v1/{product}/crl)"


def check_amd_crls(
    crls: Sequence[x509.CertificateRevocationList],
    chain: Sequence[x509.Certificate],
    *,
    product: str,
    signer: str,
    at: datetime,
    allow_stale_days: int = 0,
) -> dict[str, Any]:
    """Check a verified VEK-ASK-ARK ``chain`` against ``crls``; the revocation claims.

    Every CRL must be issued by the ASK/ASVK or the ARK of this chain, verify with its key and
    be current (or at most ``allow_stale_days`` past its nextUpdate); it may list no
    certificate below its issuer.

    Raises:
        CollateralError: a CRL is for another chain, is not signed by its issuer, or is stale.
        ChainError: a certificate of the chain is listed.
    """
    hints = CrlHints(
        sign=f"pass the CRL {_kds_crl(product)} serves",
        stale=f"fetch a current CRL from {_kds_crl(product)}, or pass --at with a time inside its validity",
        revoked="AMD no longer trusts this key: the evidence must not be accepted",
        foreign=f"pass the CRL of this {product} chain: {_kds_crl(product)}",
    )
    what = f"{signer.upper()} chain"
    applied = apply_crls(
        crls, chain, at=at, what=what, hints=hints, allow_stale_days=allow_stale_days, direct_only=False
    )
    out: dict[str, Any] = {
        "revocation": CHECKED if any(a.position == len(chain) - 1 for a in applied) else UNCHECKED
    }
    if applied:
        out["collateral_stale_days"] = max(a.stale_days for a in applied)
    return out


def load_amd_crls(data: Sequence[bytes]) -> list[x509.CertificateRevocationList]:
    """AMD CRLs from DER or PEM bytes; :class:`~jupyter_cc.errors.InputError` names the bad one."""
    hint = "pass the DER CRL AMD KDS serves at /vcek/v1/{product}/crl"
    return [load_crl(c, what=f"CRL {i + 1}", hint=hint) for i, c in enumerate(data)]

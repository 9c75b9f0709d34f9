"""Verifying a TDX quote: its PCK chain to the pinned Intel SGX Root CA, and its signatures.

Checks, in order (each failure its own error, naming the check; docs/attestation-formats.md
section 2, gotdx ``verify/verify.go``):

1. the PCK chain from the quote (leaf, Platform/Processor CA, root) ends at a pinned root
   (``ChainError``), and no given CRL revokes it (claims: ``revocation`` is ``checked`` when
   the PCK CRL and the Root CA CRL were both given and valid, else ``unchecked``);
2. the quote signature (ECDSA P-256, big-endian r‖s) over header‖body verifies with the
   attestation key (``SignatureError``);
3. the QE report signature verifies with the PCK leaf key (``SignatureError``);
4. QE REPORTDATA = SHA-256(attestation key ‖ QE auth data) ‖ 32 zero bytes (``BindingError``);
5. the QE is Intel's TD quoting enclave, always: without collateral its report must show the
   pinned TD_QE identity (:mod:`~jupyter_cc.attest.tdx.qe`, ``ChainError``);
6. with collateral (:mod:`~jupyter_cc.attest.tdx.collateral`, :mod:`~jupyter_cc.attest.tdx.tcb`):
   TCB info and QE identity are signed and fresh, the QE is the one the QE identity names
   (``CollateralError``) at a listed ISVSVN, and the platform's TCB level is found;
   ``tcb_status`` then joins the claims.

The **PCK certificate's SGX extension** (OID 1.2.840.113741.1.13.1) names the platform's
FMSPC, PCE-ID and TCB (16 CPU SVN components and the PCE SVN); it is read here with a small,
bounds-checked DER walker.
"""

from __future__ import annotations

import functools
import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.utils import CryptographyDeprecationWarning

from jupyter_cc.attest import der
from jupyter_cc.attest.certs import describe, verify_chain
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.revocation import CHECKED, UNCHECKED
from jupyter_cc.attest.roots import INTEL_SGX_ROOT, TrustStore
from jupyter_cc.attest.tdx.collateral import QeIdentity, TdxCollateral, load_collateral, load_crl
from jupyter_cc.attest.tdx.qe import check_qe_report
from jupyter_cc.attest.tdx.quote import QeReport, TdxQuote, parse_quote, quote_details
from jupyter_cc.attest.tdx.tcb import (
    QeMatch,
    apply_revocation,
    collateral_stale_days,
    match_qe_identity,
    match_tcb_level,
    verify_collateral,
    worst_status,
)
from jupyter_cc.errors import BindingError, ChainError, FormatError, InputError, SignatureError

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence

__all__ = [
    "PckExtensions",
    "appraise_collateral",
    "match_qe_report",
    "parse_pck_extensions",
    "pck_chain",
    "pck_chain_of",
    "verify_evidence",
    "verify_quote",
    "verify_tdx",
]

PCK_LEAF_CN = "Intel SGX PCK Certificate"
PCK_INTERMEDIATE_CNS = ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA")
SGX_EXT_OID = "1.2.840.113741.1.13.1"
_OID_PPID = f"{SGX_EXT_OID}.1"
_OID_TCB = f"{SGX_EXT_OID}.2"
_OID_PCESVN = f"{_OID_TCB}.17"
_OID_CPUSVN = f"{_OID_TCB}.18"
_OID_PCEID = f"{SGX_EXT_OID}.3"
_OID_FMSPC = f"{SGX_EXT_OID}.4"
_OID_SGX_TYPE = f"{SGX_EXT_OID}.5"


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


# --- the quote ---------------------------------------------------------------------------------


def pck_chain(quote: TdxQuote) -> list[x509.Certificate]:
    """The PCK chain embedded in ``quote``: leaf, Platform/Processor CA, root (not yet verified).

    Raises:
        FormatError: the PEM does not hold exactly three decodable certificates.
    """
    return pck_chain_of(quote.pck_chain_pem)


def pck_chain_of(pem: bytes) -> list[x509.Certificate]:
    """:func:`pck_chain` from the quote's certification data PEM bytes."""
    return list(_load_pck_chain(pem.rstrip(b"\x00")))


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
    allow_stale_days: int = 0,
) -> Claims:
    """Verify ``quote`` to a pinned root and return its claims.

    Args:
        quote: a parsed quote.
        at: the verification time (certificates, CRLs and collateral must be valid then).
        roots: the roots accepted (default: the pinned Intel SGX Root CA only).
        collateral: Intel PCS TCB info and QE identity; adds ``tcb_status`` to the claims.
        crls: CRLs to check the PCK chain against, besides those in ``collateral``.
        kind: the evidence kind the claims are labelled with.
        allow_stale_days: accept collateral and CRLs at most this many days past their
            nextUpdate (default 0: refuse stale collateral).

    Claims always carry ``revocation``: ``checked`` when a PCK CRL (issued by the Platform or
    Processor CA) and the Root CA CRL both applied, else ``unchecked``. With collateral or CRLs
    they carry ``collateral_stale_days`` (0 when every item is within its nextUpdate), and with
    collateral ``tcb_status`` and ``advisory_ids`` from the matched TCB levels.

    Raises:
        FormatError: the embedded PCK chain is unreadable.
        ChainError: the PCK chain is mis-signed, expired, revoked or not pinned, or (without
            collateral) the QE report is not Intel's TD quoting enclave's.
        SignatureError: the quote or QE report signature does not verify.
        BindingError: the QE report does not vouch for the attestation key.
        CollateralError, TcbError: collateral is invalid, stale, for another platform, or no
            TCB level matches.
    """
    roots = roots if roots is not None else TrustStore.of(INTEL_SGX_ROOT)
    if collateral is not None and crls:
        # CRLs given apart from the collateral apply to its issuer chain too (a Root CA CRL can
        # revoke the TCB Signing certificate).
        collateral = replace(collateral, crls=(*crls, *collateral.crls))
    # (1) PCK chain, to a pinned root, and not revoked.
    chain = pck_chain(quote)
    anchor = verify_chain(chain, roots=roots, at=at, end_entity="the PCK certificate")
    _check_chain_names(chain)
    all_crls = collateral.crls if collateral is not None else tuple(crls)
    applied = apply_revocation(all_crls, chain, at=at, allow_stale_days=allow_stale_days)
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
    if collateral is None:
        # (5) The QE is Intel's TD QE, by its pinned identity.
        check_qe_report(quote.qe_report)
    else:
        # (6) Collateral: the QE by Intel's QE identity, and the TCB status of the platform,
        # the TDX module and the QE.
        details.update(
            appraise_collateral(quote, pck, collateral, at=at, roots=roots, allow_stale_days=allow_stale_days)
        )
    covered = {a.position for a in applied}
    details["revocation"] = CHECKED if {1, 2} <= covered else UNCHECKED
    if applied or collateral is not None:
        ages = [a.stale_days for a in applied]
        details["collateral_stale_days"] = max([details.get("collateral_stale_days", 0), *ages])
    return Claims(
        kind=kind,
        simulated=anchor.simulated,
        debug=quote.debug,
        report_data=quote.body.report_data,
        details=details,
    )


def match_qe_report(qe: QeReport, identity: QeIdentity) -> QeMatch:
    """Check the quote's QE report against the PCS QE identity and find its TCB level.

    Raises:
        CollateralError, TcbError: see :func:`~jupyter_cc.attest.tdx.tcb.match_qe_identity`.
    """
    return match_qe_identity(
        identity,
        miscselect=qe.miscselect,
        attributes=qe.attributes,
        mrsigner=qe.mrsigner,
        isvprodid=qe.isv_prod_id,
        isvsvn=qe.isv_svn,
    )


def appraise_collateral(
    quote: TdxQuote,
    pck: PckExtensions,
    collateral: TdxCollateral,
    *,
    at: datetime,
    roots: TrustStore | None = None,
    allow_stale_days: int = 0,
) -> dict[str, Any]:
    """Verify ``collateral`` and look up the quote's TCB and QE status in it (claims, JSON-ready).

    ``tcb_status`` is the worst of the platform level, the TDX module level (when TEE_TCB_SVN
    names a module version) and the QE level; each is reported on its own too.
    ``collateral_stale_days`` is how many days the staler document is past its nextUpdate.

    Raises:
        ChainError, SignatureError, CollateralError, TcbError: see
        :func:`~jupyter_cc.attest.tdx.collateral.verify_collateral`,
        :func:`~jupyter_cc.attest.tdx.collateral.match_tcb_level` and
        :func:`~jupyter_cc.attest.tdx.collateral.match_qe_identity`.
    """
    verify_collateral(collateral, at=at, roots=roots, allow_stale_days=allow_stale_days)
    qe_match = match_qe_report(quote.qe_report, collateral.qe_identity)
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
        "collateral_stale_days": collateral_stale_days(collateral, at),
    }
    if tcb.module_level is not None:
        out["tdx_module_id"] = tcb.module_id
        out["tdx_module_tcb_status"] = tcb.module_level.tcb_status
    return out


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
    allow_stale_days: int = 0,
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
    return verify_quote(
        quote,
        at=at,
        roots=roots,
        collateral=collateral,
        crls=loaded_crls,
        kind=kind,
        allow_stale_days=allow_stale_days,
    )


def verify_evidence(ev: Evidence, *, at: datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``tdx``: the quote with whatever collateral ``ev`` holds."""
    return verify_tdx(ev.binary(), at=at, roots=roots, **ev.tdx_collateral())

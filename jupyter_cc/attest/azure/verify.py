"""Verifying Azure CVM evidence: the HCL report's hardware report, its binding, the TPM quote.

* ``az-snp-vtpm``: the inner SNP report is verified by :func:`jupyter_cc.attest.snp.verify_report`.
* ``az-tdx-vtpm``: a TDREPORT is MAC'd for the local CPU only, so the guest turns it into a TD
  quote (Azure IMDS ``/acc/tdquote``); the quote is verified by :mod:`jupyter_cc.attest.tdx`
  and must carry the TDREPORT's REPORTDATA, MRTD and RTMRs.

The HCL report's layout and the binding of its runtime data are :mod:`.hcl`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509

from jupyter_cc.attest import snp, tpm
from jupyter_cc.attest.azure.hcl import (
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    HclReport,
    azure_details,
    bind_td_quote,
    verify_hcl_binding,
)
from jupyter_cc.attest.claims import Claims
from jupyter_cc.attest.revocation import load_amd_crls
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.errors import InputError

if TYPE_CHECKING:
    from jupyter_cc.attest.evidence import Evidence

__all__ = ["verify_az_snp_vtpm", "verify_az_tdx_vtpm", "verify_snp_evidence", "verify_tdx_evidence"]


def _tpm_claims(
    hcl: HclReport, tpm_quote: bytes | None, tpm_sig: bytes | None, nonce: bytes | None
) -> dict[str, Any]:
    if (tpm_quote is None) != (tpm_sig is None):
        raise InputError(
            "a TPM quote needs both its message and its signature, only one was given",
            hint="pass --tpm-quote and --tpm-sig together",
        )
    if tpm_quote is None or tpm_sig is None:
        if nonce is not None:
            raise InputError(
                "a nonce was given but no TPM quote to check it against",
                hint="pass the TPM quote made with this nonce (--tpm-quote, --tpm-sig)",
            )
        return {}
    quote = tpm.verify_quote(tpm_quote, tpm_sig, hcl.runtime.ak_pub, nonce=nonce)
    return {"tpm_quote": quote.to_json()}


def _azure_claims(
    kind: str,
    claims: Claims,
    hcl: HclReport,
    tpm_quote: bytes | None,
    tpm_sig: bytes | None,
    nonce: bytes | None,
) -> Claims:
    """The hardware report's claims relabelled ``kind``, with the HCL and TPM quote details added."""
    return Claims(
        kind=kind,
        simulated=claims.simulated,
        debug=claims.debug,
        report_data=claims.report_data,
        details=dict(claims.details) | azure_details(hcl) | _tpm_claims(hcl, tpm_quote, tpm_sig, nonce),
    )


def verify_az_snp_vtpm(
    hcl: bytes,
    *,
    vek_cert: x509.Certificate,
    chain: Sequence[x509.Certificate],
    at: datetime,
    roots: TrustStore | None = None,
    tpm_quote: bytes | None = None,
    tpm_sig: bytes | None = None,
    nonce: bytes | None = None,
    crls: Sequence[x509.CertificateRevocationList] = (),
    allow_stale_days: int = 0,
) -> Claims:
    """Verify Azure SEV-SNP CVM evidence: HCL report, inner SNP report, optional TPM quote.

    Steps: (1) the runtime data is bound into the SNP REPORT_DATA; (2) the SNP report verifies
    with ``vek_cert`` and ``chain`` to a pinned ARK; (3) when given, the TPM quote verifies with
    HCLAkPub from the (now authentic) runtime data, and its extraData equals ``nonce``.

    Args:
        hcl: the HCL report bytes (NV index 0x01400001).
        vek_cert, chain, at, roots, crls, allow_stale_days: as for
            :func:`jupyter_cc.attest.snp.verify_report` (claims carry ``revocation``).
        tpm_quote: the TPMS_ATTEST message of a TPM2_Quote by the vTPM's AK.
        tpm_sig: its signature, raw or as a TPMT_SIGNATURE.
        nonce: the challenge the quote must carry; requires ``tpm_quote``.

    Raises:
        FormatError, BindingError, SignatureError, ChainError, TcbError: the failed check.
        InputError: a quote without its signature, or a nonce without a quote.
    """
    report = verify_hcl_binding(hcl, report_type=REPORT_TYPE_SNP)
    claims = snp.verify_report(
        report.snp_report(),
        vek_cert,
        chain,
        at=at,
        roots=roots,
        kind="az-snp-vtpm",
        crls=crls,
        allow_stale_days=allow_stale_days,
    )
    return _azure_claims("az-snp-vtpm", claims, report, tpm_quote, tpm_sig, nonce)


def verify_az_tdx_vtpm(
    hcl: bytes,
    *,
    td_quote: bytes,
    at: datetime,
    roots: TrustStore | None = None,
    tcb_info: bytes | None = None,
    qe_identity: bytes | None = None,
    collateral_chain: bytes | None = None,
    crls: Sequence[bytes] = (),
    tpm_quote: bytes | None = None,
    tpm_sig: bytes | None = None,
    nonce: bytes | None = None,
    allow_stale_days: int = 0,
) -> Claims:
    """Verify Azure TDX CVM evidence: HCL report, the TD quote made from its TDREPORT, TPM quote.

    Steps: (1) the runtime data is bound into the TDREPORT's REPORTDATA; (2) the TD quote
    verifies to the Intel SGX Root CA (:func:`jupyter_cc.attest.tdx.verify_tdx`, collateral
    passed through); (3) the quote carries the TDREPORT's REPORTDATA, MRTD and RTMRs; (4) when
    given, the TPM quote verifies with HCLAkPub and carries ``nonce``.

    Raises:
        FormatError, BindingError, SignatureError, ChainError, CollateralError: the failed check.
        InputError: a TPM quote without its signature, or a nonce without a TPM quote.
    """
    report = verify_hcl_binding(hcl, report_type=REPORT_TYPE_TDX)
    td = report.td_report()
    # Imported here so that this module loads (and SNP evidence verifies) without the TDX one.
    from jupyter_cc.attest.tdx import verify_tdx

    claims = verify_tdx(
        td_quote,
        at=at,
        roots=roots,
        tcb_info=tcb_info,
        qe_identity=qe_identity,
        collateral_chain=collateral_chain,
        crls=crls,
        kind="az-tdx-vtpm",
        allow_stale_days=allow_stale_days,
    )
    bind_td_quote(td, claims)
    return _azure_claims("az-tdx-vtpm", claims, report, tpm_quote, tpm_sig, nonce)


def verify_snp_evidence(ev: Evidence, *, at: datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``az-snp-vtpm``: HCL report, VCEK chain, TPM quote."""
    vek = ev.require("vek", "the VCEK certificate", "pass --vcek (Azure serves it from IMDS THIM)")
    return verify_az_snp_vtpm(
        ev.binary(),
        vek_cert=vek,
        chain=list(ev.chain),
        at=at,
        roots=roots,
        tpm_quote=ev.tpm_quote,
        tpm_sig=ev.tpm_sig,
        nonce=ev.nonce,
        crls=load_amd_crls(ev.crls),
        allow_stale_days=ev.allow_stale_days,
    )


def verify_tdx_evidence(ev: Evidence, *, at: datetime, roots: TrustStore | None = None) -> Claims:
    """The registry's verifier of kind ``az-tdx-vtpm``: HCL report, the TD quote made from it,
    and the TPM quote with its nonce, as :func:`verify_snp_evidence` checks them."""
    quote = ev.require("td_quote", "the TD quote", "pass --quote with the quote from IMDS /acc/tdquote")
    return verify_az_tdx_vtpm(
        ev.binary(),
        td_quote=quote,
        at=at,
        roots=roots,
        tpm_quote=ev.tpm_quote,
        tpm_sig=ev.tpm_sig,
        nonce=ev.nonce,
        **ev.tdx_collateral(),
    )

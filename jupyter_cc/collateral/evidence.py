"""The collateral one piece of evidence needs, from the service, before it is verified.

:func:`with_collateral` is what the host-side judgement of bundles (the kernel provisioner,
``%attest``, ``jupyter-cc attest``, the Hub spawner) and the broker run before verifying:

- TDX quotes (``tdx``, and the TD quote of ``az-tdx-vtpm``): the TCB info for the quote's FMSPC,
  the TD QE identity, the PCK CA CRL and the Root CA CRL
  (:meth:`~jupyter_cc.collateral.service.CollateralService.tdx`).
- SEV-SNP reports (``snp``, ``az-snp-vtpm``): AMD's CRL for the product (and signer, VCEK or
  VLEK) of the chain, KDS ``/vcek/v1/{product}/crl``; for an ``snp`` report without a VCEK, the
  VCEK and chain too.
- NVIDIA GPU reports (``nvidia``, and every entry of ``gpus``): the driver and VBIOS RIMs
  their opaque data names and OCSP answers for the device and RIM chains
  (:func:`~jupyter_cc.collateral.nvidia.gpu_collateral`); what cannot be had is noted, and the
  verifier claims it ``unchecked`` for the policy (``[gpu] allow_unverified_rim``).
- Simulated evidence (the simulator's own CRL) and MAA tokens (Azure checked the hardware):
  nothing.

Collateral inside the evidence is only a hint: a TCB info or QE identity it carries counts only
if it verifies to the pinned roots and is not older (earlier ``nextUpdate``) than what the cache
holds; then it is cached, as ``jupyter-cc collateral import`` would. CRLs the evidence carries
are not used: the service's are. When collateral cannot be had (offline with nothing cached,
the vendor down) the :class:`~jupyter_cc.errors.CollateralError` of the service names what is
missing and what to do: fail closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime

from jupyter_cc.attest.certs import load_certificate, load_certificates, utcnow
from jupyter_cc.attest.evidence import Evidence
from jupyter_cc.attest.kinds import KINDS
from jupyter_cc.attest.kinds import kind as registered_kind
from jupyter_cc.collateral.cache import Entry
from jupyter_cc.collateral.service import CollateralService, Item, key_for
from jupyter_cc.errors import CCError, CollateralError

__all__ = ["NEEDS_COLLATERAL", "with_collateral"]

NEEDS_COLLATERAL = {k.name: k.family for k in KINDS if k.family in ("snp", "tdx") and not k.simulated}
"""The kinds whose verification needs vendor collateral from the service, and their family."""


def with_collateral(
    ev: Evidence, *, at: datetime, service: CollateralService | None = None
) -> tuple[Evidence, tuple[Item, ...]]:
    """``ev`` with the collateral its kind needs (see the module docstring), and the items used.

    Args:
        service: where collateral comes from (default: a service from the settings, made only
            when ``ev`` needs collateral).

    Raises:
        CollateralError: the collateral cannot be had or does not verify (one sentence naming
            what is missing and ``jupyter-cc collateral import``).
        FormatError, ChainError: the evidence is too malformed to tell what it needs.
    """
    if ev.kind not in NEEDS_COLLATERAL and ev.kind != "nvidia" and not ev.gpus:
        return ev, ()
    service = service if service is not None else CollateralService()
    if ev.gpus:
        ev = replace(ev, gpus=tuple(_gpu(g, at, service) for g in ev.gpus))
    if ev.kind == "nvidia":
        return _gpu(ev, at, service), ()
    if ev.kind not in NEEDS_COLLATERAL:
        return ev, ()
    if NEEDS_COLLATERAL[ev.kind] == "tdx":
        return _tdx(ev, at, service)
    return _snp(ev, at, service)


def _gpu(ev: Evidence, at: datetime, service: CollateralService) -> Evidence:
    """``ev`` with its RIMs and OCSP answers when it is NVIDIA evidence (else as it is)."""
    from jupyter_cc.collateral.nvidia import gpu_collateral

    if ev.kind != "nvidia" or ev.gpu_collateral is not None:
        return ev
    try:
        return replace(ev, gpu_collateral=gpu_collateral(service, ev, at=at))
    except CCError:
        return ev  # unreadable evidence: the verifier names what is wrong with it


def _tdx(ev: Evidence, at: datetime, service: CollateralService) -> tuple[Evidence, tuple[Item, ...]]:
    from jupyter_cc.attest.tdx import parse_quote, pck_chain
    from jupyter_cc.attest.tdx.pck import parse_pck_extensions

    entry = registered_kind(ev.kind)
    if entry is not None and entry.azure_vtpm:
        quote = ev.require("td_quote", "the TD quote", "the guest sends the quote IMDS made")
    else:
        quote = ev.binary()
    if ev.collateral_chain:
        fmspc = parse_pck_extensions(pck_chain(parse_quote(quote))[0]).fmspc_hex
        _hint(service, "tdx-tcb-info", {"fmspc": fmspc}, ev.tcb_info, ev.collateral_chain, at)
        _hint(service, "tdx-qe-identity", {}, ev.qe_identity, ev.collateral_chain, at)
    files = service.tdx(quote, at=at)
    return replace(ev, **files.inputs()), files.items


def _hint(
    service: CollateralService,
    kind: str,
    params: Mapping[str, str],
    body: bytes | None,
    chain: bytes,
    at: datetime,
) -> None:
    """Cache ``body`` when it verifies to the pinned roots and is not older than the cached one."""
    if not body:
        return
    try:
        next_update = service.check(kind, body, chain, params, at)
    except CCError:
        return  # a hint that does not verify counts for nothing (the service's is used)
    key = key_for(kind, params)
    held = service.cache.get(key)
    if held is not None and held.next_update >= next_update:
        return
    entry = Entry(key, kind, dict(params), body, chain, next_update, utcnow(), source="evidence bundle")
    try:
        service.cache.put(entry)
    except CCError:
        return  # an unwritable cache: the service's collateral is used instead


def _snp(ev: Evidence, at: datetime, service: CollateralService) -> tuple[Evidence, tuple[Item, ...]]:
    from jupyter_cc.attest.snp import parse_vek

    if ev.vek is None:
        got = service.snp(ev.binary(), at=at, crl=True)
        vek = load_certificate(got.vcek, what="VCEK")
        chain = tuple(load_certificates(got.chain, what="cached cert_chain"))
        return replace(ev, vek=vek, chain=chain, crls=(got.crl,) if got.crl else ()), got.items
    info = parse_vek(ev.vek)
    product = info.product
    if product is None and ev.kind == "snp":
        from jupyter_cc.attest.snp import parse_report, product_from_cpuid

        cpuid = parse_report(ev.binary()).cpuid
        product = product_from_cpuid(cpuid[0], cpuid[1]) if cpuid is not None else None
    if product is None:
        raise CollateralError(
            f"cannot tell which AMD product's CRL applies: the {info.kind.upper()} names no product",
            hint="pass a VCEK with AMD's productName extension",
        )
    base = {"product": product, "signer": info.kind}
    chain_item = service.obtain("amd-cert-chain", base, at=at)
    crl = service.obtain("amd-crl", base, at=at, chain=chain_item.entry.body)
    return replace(ev, crls=(crl.entry.body,)), (chain_item, crl)

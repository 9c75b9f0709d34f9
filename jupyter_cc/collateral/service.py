"""The collateral service: files given, then the cache, then the vendor (unless offline).

:class:`CollateralService` obtains one item at a time (:meth:`CollateralService.obtain`): a
cached entry still before its ``nextUpdate`` is used as is; a missing or stale one is fetched
(when online), judged by its ``check_*`` function to the pinned roots, and only then cached.
Offline, a stale entry is still returned, marked with how many days it is past ``nextUpdate``
(the verifiers and the policy decide what that means); a missing one is a
:class:`~jupyter_cc.errors.CollateralError` naming it. When the vendor fails, nothing stale is
used in its place: fail closed.

:meth:`CollateralService.tdx` gathers what a TD quote needs (TCB info for its FMSPC, the TD QE
identity, the PCK CA CRL, the Root CA CRL); :meth:`CollateralService.snp` what an SNP report
needs (its VCEK, the ASK/ARK chain, the CRL). NVIDIA RIMs (``nvidia-rim``, by RIM id) go
through :meth:`CollateralService.obtain` too; OCSP answers (``nvidia-ocsp``) are POSTed and
cached by :func:`jupyter_cc.collateral.nvidia.obtain_ocsp`, in the same cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from jupyter_cc.attest.certs import describe, load_certificate, load_certificates, utcnow
from jupyter_cc.attest.roots import TrustStore
from jupyter_cc.collateral import kds, nvidia, pcs
from jupyter_cc.collateral.cache import Cache, Entry
from jupyter_cc.collateral.fetch import Client, Fetcher, offline_hint
from jupyter_cc.collateral.settings import Settings, load_settings
from jupyter_cc.errors import CCError, CollateralError

__all__ = [
    "CHECKS",
    "CollateralService",
    "Item",
    "SnpCollateral",
    "TdxCollateralFiles",
    "describe_item",
    "key_for",
]

Check = Callable[..., datetime]
CHECKS: Mapping[str, Check] = {
    "tdx-tcb-info": pcs.check_tcb_info,
    "tdx-qe-identity": pcs.check_qe_identity,
    "intel-pck-crl": pcs.check_pck_crl,
    "intel-root-ca-crl": pcs.check_root_ca_crl,
    "amd-cert-chain": kds.check_cert_chain,
    "amd-vcek": kds.check_vcek,
    "amd-crl": kds.check_crl,
    "nvidia-rim": nvidia.check_rim,
    "nvidia-ocsp": nvidia.check_ocsp,
}
_CHAIN_HEADER = {
    "tdx-tcb-info": "TCB-Info-Issuer-Chain",
    "tdx-qe-identity": "SGX-Enclave-Identity-Issuer-Chain",
    "intel-pck-crl": "SGX-PCK-CRL-Issuer-Chain",
}


def key_for(kind: str, params: Mapping[str, str]) -> str:
    """The cache key of an item; the only names the cache uses (so params are checked here)."""
    memo = (kind, tuple(sorted(params.items())))
    known = _KEYS.get(memo)
    if known is None:
        known = _key_for(kind, params)
        if len(_KEYS) >= 256:
            _KEYS.clear()
        _KEYS[memo] = known
    return known


_KEYS: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}


def _key_for(kind: str, params: Mapping[str, str]) -> str:
    p = {k: _safe(v) for k, v in params.items()}
    keys: dict[str, Callable[[], str]] = {
        "tdx-tcb-info": lambda: f"intel/tcb-info/{p['fmspc'].lower()}",
        "tdx-qe-identity": lambda: "intel/qe-identity/td_qe",
        "intel-pck-crl": lambda: f"intel/pck-crl/{p['ca']}",
        "intel-root-ca-crl": lambda: "intel/root-ca-crl/root",
        "amd-cert-chain": lambda: f"amd/{p['product']}/{p['signer']}/cert_chain",
        "amd-crl": lambda: f"amd/{p['product']}/{p['signer']}/crl",
        "nvidia-rim": lambda: f"nvidia/rim/{p['id']}",
        "nvidia-ocsp": lambda: f"nvidia/ocsp/{p['issuer'].lower()}-{p['serial'].lower()}",
        "amd-vcek": lambda: (
            f"amd/{p['product']}/vcek/{p['hwid'].lower()}-"
            + "-".join(p[q] for q in ("blSPL", "teeSPL", "snpSPL", "ucodeSPL", "fmcSPL") if q in p)
        ),
    }
    try:
        return keys[kind]()
    except KeyError:
        raise CollateralError(f"unknown collateral item kind '{kind}' or missing parameter") from None


def _safe(value: str) -> str:
    plain = all(c.isalnum() or c in "_-." for c in value) and ".." not in value and not value.startswith(".")
    if not value or not plain or len(value) > 200:
        raise CollateralError(f"collateral parameter {value!r} is not a plain name")
    return value


def describe_item(kind: str, params: Mapping[str, str]) -> str:
    """The item in words: ``TCB info for FMSPC 50806f000000``."""
    product, signer = params.get("product", "?"), params.get("signer", "vcek").upper()
    words = {
        "tdx-tcb-info": f"TDX TCB info for FMSPC {params.get('fmspc')}",
        "tdx-qe-identity": "TD QE identity",
        "intel-pck-crl": f"PCK {params.get('ca')} CA CRL",
        "intel-root-ca-crl": "Intel SGX Root CA CRL",
        "amd-cert-chain": f"{product} {signer} cert_chain",
        "amd-crl": f"{product} {signer} CRL",
        "nvidia-rim": f"NVIDIA RIM {params.get('id')}",
        "nvidia-ocsp": f"NVIDIA OCSP status of certificate serial {params.get('serial', '')[:16]}",
        "amd-vcek": f"{product} VCEK for hwID {params.get('hwid', '')[:16]}... at TCB "
        + ",".join(f"{k}={v}" for k, v in params.items() if k.endswith("SPL")),
    }
    return words.get(kind, kind)


def _service_name(kind: str) -> str:
    if kind.startswith("nvidia"):
        return nvidia.SERVICES[kind]
    return kds.SERVICE if kind.startswith("amd") else pcs.SERVICE


@dataclass(frozen=True)
class Item:
    """One item in hand: the entry, where it came from, and how stale it is at the asked time."""

    entry: Entry
    origin: str  # "cache" or "fetched"
    stale_days: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "item": describe_item(self.entry.kind, self.entry.params),
            "key": self.entry.key,
            "origin": self.origin,
            "next_update": self.entry.to_json()["next_update"],
            "stale_days": self.stale_days,
        }


@dataclass(frozen=True)
class TdxCollateralFiles:
    """What verifying one TD quote needs, as bytes ``verify_tdx`` takes."""

    tcb_info: bytes
    qe_identity: bytes
    collateral_chain: bytes
    crls: tuple[bytes, ...]
    items: tuple[Item, ...] = field(default=())

    def inputs(self) -> dict[str, Any]:
        return {
            "tcb_info": self.tcb_info,
            "qe_identity": self.qe_identity,
            "collateral_chain": self.collateral_chain,
            "crls": self.crls,
        }


@dataclass(frozen=True)
class SnpCollateral:
    """What verifying one SNP report needs: the VCEK (DER), the ASK/ARK chain (PEM), the CRL (DER)."""

    vcek: bytes
    chain: bytes
    crl: bytes | None
    items: tuple[Item, ...] = field(default=())


class CollateralService:
    """Collateral from the cache or the vendor services, judged to the pinned roots.

    Args:
        settings: base URLs, offline, the cache folder (default :func:`load_settings`).
        fetcher: what GETs URLs (default urllib3); or ``client`` for full control of retries.
        intel_roots, amd_roots, nvidia_rim_roots: the roots items must chain to (default: the
            pinned ones; NVIDIA RIMs: the CoRIM signing Root CA).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        fetcher: Fetcher | None = None,
        client: Client | None = None,
        cache: Cache | None = None,
        intel_roots: TrustStore | None = None,
        amd_roots: TrustStore | None = None,
        nvidia_rim_roots: TrustStore | None = None,
    ) -> None:
        self.settings = settings if settings is not None else load_settings()
        self._client = client
        self._fetcher = fetcher
        self.cache = cache if cache is not None else Cache(self.settings.cache)
        self.intel_roots = intel_roots if intel_roots is not None else pcs.intel_roots()
        self.amd_roots = amd_roots if amd_roots is not None else kds.amd_roots()
        self.nvidia_rim_roots = nvidia_rim_roots if nvidia_rim_roots is not None else nvidia.rim_roots()

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self._fetcher)
        return self._client

    def check(
        self, kind: str, body: bytes, chain: bytes, params: Mapping[str, str], at: datetime
    ) -> datetime:
        """Judge one item to the roots; its nextUpdate. Raises the failed check's error."""
        if kind not in CHECKS:
            raise CollateralError(f"unknown collateral item kind '{kind}'")
        roots = self.amd_roots if kind.startswith("amd") else self.intel_roots
        if kind.startswith("nvidia"):
            roots = self.nvidia_rim_roots
        return CHECKS[kind](body, chain, params, at=at, roots=roots)

    def obtain(self, kind: str, params: Mapping[str, str], *, at: datetime, chain: bytes = b"") -> Item:
        """One item: fresh from the cache, else fetched, judged and cached (unless offline).

        Args:
            chain: the PEM an item without an issuer header verifies with (Root CA CRL: the
                root; a VCEK or KDS CRL: its cert_chain).

        Raises:
            CollateralError: offline with nothing cached, the service failed, or what it sent
                does not verify (nothing is cached then); the cache cannot be written.
        """
        key = key_for(kind, params)
        cached = self.cache.get(key)
        if cached is not None and (cached.stale_days(at) == 0 or self.settings.offline):
            return Item(cached, "cache", cached.stale_days(at))
        if self.settings.offline:
            raise CollateralError(
                f"offline, and the collateral cache {self.cache.root} holds no {describe_item(kind, params)}",
                hint="on a machine with network run 'jupyter-cc collateral fetch EVIDENCE' and "
                "'jupyter-cc collateral export FILE', then 'jupyter-cc collateral import FILE' here",
            )
        entry = self._fetch(kind, dict(params), at, chain)
        self.cache.put(entry)
        return Item(entry, "fetched", entry.stale_days(at))

    def _url(self, kind: str, params: Mapping[str, str]) -> str:
        s = self.settings
        urls: dict[str, Callable[[], str]] = {
            "tdx-tcb-info": lambda: pcs.tcb_info_url(s.intel_pcs, params["fmspc"]),
            "tdx-qe-identity": lambda: pcs.qe_identity_url(s.intel_pcs),
            "intel-pck-crl": lambda: pcs.pck_crl_url(s.intel_pcs, params["ca"]),
            "intel-root-ca-crl": lambda: pcs.root_ca_crl_url(s.intel_certs),
            "amd-cert-chain": lambda: kds.cert_chain_url(s.amd_kds, params["product"], params["signer"]),
            "amd-crl": lambda: kds.crl_url(s.amd_kds, params["product"], params["signer"]),
            "amd-vcek": lambda: kds.vcek_url(s.amd_kds, params),
            "nvidia-rim": lambda: nvidia.rim_url(s.nvidia_rim, params["id"]),
        }
        return urls[kind]()

    def _fetch(self, kind: str, params: dict[str, str], at: datetime, chain: bytes) -> Entry:
        url, service, what = self._url(kind, params), _service_name(kind), describe_item(kind, params)
        answer = self.client.get(url, service=service, what=what)
        try:
            if kind in _CHAIN_HEADER:
                chain = pcs.header_chain(answer, _CHAIN_HEADER[kind], what)
            body = nvidia.rim_xml(answer.body, params["id"]) if kind == "nvidia-rim" else answer.body
            next_update = self.check(kind, body, chain, params, at)
        except CCError as exc:
            raise CollateralError(
                f"{service} sent a {what} that does not verify to the pinned roots, so it was not "
                f"cached ({exc.message.rstrip('.')})",
                hint="someone between us and the service may be tampering with it; " + offline_hint(),
            ) from None
        return Entry(
            key=key_for(kind, params),
            kind=kind,
            params=params,
            body=body,
            chain=chain,
            next_update=next_update,
            fetched_at=utcnow(),
            source=url,
        )

    # --- what evidence needs ------------------------------------------------------------------

    def tdx(self, quote_bytes: bytes, *, at: datetime) -> TdxCollateralFiles:
        """Everything verifying the TD quote ``quote_bytes`` needs, for its FMSPC and PCK CA.

        Raises:
            FormatError, ChainError: the quote or its PCK chain is unreadable.
            CollateralError: see :meth:`obtain`.
        """
        from jupyter_cc.attest.tdx import parse_quote

        fmspc, ca = _tdx_platform(parse_quote(quote_bytes).pck_chain_pem)
        tcb = self.obtain("tdx-tcb-info", {"fmspc": fmspc}, at=at)
        qe = self.obtain("tdx-qe-identity", {}, at=at)
        pck_crl = self.obtain("intel-pck-crl", {"ca": ca}, at=at)
        root_crl = self.obtain("intel-root-ca-crl", {}, at=at, chain=pcs.root_pem(tcb.entry.chain))
        return TdxCollateralFiles(
            tcb_info=tcb.entry.body,
            qe_identity=qe.entry.body,
            collateral_chain=tcb.entry.chain,
            crls=(root_crl.entry.body, pck_crl.entry.body),
            items=(tcb, qe, pck_crl, root_crl),
        )

    def snp(
        self, report_bytes: bytes, *, at: datetime, product: str | None = None, crl: bool = True
    ) -> SnpCollateral:
        """The VCEK, ASK/ARK chain and (``crl``) the VCEK CRL for the SNP report ``report_bytes``.

        Raises:
            FormatError: the report is unreadable.
            InputError: see :func:`~jupyter_cc.collateral.kds.vcek_request`.
            CollateralError: see :meth:`obtain`.
        """
        from jupyter_cc.attest.snp import parse_report

        params = kds.vcek_request(parse_report(report_bytes), product)
        base = {"product": params["product"], "signer": "vcek"}
        chain = self.obtain("amd-cert-chain", base, at=at)
        vcek = self.obtain("amd-vcek", params, at=at, chain=chain.entry.body)
        items = [vcek, chain]
        crl_item = None
        if crl:
            crl_item = self.obtain("amd-crl", base, at=at, chain=chain.entry.body)
            items.append(crl_item)
        return SnpCollateral(
            vcek=vcek.entry.body,
            chain=chain.entry.body,
            crl=crl_item.entry.body if crl_item else None,
            items=tuple(items),
        )


@functools.lru_cache(maxsize=32)
def _tdx_platform(pck_chain_pem: bytes) -> tuple[str, str]:
    """(FMSPC, "processor" or "platform" PCK CA) of a quote's PCK chain; one chain per platform."""
    from jupyter_cc.attest.tdx import pck_chain_of
    from jupyter_cc.attest.tdx.pck import parse_pck_extensions

    chain = pck_chain_of(pck_chain_pem)
    fmspc = parse_pck_extensions(chain[0]).fmspc_hex
    return fmspc, "processor" if len(chain) > 1 and "Processor" in describe(chain[1]) else "platform"


def certificates(pem_or_der: bytes, what: str) -> list[Any]:
    """Certificates from PEM (several) or DER (one)."""
    if b"-----BEGIN" in pem_or_der:
        return load_certificates(pem_or_der, what=what)
    return [load_certificate(pem_or_der, what=what)]

"""AMD KDS collateral for SEV-SNP: VCEKs by chip and TCB, ASK/ASVK-ARK chains, CRLs.

Paths (design section 12) on the ``amd_kds`` base:

* ``/vcek/v1/{product}/{hwid hex}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=`` (Turin also ``fmcSPL``,
  and an 8-byte hwID): the VCEK, DER;
* ``/{vcek|vlek}/v1/{product}/cert_chain``: ASK (or ASVK), then ARK, PEM;
* ``/{vcek|vlek}/v1/{product}/crl``: DER, issued by the ARK.

KDS rate-limits; :class:`~jupyter_cc.collateral.fetch.Client` honours 429 and ``Retry-After``.

Each ``check_*`` function judges one item against the pinned ARKs (or the trust store given)
and returns when it stops being current: a chain or VCEK at its earliest ``notAfter``, a CRL at
its ``nextUpdate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from jupyter_cc.attest.certs import describe, load_certificate, load_certificates, verify_chain
from jupyter_cc.attest.kinds import SNP_PRODUCTS
from jupyter_cc.attest.roots import AMD_ARKS, TrustStore
from jupyter_cc.attest.snp import SnpReport, TcbVersion, parse_vek, product_from_cpuid
from jupyter_cc.errors import ChainError, CollateralError, InputError, SignatureError

__all__ = [
    "SERVICE",
    "SIGNERS",
    "amd_roots",
    "cert_chain_url",
    "check_cert_chain",
    "check_crl",
    "check_vcek",
    "crl_url",
    "pss_valid",
    "tcb_params",
    "vcek_request",
    "vcek_url",
]

SERVICE = "AMD KDS"
SIGNERS = ("vcek", "vlek")
_SPL_QUERY = (("blSPL", "bootloader"), ("teeSPL", "tee"), ("snpSPL", "snp"), ("ucodeSPL", "microcode"))


def amd_roots() -> TrustStore:
    return TrustStore.of(*AMD_ARKS.values())


def _product(product: str) -> str:
    if product not in SNP_PRODUCTS:
        raise InputError(f"unknown SEV-SNP product {product!r}", hint=f"use one of {', '.join(SNP_PRODUCTS)}")
    return product


def tcb_params(tcb: TcbVersion, product: str) -> dict[str, str]:
    """The KDS query parameters for a reported TCB (``fmcSPL`` on Turin)."""
    out = {query: str(getattr(tcb, name)) for query, name in _SPL_QUERY}
    if product == "Turin":
        out["fmcSPL"] = str(tcb.fmc or 0)
    return out


def vcek_url(base: str, params: Mapping[str, str]) -> str:
    product = _product(params["product"])
    names = [q for q, _ in _SPL_QUERY] + (["fmcSPL"] if product == "Turin" else [])
    query = "&".join(f"{name}={int(params[name])}" for name in names)
    return f"{base}/vcek/v1/{product}/{params['hwid']}?{query}"


def cert_chain_url(base: str, product: str, signer: str) -> str:
    return f"{base}/{signer}/v1/{_product(product)}/cert_chain"


def crl_url(base: str, product: str, signer: str) -> str:
    return f"{base}/{signer}/v1/{_product(product)}/crl"


def vcek_request(report: SnpReport, product: str | None = None) -> dict[str, str]:
    """What to ask KDS for to get the VCEK that signed ``report`` (product, hwID, TCB).

    Args:
        product: the processor line, needed when the report carries no CPUID (version 2).

    Raises:
        InputError: the report is VLEK-signed (KDS hands VLEKs to cloud providers only), its
            CHIP_ID is masked, or its product is unknown.
    """
    if report.signing_key != "vcek":
        raise InputError(
            "the SNP report is signed by a VLEK, which AMD KDS does not serve by chip",
            hint="pass --vcek with the VLEK the cloud provider installed (the extended report carries it)",
        )
    if report.cpuid is not None:
        found = product_from_cpuid(report.cpuid[0], report.cpuid[1])
        product = found or product
    if product is None:
        raise InputError(
            "the SNP report (version 2) does not say which processor it comes from",
            hint="pass --product Milan, Genoa or Turin",
        )
    _product(product)
    hwid = report.chip_id[:8] if product == "Turin" else report.chip_id
    if not any(hwid):
        raise InputError("the SNP report's CHIP_ID is masked (zero), so its VCEK cannot be looked up")
    tcb = TcbVersion.decode(report.reported_tcb, product)
    return {"product": product, "hwid": hwid.hex(), **tcb_params(tcb, product)}


def pss_valid(key: object, signature: bytes, data: bytes) -> bool:
    """An RSA-PSS SHA-384 (salt 48) signature, as AMD signs its certificates and CRLs."""
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, data, padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())
    except InvalidSignature:
        return False
    return True


def _until(certs: list[x509.Certificate]) -> datetime:
    return min(c.not_valid_after_utc for c in certs)


def _amd_chain(
    chain_pem: bytes, params: Mapping[str, str], at: datetime, roots: TrustStore
) -> list[x509.Certificate]:
    product, signer = _product(params.get("product", "")), params.get("signer", "vcek")
    chain = load_certificates(chain_pem, what=f"the {product} {signer.upper()} cert_chain")
    if len(chain) != 2:
        raise ChainError(
            f"the {product} cert_chain holds {len(chain)} certificates, "
            "expected the ASK (or ASVK) and the ARK"
        )
    anchor = verify_chain(chain, roots=roots, at=at)
    if anchor.product != product:
        raise ChainError(f"the {product} cert_chain ends at {anchor.name}")
    name = describe(chain[0])
    if name.startswith("SEV-VLEK-") != (signer == "vlek") or not name.startswith("SEV-"):
        raise ChainError(
            f"the {product} cert_chain starts with '{name}', not the {signer.upper()} signing key"
        )
    return chain


def check_cert_chain(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge an ASK/ASVK-ARK ``cert_chain`` (the body itself) for ``params['product']``."""
    return _until(_amd_chain(body, params, at, roots))


def check_vcek(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge a VCEK (DER) for the product, hwID and TCB in ``params``, with its cert_chain."""
    chain = _amd_chain(chain_pem, {**params, "signer": "vcek"}, at, roots)
    cert = load_certificate(body, what="the VCEK")
    vek = parse_vek(cert)
    if vek.kind != "vcek" or vek.product != params["product"]:
        raise CollateralError(
            f"the certificate is a {vek.product_name} {vek.kind.upper()}, "
            f"not the {params['product']} VCEK asked for"
        )
    if vek.hwid is None or vek.hwid.hex() != params["hwid"].lower():
        raise CollateralError("the VCEK is for another chip (its hwID differs from the one asked for)")
    asked = {name: int(params[q]) for q, name in (*_SPL_QUERY, ("fmcSPL", "fmc")) if q in params}
    got = {name: vek.spl.get(name) for name in asked}
    if got != asked:
        raise CollateralError(f"the VCEK is for TCB {got}, not the {asked} asked for")
    verify_chain([cert, *chain], roots=roots, at=at, end_entity="the VCEK")
    return _until([cert, *chain])


def check_crl(
    body: bytes, chain_pem: bytes, params: Mapping[str, str], *, at: datetime, roots: TrustStore
) -> datetime:
    """Judge a KDS CRL (issued by the ARK of ``chain_pem``); its nextUpdate."""
    from jupyter_cc.attest.tdx.collateral import load_crl
    from jupyter_cc.collateral.pcs import crl_signed_by

    chain = _amd_chain(chain_pem, params, at, roots)
    what = f"{params.get('product')} {params.get('signer', 'vcek').upper()} CRL"
    crl = load_crl(body, what=what)
    if not crl_signed_by(crl, chain[-1]):
        raise SignatureError(f"the {what} is not signed by '{describe(chain[-1])}'")
    if crl.next_update_utc is None:
        raise CollateralError(f"the {what} has no nextUpdate")
    return crl.next_update_utc
